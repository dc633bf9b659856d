"""What to freeze: dev accuracy and training time of each freezing option on SST-2 with MiniLM.

    python bench/freezing.py [--train_samples 800] [--epochs 3]

Same data, seed, batch size (32) and number of epochs for every row but the last, which spends the time the
cache saves on more epochs; whole-model rows use lr 1e-4, head-only rows 1e-2 (a linear head needs a larger
step). Prints a markdown table and writes it to bench/freezing_results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from harness import DATA, PROBE, ROOT, launch, minilm_dir

sys.path.insert(0, str(ROOT))  # trainable_share imports common/

RESULTS = Path(__file__).with_name("freezing_results.md")
FULL, HEAD = 1e-4, 1e-2
CONFIGS = [  # name, recipe options
    ("--freeze none (full fine-tuning)", {"learning_rate": FULL}),
    ("--freeze embeddings", {"learning_rate": FULL, "freeze": "embeddings"}),
    ("--freeze bottom:4", {"learning_rate": FULL, "freeze": "bottom:4"}),
    ("--layer_lr_decay 0.8", {"learning_rate": FULL, "layer_lr_decay": 0.8}),
    ("--unfreeze_schedule epoch", {"learning_rate": FULL, "unfreeze_schedule": "epoch"}),
    ("--freeze bottom:4 --layer_lr_decay 0.8 --unfreeze_schedule 1,2",
     {"learning_rate": FULL, "freeze": "bottom:4", "layer_lr_decay": 0.8, "unfreeze_schedule": "1,2"}),
    ("--freeze backbone", {"learning_rate": HEAD, "freeze": "backbone"}),
    ("--freeze backbone --cache_features", {"learning_rate": HEAD, "freeze": "backbone", "cache_features": "true"}),
    ("--freeze backbone --cache_features", {"learning_rate": HEAD, "freeze": "backbone", "cache_features": "true",
                                            "num_train_epochs": 20}),
]


def freezing_flags(output_dir: Path, model: str, train_samples: int, epochs: int, **options) -> list[str]:
    """Recipe flags for an SST-2 run: `train_samples` sentences, the whole dev set, no checkpoints."""
    flags = ["--model_name_or_path", model, "--train_file", str(DATA / "sst2" / "train.tsv"),
             "--validation_file", str(DATA / "sst2" / "dev.tsv"), "--max_train_samples", str(train_samples),
             "--output_dir", str(output_dir), "--overwrite_output_dir", "--num_train_epochs", str(epochs),
             "--per_device_train_batch_size", "32", "--eval_strategy", "no", "--save_strategy", "no",
             "--do_predict", "false", "--logging_steps", "50", "--disable_tqdm", "true", "--seed", "0"]
    for key, value in options.items():
        flags += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return flags


def run_recipe(flags: list[str], work: Path) -> tuple[dict, dict]:
    """(results, timing) of one text-classification run through the probe, as bench/run.py runs its recipes."""
    timing_file, log = work.with_suffix(".timing.json"), work.with_suffix(".log")
    code, _, _ = launch(["python", PROBE, "--timing", str(timing_file), "--", "recipes/text_classification.py",
                         *flags], log)
    if code != 0:
        raise SystemExit(f"run failed (exit {code}); log tail:\n{log.read_text()[-1500:]}")
    return json.loads((work / "all_results.json").read_text()), json.loads(timing_file.read_text())


def trainable_share(options: dict) -> str:
    """Trainable parameters at the start of training, as a share of MiniLM's."""
    from transformers import AutoModelForSequenceClassification

    from common.dispatch import FinetuneArguments
    from common.toolkit.freezing import apply_freezing

    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    keys = ("freeze", "unfreeze_schedule", "layer_lr_decay")
    finetune = {k: ([v] if k == "freeze" else v) for k, v in options.items() if k in keys}
    apply_freezing(model, FinetuneArguments(**finetune))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{100 * trainable / sum(p.numel() for p in model.parameters()):.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_samples", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    options = parser.parse_args()

    rows = []
    model = minilm_dir()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(CONFIGS):
            work = Path(tmp) / f"run{i}"
            results, timing = run_recipe(freezing_flags(work, model, options.train_samples, options.epochs, **extra),
                                         work)
            train_time = sum(timing["epochs"]) + timing["cache_build"]
            rows.append((name, trainable_share(extra), extra["learning_rate"], len(timing["epochs"]),
                         results["eval_accuracy"], train_time, timing["epochs"][-1]))
            print(f"{name}: dev accuracy {results['eval_accuracy']:.3f}, training {train_time:.0f} s", flush=True)

    lines = [
        f"# Freezing options: SST-2 dev accuracy (872 sentences), all-MiniLM-L6-v2, {options.train_samples} train "
        f"sentences, batch 32, seed 0",
        "",
        "| options | trainable at start | lr | epochs | dev accuracy | training time (s) | last epoch (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, share, lr, epochs, accuracy, seconds, last in rows:
        lines.append(f"| `{name}` | {share} | {lr:g} | {epochs} | {accuracy:.3f} | {seconds:.0f} | {last:.1f} |")
    lines += ["", "Training time is the sum of the epochs plus, with --cache_features, the cache build "
              "(one backbone pass over train and dev). Measured on a shared 2-core CPU: compare rows, not machines."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
