"""Input pipelines of the image and speech recipes: alone (no model), before and after, and end to end against the
HF image-classification example.

    python bench/input_pipeline.py [--before COMMIT] [--seeds 42 43] [--epochs 8]

1. **Input pipeline alone.** Each recipe builds its `Task` as it would for training (the run itself is replaced),
   and the train split is read as its Trainer reads it: `Task.augmentation.wrap(train)`, the Task's collator,
   batches of 16 in random order, for `--loader_epochs` epochs, with no model. Images/s (clothing_small train,
   tiny ConvNeXt at 64 px, the default `light` preset and the config's `standard` one) and clips/s (FSDD train, tiny wav2vec2 CTC,
   `--audio_augment speed=0.5 shift=0.3 gain=0.3 noise=0.3`). `before` is a git worktree of COMMIT (the tree
   before the input pipeline was reworked), `now` is this tree; each measurement runs in its own process,
   before and now alternating, and the table shows the median.
2. **End to end.** `recipes/image_classification.py` against `bench/peers/hf_run_image_classification.py` (the
   HF example's steps) at matched settings: the same tiny ConvNeXt (random init, 64 px), clothing_small train,
   `--epochs` epochs, batch 16, learning rate 3e-3, no evaluation or checkpoints during training, the same
   seeds. Train samples/s comes from each one's `trainer.train()` metrics. The recipe runs with its defaults
   (the `light` preset), with one data loader worker, with its config's `standard` preset (which adds an
   affine warp and colour jitter the example does not do), and with exactly the example's ops
   (RandomResizedCrop scale 0.08-1 and a flip). The speech recipe runs one FSDD epoch with its defaults and
   with one worker: with the image arms, the evidence for the workers default on CPU.

Writes its section into bench/RESULTS.md (between markers that bench/run.py keeps); runs stay in
bench/runs/input_pipeline/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import DATA, ROOT, child_env, launch, machine, matmul_rate, write_section

RUNS = ROOT / "bench" / "runs" / "input_pipeline"
MARK = "input_pipeline"
BEFORE = "3b554f4"  # the last commit before the input pipeline rework
PEER = "bench/peers/hf_run_image_classification.py"
CLOTHING = DATA / "clothing_small"
AUDIO_AUGMENT = ["speed=0.5", "shift=0.3", "gain=0.3", "noise=0.3"]
PEER_OPS = '{RandomResizedCrop: {scale: [0.08, 1.0]}}'  # with the `light` preset: the example's crop and flip
PEER_ARM = "HF example (its defaults: 0 workers)"
LOADERS = {"image-light": ("images/s", "clothing_small, tiny ConvNeXt 64 px, the default `light` preset"),
           "image-standard": ("images/s", "the same, the config's `standard` preset"),
           "speech": ("clips/s", "FSDD, tiny wav2vec2 CTC, `--audio_augment` 4 ops")}


def recipe_task(kind: str, models: Path, out: Path):
    """The Task the image (`image-PRESET`) or speech recipe would train, built by its own main() with `run`
    replaced."""
    if kind.startswith("image"):
        from recipes import image_classification as recipe

        argv = ["--model_name_or_path", str(models / "convnext"), "--train_dir", str(CLOTHING / "train"),
                "--image_augment", kind.split("-")[1]]
    else:
        from recipes import speech_recognition as recipe

        argv = ["--model_name_or_path", str(models / "ctc"), "--train_file", str(DATA / "fsdd" / "metadata.csv"),
                "--split_column", "split", "--audio_column", "file", "--text_column", "transcript",
                "--max_duration_s", "1.0", "--audio_augment", *AUDIO_AUGMENT]
    captured = {}

    def run(task, args, finetune_args) -> dict:
        captured["task"] = task
        return {}

    recipe.finetune = run
    recipe.main([*argv, "--output_dir", str(out), "--overwrite_output_dir", "--disable_tqdm", "true",
                 "--report_to", "none"])
    return captured["task"]


def measure_loader(kind: str, models: Path, out: Path, epochs: int, workers: int) -> dict:
    """Examples/s of the train split through the recipe's augmentation and collator, no model."""
    import torch
    from torch.utils.data import DataLoader

    task = recipe_task(kind, models, out)
    dataset = task.augmentation.wrap(task.train_dataset)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=task.data_collator, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    next(iter(loader))  # warm-up: imports, first decode
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        dataset.epoch = epoch
        for batch in loader:
            count += len(batch["labels"])
    return {"examples": count, "seconds": time.perf_counter() - start}


