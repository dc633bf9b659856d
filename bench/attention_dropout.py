"""Attention dropout off (`--attention_dropout 0`) against on (the checkpoint's 0.1): accuracy and train speed of a
full MiniLM fine-tune on SST-2 and TREC coarse, 3 seeds each.

    python bench/attention_dropout.py            # 2 datasets × 3 seeds × 2 arms, ~20 min on 2 cores
    python bench/attention_dropout.py --quick    # 64 rows, 1 epoch, 1 seed: a smoke test (bench/runs/attention_dropout/)

`--attention_dropout 0` sets attention_probs_dropout_prob alone; hidden and classifier dropout stay at the
checkpoint's 0.1. Each dataset runs with its shipped config's settings:

- SST-2: `recipes/sentiment.py --config recipes/configs/sentiment/sst2_minilm.yaml` (learning rate 8e-5, 3 epochs,
  batch 16, group_by_length) on the 2000-sentence sample bench/fast_path.py trains on
  (bench/runs/fast_path/sst2_train_2000.tsv, seed 0, stratified by label), evaluated on all 872 of sst2/dev.tsv.
- TREC coarse: `recipes/text_classification.py --config recipes/configs/text_classification/trec_coarse.yaml`
  (learning rate 1e-4, 3 epochs, batch 32) on trec/train.tsv with `--max_train_samples 2000`, and trec/test.tsv
  (500 questions) given as `--validation_file`, so eval_accuracy is on the held-out test questions.

Both with `--eval_strategy no --do_predict false`. Arms interleaved per seed (on 42, off 42, on 43, ...); before
each run the script waits up to 120 s (--quiet_wait) for other work on the machine to stop, and records how many
cores other work kept busy during the run. Accuracy and train_samples_per_second (from `trainer.train()`) come
from each run's all_results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import sys
from pathlib import Path

from harness import (
    DATA,
    ROOT,
    now_str,
    run_for_results,
    run_header,
    shared,
    stratified_tsv_sample,
    undisturbed_limit,
)

WORK = ROOT / "bench" / "runs" / "attention_dropout"
SAMPLES = ROOT / "bench" / "runs" / "fast_path"  # the SST-2 sample bench/fast_path.py trains on
RESULTS = Path(__file__).with_name("attention_dropout_results.md")
SEEDS = (42, 43, 44)
ARMS = {"on": "attention dropout on (checkpoint's 0.1, no flag)", "off": "attention dropout off (`--attention_dropout 0`)"}
CONFIGS = {"sst2": "recipes/configs/sentiment/sst2_minilm.yaml",
           "trec": "recipes/configs/text_classification/trec_coarse.yaml"}
TITLES = {"sst2": "SST-2 (binary sentiment), dev accuracy on 872 sentences",
          "trec": "TREC coarse (6 classes), accuracy on the 500 test questions"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def dataset_flags(dataset: str, quick: bool) -> list[str]:
    rows = 64 if quick else 2000
    if dataset == "sst2":
        train = stratified_tsv_sample(DATA / "sst2" / "train.tsv", SAMPLES / f"sst2_train_{rows}.tsv", rows)
        dev = (rel(stratified_tsv_sample(DATA / "sst2" / "dev.tsv", SAMPLES / "sst2_dev_64.tsv", 64)) if quick
               else shared("sst2", "dev.tsv"))
        return ["recipes/sentiment.py", "--config", CONFIGS["sst2"], "--train_file", rel(train),
                "--validation_file", dev]
    return ["recipes/text_classification.py", "--config", CONFIGS["trec"], "--train_file",
            shared("trec", "train.tsv"), "--validation_file", shared("trec", "test.tsv"), "--label_column",
            "coarse_label", "--text_columns", "text", "--max_train_samples", str(rows),
            *(["--max_eval_samples", "64"] if quick else [])]


def arm_command(dataset: str, arm: str, seed: int, out: Path, quick: bool) -> list[str]:
    script, *flags = dataset_flags(dataset, quick)
    return ["python", script, *flags, "--eval_strategy", "no", "--do_predict", "false",
            *(["--num_train_epochs", "1"] if quick else []), "--output_dir", rel(out), "--seed", str(seed),
            *(["--attention_dropout", "0"] if arm == "off" else [])]


def config_settings(dataset: str) -> str:
    import yaml

    config = yaml.safe_load((ROOT / CONFIGS[dataset]).read_text())
    keys = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "train_sampling_strategy")
    return ", ".join(f"{k} {config[k]}" for k in keys if k in config)


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def dataset_section(dataset: str, runs: dict[str, list[dict]], seeds: tuple[int, ...],
                    limit: float) -> tuple[list[str], str]:
    ok = {arm: [r for r in runs[arm] if r["results"]] for arm in ARMS}
    lines = [f"## {TITLES[dataset]}", "",
             f"Config `{CONFIGS[dataset]}` ({config_settings(dataset)}); the command lines are below.", "",
             "| arm | accuracy: mean ± SE | per seed (" + ", ".join(map(str, seeds)) + ") | train samples/s: "
             "median (per seed) | speed vs on |", "|---|---:|---|---|---:|"]
    if not (ok["on"] and ok["off"]):
        return [*lines, "", "A run failed: see the per-run table and bench/runs/attention_dropout/.", ""], "failed"
    accuracy = {arm: [r["results"]["eval_accuracy"] for r in ok[arm]] for arm in ARMS}
    speed = {arm: [r["results"]["train_samples_per_second"] for r in ok[arm]] for arm in ARMS}
    stats = {arm: mean_se(accuracy[arm]) for arm in ARMS}
    base = statistics.median(speed["on"])
    for arm, name in ARMS.items():
        mean, se = stats[arm]
        lines.append(f"| {name} | {mean:.4f} ± {se:.4f} | {', '.join(f'{v:.4f}' for v in accuracy[arm])} | "
                     f"{statistics.median(speed[arm]):.2f} ({', '.join(f'{v:.2f}' for v in speed[arm])}) | "
                     f"{statistics.median(speed[arm]) / base:.2f}× |")
    (on_mean, on_se), (off_mean, _) = stats["on"], stats["off"]
    holds = off_mean >= on_mean - on_se  # False when one seed leaves no SE (nan)
    ratio = statistics.median(speed["off"]) / base
    paired_speed = [f["results"]["train_samples_per_second"] / o["results"]["train_samples_per_second"]
                    for o, f in zip(runs["on"], runs["off"]) if o["results"] and f["results"]]
    paired_acc = [f["results"]["eval_accuracy"] - o["results"]["eval_accuracy"]
                  for o, f in zip(runs["on"], runs["off"]) if o["results"] and f["results"]]
    quiet = [f["results"]["train_samples_per_second"] / o["results"]["train_samples_per_second"]
             for o, f in zip(runs["on"], runs["off"])
             if o["results"] and f["results"] and max(o["others"], f["others"]) < limit]
    word = "HOLDS" if holds else "n/a (one seed, no SE)" if math.isnan(on_se) else "DOES NOT HOLD"
    lines += ["", f"- **Speed: attention dropout off runs {ratio:.2f}× the train samples/s of on** (medians; per seed, "
              f"paired: {', '.join(f'{p:.2f}×' for p in paired_speed)}"
              + (f"; in the {len(quiet)} pair(s) with under {limit:.1f} cores of other work in both runs: "
                 f"{', '.join(f'{p:.2f}×' for p in quiet)}" if quiet else f"; no pair ran with under {limit:.1f} "
                 "cores of other work") + ").",
              f"- **Accuracy: off {off_mean:.4f} against on {on_mean:.4f} ± {on_se:.4f}** (mean ± SE); off − on per "
              f"seed: {', '.join(f'{d:+.4f}' for d in paired_acc)}. Rule: off holds if mean(off) ≥ mean(on) − SE(on) "
              f"= {on_mean - on_se:.4f}. **Verdict: attention dropout off {word}.**", ""]
    verdict = (f"{TITLES[dataset].split(',')[0]}: off {off_mean:.4f} vs on {on_mean:.4f} ± {on_se:.4f}, "
               f"{ratio:.2f}× train samples/s: **{word}**")
    return lines, verdict


def report(options, seeds, runs, order, started, wall, load_start, load_end) -> str:
    lines = ["# Attention dropout off against on: MiniLM full fine-tune on SST-2 and TREC coarse", ""]
    if options.quick:
        lines += ["**Quick mode: a smoke test on a few rows, one epoch. These numbers say nothing about the "
                  "recipes.**", ""]
    lines += [
        *run_header("bench/attention_dropout.py", started, wall, [run for *_, run in order], load_start, load_end,
                    options, "per-run table"),
        "## Setup", "",
        "- **on**: the checkpoint's dropout, 0.1 on attention probabilities, hidden states and the classifier (no "
        "flag). **off**: `--attention_dropout 0`, which sets `attention_probs_dropout_prob` alone; hidden and "
        "classifier dropout stay at 0.1.",
        "- SST-2: the 2000-sentence training sample bench/fast_path.py uses (`bench/runs/fast_path/"
        "sst2_train_2000.tsv`: sst2/train.tsv sampled once, seed 0, stratified by label), every arm and seed on the "
        "same file; accuracy on all of sst2/dev.tsv.",
        "- TREC coarse: trec/train.tsv with `--label_column coarse_label --text_columns text --max_train_samples "
        "2000` (the recipe draws the 2000 questions stratified by class with the run's seed: the two arms of a seed "
        "train on the same questions, the seeds on different ones), and trec/test.tsv given as `--validation_file`: "
        "the accuracy is on the 500 held-out test questions (no model selection is made on them).",
        f"- `--eval_strategy no --do_predict false`; seeds {', '.join(map(str, seeds))}; arms interleaved per seed (on, off, on, ...); "
        f"{options.threads or 'default'} intra-op thread{'s' if options.threads != 1 else ''} per run.",
        "- Accuracy is `eval_accuracy` and speed `train_samples_per_second` (from `trainer.train()`: training alone) "
        "in each run's all_results.json. SE = sample standard deviation / √3.",
        "- **Rule**: attention dropout off *holds* on a dataset if mean(off) ≥ mean(on) − SE(on), that is if off "
        "is no more than one standard error of the on arm below it.", ""]
    verdicts = []
    for dataset in runs:
        section, verdict = dataset_section(dataset, runs[dataset], seeds, undisturbed_limit(options.threads))
        lines += section
        verdicts.append(verdict)
    lines += ["## Verdicts", "", *(f"- {v}" for v in verdicts), "",
              "## Per run", "", "| dataset | seed | arm | accuracy | train samples/s | train runtime (s) | run wall (s) "
              "| waited (s) | load at start | other work during the run (cores) |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for dataset, arm, seed, run in order:
        res = run["results"]
        if not res:
            lines.append(f"| {dataset} | {seed} | {arm} | failed (exit {run['code']}) | | | {run['wall']:.0f} | "
                         f"{run['waited']:.0f} | {run['load']:.2f} | {run['others']:.2f} |")
            continue
        lines.append(f"| {dataset} | {seed} | {arm} | {res['eval_accuracy']:.4f} | "
                     f"{res['train_samples_per_second']:.2f} | {res['train_runtime']:.1f} | {run['wall']:.0f} | "
                     f"{run['waited']:.0f} | {run['load']:.2f} | {run['others']:.2f} |")
    lines += ["", "## Commands", "", "From the project root (`python` is `.venv/bin/python`, with HF_HUB_OFFLINE=1 "
              "HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false), in the order they ran:", "", "```",
              *(run["cmd"] for _, _, _, run in order), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 rows, 1 epoch, one seed: a smoke test")
    parser.add_argument("--datasets", default="sst2,trec", help="comma list of sst2, trec")
    parser.add_argument("--quiet_wait", type=float, default=None,
                        help="seconds to wait before each run for other work to leave its cores free "
                             "(default 120; quick: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of each run (OMP_NUM_THREADS; 0: torch's default, one per core)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs recorded in runs.json under bench/runs/attention_dropout/ (same "
                             "command) and run only the rest")
    parser.add_argument("--out", default=None, help="markdown file (default: bench/attention_dropout_results.md; "
                                                    "quick: bench/runs/attention_dropout/results-quick.md)")
    options = parser.parse_args()
    datasets = [d.strip() for d in options.datasets.split(",") if d.strip()]
    if set(datasets) - set(CONFIGS):
        parser.error(f"unknown dataset(s) {sorted(set(datasets) - set(CONFIGS))}; choose from sst2, trec")
    seeds = SEEDS[:1] if options.quick else SEEDS
    if options.quiet_wait is None:
        options.quiet_wait = 0.0 if options.quick else 120.0
    work = WORK / ("quick" if options.quick else "full")
    out_file = Path(options.out).resolve() if options.out else (WORK / "results-quick.md" if options.quick
                                                                 else RESULTS)

    # Every finished run is recorded in runs.json as it ends, so an interrupted benchmark can --resume.
    state_file = work / "runs.json"
    state = json.loads(state_file.read_text()) if options.resume and state_file.is_file() else None
    if state is None:
        state = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                 "load_start": list(os.getloadavg()), "runs": []}
    done = {(r["dataset"], r["arm"], r["seed"], r["cmd"]): r for r in state["runs"] if r["results"]}
    print(f"[{now_str()}] load {os.getloadavg()[0]:.2f}; {len(datasets)} datasets × {len(seeds)} seeds × "
          f"{len(ARMS)} arms" + (f", {len(done)} run(s) kept from runs.json" if done else ""), flush=True)
    runs = {dataset: {arm: [] for arm in ARMS} for dataset in datasets}
    order = []
    for dataset in datasets:
        for seed in seeds:
            for arm in ARMS:
                out = work / dataset / arm / f"seed{seed}"
                cmd = arm_command(dataset, arm, seed, out, options.quick)
                run = done.get((dataset, arm, seed, shlex.join(cmd)))
                if run is not None:
                    print(f"[{now_str()}] {dataset} {arm} seed {seed}: kept from runs.json", flush=True)
                else:
                    print(f"[{now_str()}] {dataset} {arm} seed {seed} ...", flush=True)
                    log = work / dataset / arm / f"log{seed}.txt"
                    run = {"dataset": dataset, "arm": arm, "seed": seed,
                           **run_for_results(cmd, out, "all_results.json", log, options.quiet_wait, options.threads)}
                    state["runs"] = [r for r in state["runs"] if (r["dataset"], r["arm"], r["seed"])
                                     != (dataset, arm, seed)] + [run]
                    state_file.write_text(json.dumps(state, indent=1))
                    if run["results"]:
                        print(f"    {run['wall']:.0f} s, {run['results']['train_samples_per_second']:.2f} train "
                              f"samples/s, accuracy {run['results']['eval_accuracy']:.4f} (waited "
                              f"{run['waited']:.0f} s, other work {run['others']:.2f} cores)", flush=True)
                    else:
                        print(f"    FAILED (exit {run['code']}); log tail:\n{log.read_text()[-1500:]}", flush=True)
                runs[dataset][arm].append(run)
                order.append((dataset, arm, seed, run))
    started, load_start, load_end = datetime.datetime.fromisoformat(state["started"]), state["load_start"], os.getloadavg()
    wall = sum(run["wall"] + run["waited"] for *_, run in order)
    text = report(options, seeds, runs, order, started, wall, load_start, load_end)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    print("\n" + text)
    print(f"written to {rel(out_file)}")
    return 0 if all(run["results"] for *_, run in order) else 1


if __name__ == "__main__":
    sys.exit(main())
