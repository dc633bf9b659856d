"""Fine-tuning versus training from scratch on clothing_small, from a start pretrained honestly offline.

No pretrained vision checkpoint is available offline, so the pretrained start is made here, by the image
classification recipe itself, on a different task: self-supervised rotation prediction (Gidaris et al.,
ICLR 2018). Each clothing *train* image is center-cropped to a square and saved rotated by 0, 90, 180 and
270 degrees, labelled with its rotation; a config-built ConvNeXt learns to tell the rotations apart. No class
label is used, and no validation or test image is seen. Then `finetune-recipes compare image_classification`
fine-tunes that model on the 10 clothing classes (its 4-way head is replaced: ignore_mismatched_sizes) and
trains the same architecture from random weights, with the same data, seed, epochs and learning rate.

    python bench/image_pretraining.py [--image_size 32] [--pretext_epochs 25] [--epochs 15] [--seeds 42 43 44]

Writes bench/image_pretraining.md; the runs stay in bench/runs/image_pretraining/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("image_pretraining.md")
ROTATIONS = (0, 90, 180, 270)
# Horizontal flips would mix the labels up: a flipped 90-degree image is a 270-degree image of a flipped one.
PRETEXT_AUGMENT = ["--image_augment", "light", "--image_augment_params", "{RandomHorizontalFlip: null}"]


def make_rotation_dataset(source: str | Path, dest: str | Path, side: int, per_class: int | None = None) -> int:
    """Class folders rot0/rot90/rot180/rot270 of every image under `source` (square crops, `side` px); returns the count."""
    from PIL import Image, ImageOps

    files = sorted(p for p in Path(source).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if per_class is not None:  # a few images from each class folder, for a quick run
        by_class: dict[Path, list[Path]] = {}
        for file in files:
            by_class.setdefault(file.parent, []).append(file)
        files = [f for group in by_class.values() for f in group[:per_class]]
    for angle in ROTATIONS:
        (Path(dest) / f"rot{angle}").mkdir(parents=True, exist_ok=True)
    for file in files:
        with Image.open(file) as image:
            square = ImageOps.fit(image.convert("RGB"), (side, side))  # center crop: the aspect ratio gives nothing away
        for angle in ROTATIONS:
            square.rotate(angle).save(Path(dest) / f"rot{angle}" / f"{file.parent.name}-{file.stem}.jpg", quality=95)
    return len(files)


def pretext_args(model_dir: str, rotation_dir: str, output_dir: str, epochs: int, learning_rate: float) -> list[str]:
    return ["--model_name_or_path", model_dir, "--train_dir", rotation_dir, "--validation_split", "0.1",
            "--output_dir", output_dir, "--num_train_epochs", str(epochs), "--learning_rate", str(learning_rate),
            "--per_device_train_batch_size", "32", "--eval_strategy", "no", "--do_predict", "false",
            "--disable_tqdm", "true", "--overwrite_output_dir", *PRETEXT_AUGMENT]


def finetune_args(model_dir: str, train_dir: str, validation_dir: str, output_dir: str, epochs: int,
                  learning_rate: float, augment: str = "standard", seed: int = 42) -> list[str]:
    return ["--model_name_or_path", model_dir, "--train_dir", train_dir, "--validation_dir", validation_dir,
            "--output_dir", output_dir, "--num_train_epochs", str(epochs), "--learning_rate", str(learning_rate),
            "--per_device_train_batch_size", "16", "--image_augment", augment, "--seed", str(seed),
            "--do_predict", "false", "--eval_strategy", "no", "--disable_tqdm", "true", "--overwrite_output_dir"]


METRICS = [("eval_accuracy", "validation accuracy"), ("eval_f1_macro", "validation macro-F1"),
           ("eval_top5_accuracy", "validation top-5 accuracy"), ("eval_loss", "validation loss")]


def _mean_std(values: list[float]) -> str:
    import numpy as np

    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--pretext_epochs", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--augment", nargs="+", default=["standard", "light"], help="fine-tuning presets to compare under")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", default=str(ROOT / "bench" / "runs" / "image_pretraining"))
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs already under --out")
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    # Imported here, not at the top: tests import this module (on a clone without the full data sets).
    import torch
    from harness import data

    from common.models.tiny import tiny_convnext
    from common.strategies.comparison import compare
    from recipes import image_classification

    clothing = data("clothing_small")
    torch.set_num_threads(1)  # tiny model: a thread pool only adds overhead
    out = Path(options.out)
    start = time.time()
    count = make_rotation_dataset(clothing / "train", out / "rotation", side=2 * options.image_size)
    finished = out / "pretext" / "all_results.json"
    if options.resume and finished.is_file():
        pretext = json.loads(finished.read_text())
    else:
        init = tiny_convnext(out / "init", image_size=options.image_size)
        pretext = image_classification.main(pretext_args(init, str(out / "rotation"), str(out / "pretext"),
                                                         options.pretext_epochs, options.learning_rate))

    runs: dict[str, dict[int, dict]] = {}
    for augment in options.augment:
        for seed in options.seeds:
            run_dir = out / "compare" / f"{augment}-seed{seed}"
            if options.resume and (run_dir / "comparison.json").is_file():
                summary = json.loads((run_dir / "comparison.json").read_text())
            else:
                summary = compare(image_classification.main, finetune_args(
                    str(out / "pretext"), str(clothing / "train"), str(clothing / "validation"), str(run_dir),
                    options.epochs, options.learning_rate, augment, seed))
            runs.setdefault(augment, {})[seed] = summary["runs"]
    minutes = (time.time() - start) / 60

    lines = [
        "# Fine-tuning versus from scratch: clothing_small, tiny ConvNeXt",
        "",
        f"`python bench/image_pretraining.py --image_size {options.image_size} --pretext_epochs {options.pretext_epochs} "
        f"--epochs {options.epochs} --learning_rate {options.learning_rate} --augment {' '.join(options.augment)} "
        f"--seeds {' '.join(map(str, options.seeds))}` (CPU, one thread; {minutes:.0f} min{' with --resume' if options.resume else ''}).",
        "",
        "## 1. The pretrained start, made by the recipe: rotation prediction (self-supervised)",
        "",
        f"{count} clothing *train* images, center-cropped to {2 * options.image_size} px squares, each saved at 0, 90, "
        f"180 and 270 degrees: {4 * count} images in 4 classes (`rot0` ... `rot270`), 10% held out, stratified. "
        f"No class label is used, and no validation or test image is seen. A config-built ConvNeXt "
        f"(`common.models.tiny.tiny_convnext`, {options.image_size} px, 93k parameters) trained "
        f"{options.pretext_epochs} epochs with the recipe, `--image_augment light` without flips (a flipped "
        "90-degree image is a 270-degree one), learning rate "
        f"{options.learning_rate}.",
        "",
        f"Held-out rotation accuracy: **{pretext['eval_accuracy']:.3f}** (chance 0.25; "
        f"{pretext['before_accuracy']:.3f} before training).",
        "",
        "## 2. Fine-tune versus from scratch on the 10 clothing classes",
        "",
        "`finetune-recipes compare image_classification` runs the recipe twice with the same arguments: from the "
        "rotation model (its 4-way head replaced by a 10-way one) and, with `--from_scratch`, from random weights "
        f"of the same architecture. Train: `clothing_small/train` (400 images, 40 per class); evaluation: "
        f"`clothing_small/validation` (341 images, imbalanced: the majority class is 81/341 = 0.238). Both: "
        f"{options.epochs} epochs, learning rate {options.learning_rate}, batch 16, {options.image_size} px. "
        f"Mean ± std over seeds {', '.join(map(str, options.seeds))} (the seed sets the new weights, the data "
        "order and the augmentation).",
        "",
    ]
    for augment, by_seed in runs.items():
        lines += [f"### `--image_augment {augment}`", "", "| metric | pretrained (rotation) | from scratch |",
                  "|---|---:|---:|"]
        for metric, label in METRICS:
            values = {name: [r[name][metric] for r in by_seed.values()] for name in ("pretrained", "from_scratch")}
            lines.append(f"| {label} | {_mean_std(values['pretrained'])} | {_mean_std(values['from_scratch'])} |")
        gaps = [r["pretrained"]["eval_accuracy"] - r["from_scratch"]["eval_accuracy"] for r in by_seed.values()]
        per_seed = ", ".join(f"{seed}: {gap:+.3f}" for seed, gap in zip(by_seed, gaps))
        lines += ["", f"Accuracy gap, pretrained minus from scratch, per seed: {per_seed}.", ""]
    RESULTS.write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"pretext": pretext, "runs": runs}, indent=2, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