def build_models(models: Path) -> None:
    from common.models.tiny import tiny_convnext, tiny_wav2vec2_ctc

    if not (models / "convnext").is_dir():
        tiny_convnext(models / "convnext", image_size=64)
    if not (models / "ctc").is_dir():
        tiny_wav2vec2_ctc(models / "ctc")


def run_json(cmd: list[str], log: Path, tree: Path = ROOT) -> dict:
    """Run one measurement or training process from `tree` (imports from it), return the JSON it wrote."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    env = {**child_env(), "PYTHONPATH": str(tree)}
    with log.open("w") as out:
        code = subprocess.call([sys.executable, *cmd], cwd=tree, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not result.is_file():
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}; see {log}")
    return json.loads(result.read_text())


def worktree(commit: str) -> Path:
    path = RUNS / f"tree-{commit}"
    if not path.is_dir():
        subprocess.check_call(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT)
    return path


def loader_rows(before: Path, models: Path, repeats: int, epochs: int) -> dict[str, list[float]]:
    """examples/s per (kind, arm), alternating before and now."""
    rates: dict[str, list[float]] = {}
    arms = [("before", before, 0), ("now", ROOT, 0), ("now, 1 worker", ROOT, 1)]
    for repeat in range(repeats):
        for kind in LOADERS:
            for name, tree, workers in arms:
                log = RUNS / f"loader-{kind}-{name.replace(', ', '-').replace(' ', '')}-{repeat}.log"
                cmd = [str(ROOT / "bench" / "input_pipeline.py"), "--measure", kind, "--workers", str(workers),
                       "--loader_epochs", str(epochs), "--models", str(models), "--result", str(log.with_suffix(".json"))]
                # This script measures; the recipe and common/ it imports are the tree's.
                measured = run_json([*cmd, "--tree", str(tree)], log, tree=tree)
                rates.setdefault(f"{kind}|{name}", []).append(measured["examples"] / measured["seconds"])
                print(f"{kind} {name}: {rates[f'{kind}|{name}'][-1]:.1f}/s", flush=True)
    return rates


def e2e_arms(models: Path, epochs: int) -> dict[str, list[str]]:
    """Image runs against the HF example, then the speech recipe with and without a worker."""
    common = ["--num_train_epochs", str(epochs), "--per_device_train_batch_size", "16", "--learning_rate", "3e-3"]
    quiet = ["--eval_strategy", "no", "--save_strategy", "no", "--do_eval", "false", "--do_predict", "false",
             "--error_examples", "0", "--disable_tqdm", "true", "--report_to", "none", "--overwrite_output_dir"]
    recipe = ["recipes/image_classification.py", "--model_name_or_path", str(models / "convnext"),
              "--train_dir", str(CLOTHING / "train"), *common, *quiet]
    speech = ["recipes/speech_recognition.py", "--model_name_or_path", str(models / "ctc"), "--train_file",
              str(DATA / "fsdd" / "metadata.csv"), "--split_column", "split", "--audio_column", "file",
              "--text_column", "transcript", "--max_duration_s", "1.0", "--audio_augment", *AUDIO_AUGMENT,
              "--num_train_epochs", "1", *quiet]
    return {
        PEER_ARM: [PEER, str(CLOTHING / "train"), "{seed}", "{out}", "--model_name_or_path", str(models / "convnext"),
                   *common],
        "image recipe, its defaults (`light` preset; on CPU 0 workers)": recipe,
        "image recipe, 1 data loader worker": [*recipe, "--dataloader_num_workers", "1"],
        "image recipe, the config's `standard` preset": [*recipe, "--image_augment", "standard"],
        "image recipe, the example's own ops": [*recipe, "--image_augment", "light", "--image_augment_params",
                                                PEER_OPS],
        "speech recipe (FSDD, 1 epoch), its defaults (on CPU 0 workers)": speech,
        "speech recipe (FSDD, 1 epoch), 1 data loader worker": [*speech, "--dataloader_num_workers", "1"],
    }


def e2e_rows(models: Path, seeds: list[int], epochs: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {}
    for seed in seeds:
        for index, (name, cmd) in enumerate(e2e_arms(models, epochs).items()):
            out = RUNS / f"e2e-{index}-{seed}"
            log = RUNS / f"e2e-{index}-{seed}.log"
            args = [a.replace("{seed}", str(seed)).replace("{out}", str(out)) for a in cmd]
            if cmd[0] != PEER:
                args += ["--seed", str(seed), "--output_dir", str(out)]
            code, _, _ = launch(["python", *args], log)
            results = out / ("results.json" if cmd[0] == PEER else "all_results.json")
            if code != 0 or not results.is_file():
                raise SystemExit(f"failed ({code}): {' '.join(args)}; see {log}")
            rates.setdefault(name, []).append(float(json.loads(results.read_text())["train_samples_per_second"]))
            print(f"{name} seed {seed}: {rates[name][-1]:.1f} samples/s", flush=True)
    return rates


def section(loader: dict[str, list[float]], e2e: dict[str, list[float]], options, seconds: float,
            rate: float) -> list[str]:
    median = {k: statistics.median(v) for k, v in {**loader, **e2e}.items()}
    peer = median[PEER_ARM]
    lines = [f"<!-- {MARK} -->", "## Input pipelines: images and audio, alone and against the HF example", "",
             f"`python bench/input_pipeline.py --before {options.before} --seeds {' '.join(map(str, options.seeds))} "
             f"--epochs {options.epochs}` ({seconds / 60:.1f} min; fp32 matmul {rate / 1e9:.0f} GFLOP/s in the same "
             "run). What each arm runs is in the script's docstring.", "", *machine(), "",
             f"**The train input pipeline alone** (no model; batches of 16, random order, {options.loader_epochs} "
             f"epochs, median of {options.repeats} runs; `before` is commit {options.before}):", "",
             "| pipeline | before | now | now / before | now, 1 worker |", "|---|---:|---:|---:|---:|"]
    for kind, (unit, what) in LOADERS.items():
        b, n, w = (median[f"{kind}|{arm}"] for arm in ("before", "now", "now, 1 worker"))
        lines.append(f"| {kind}: {what} | {b:.0f} {unit} | {n:.0f} {unit} | **{n / b:.2f}×** | {w:.0f} {unit} |")
    lines += ["", f"**End to end** (train samples/s from `trainer.train()`, median of seeds "
              f"{', '.join(map(str, options.seeds))}; {options.epochs} epochs of the 400 train images, batch 16):", "",
              "| run | train samples/s (per seed) | ratio |", "|---|---:|---:|"]
    speech = next(name for name in e2e if name.startswith("speech"))
    for name, values in e2e.items():
        base, against = (median[speech], "its defaults") if name.startswith("speech") else (peer, "the HF example")
        ratio = "" if name in (PEER_ARM, speech) else f"**{median[name] / base:.2f}×** {against}"
        lines.append(f"| {name} | {median[name]:.1f} ({', '.join(f'{v:.1f}' for v in values)}) | {ratio} |")
    lines += ["", f"<!-- /{MARK} -->"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--loader_epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=str(RUNS / "models"))
    # One measurement, in a process of its own (used by the driver above).
    parser.add_argument("--measure", choices=LOADERS)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--tree", default=None)
    parser.add_argument("--result", default=None)
    options = parser.parse_args()
    models = Path(options.models)
    if options.measure:
        if options.tree:  # import the recipes and common/ of that tree
            sys.path.insert(0, options.tree)
            os.chdir(options.tree)
        out = Path(options.result).with_suffix(".out")
        Path(options.result).write_text(json.dumps(
            measure_loader(options.measure, models, out, options.loader_epochs, options.workers)))
        return
    RUNS.mkdir(parents=True, exist_ok=True)
    build_models(models)
    started = time.perf_counter()
    rate = matmul_rate(2048, 5)["median"]
    loader = loader_rows(worktree(options.before), models, options.repeats, options.loader_epochs)
    e2e = e2e_rows(models, options.seeds, options.epochs)
    lines = section(loader, e2e, options, time.perf_counter() - started, rate)
    write_section(MARK, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
