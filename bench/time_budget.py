"""Time-budgeted fine-tuning (`--time_budget`) against AutoGluon's MultiModalPredictor at the same time limit.

    python bench/time_budget.py                      # every part, in the order below
    python bench/time_budget.py --parts sst2 autogluon

Parts (each run alone on the machine, one after another; wall time measured outside the process, from its start
to its exit):
- sst2: the sentiment recipe, MiniLM, on a stratified 2,000-sentence sample of SST-2 train (seed 0), validated on
  all 872 dev sentences, at each budget. No setting is chosen on dev: the plan reads only speeds.
- autogluon: MultiModalPredictor on the same 2,000 sentences, the same local MiniLM, its default preset and
  `time_limit` at each budget, in its own virtual environment (bench/peers/autogluon_env.sh); fit time and dev
  accuracy on all 872 sentences (bench/peers/autogluon_sst2.py).
- default: the shipped recipes/configs/sentiment/sst2_minilm.yaml on the same sample, no budget; then
  `--time_budget T` with T its measured wall time.
- strategies: the 180 s budget with the strategy forced to LoRA, and to a head on cached features: the evidence for
  the plan's order (full, then LoRA, then the cache).
- averaging: the 180 s budget with and without `--average_checkpoints greedy 5`, 3 seeds. The greedy soup selects on
  validation, so here validation is 10% held out of the 2,000 and dev is the test split.
- heldout: the 600 s budget as in averaging (10% of the 2,000 held out for validation, dev the test split), with the
  plan's own choices: it adds the greedy soup where the evaluations are cheap, which a held-out split makes them.
- default_heldout: the default part with validation held out of the 2,000 and dev as the test split.
- seed_soup: the shipped sst2_minilm.yaml three times on the same sample with seeds 1, 2, 3, then the uniform
  average of the three fine-tuned weights (a model soup of independent fine-tunes from one pretrained model,
  Wortsman et al. 2022), scored on dev by `finetune-recipes predict` like each member: whether a long budget is
  better spent on several short runs souped together than on one long run.
- others: TREC (MiniLM; 10% of train held out for validation, the 500 test questions) and clothing_small (tiny
  ConvNeXt, random init, 64 px) at each budget.

Writes bench/results/time_budget/<part>.json and its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    CLOTHING_DATA,
    ROOT,
    SST2_CONFIG,
    TREC_DATA,
    data,
    machine,
    minilm_dir,
    other_hosts,
    run_for_results,
    shared,
    stratified_tsv_sample,
    wait_for_quiet,
    write_section,
)

WORK = ROOT / "bench" / "runs" / "time_budget"
RESULTS = ROOT / "bench" / "results" / "time_budget"
MARK = "time_budget"
BUDGETS = (180, 600)
AG_PYTHON = ROOT / "bench" / ".venv-autogluon" / "bin" / "python"
QUIET_WAIT = 120.0  # seconds to wait, at most, for other work to leave the cores before each run
PARTS = ("sst2", "autogluon", "default", "strategies", "averaging", "others", "heldout", "default_heldout", "seed_soup")
SEEDS = (42, 43, 44)
SOUP_SEEDS = (1, 2, 3)
REUSE = False  # --reuse


def sst2_sample() -> Path:
    return stratified_tsv_sample(data("sst2", "train.tsv"), WORK / "sst2_train_2000.tsv", 2000, seed=0)


def sst2_flags() -> list[str]:
    return ["--model_name_or_path", minilm_dir(), "--train_file", str(sst2_sample()),
            "--validation_file", shared("sst2", "dev.tsv"), "--disable_tqdm", "true"]


def recipe_run(name: str, script: str, flags: list[str], keep_weights: bool = False) -> dict:
    """One recipe run, alone on the machine; its numbers are kept in WORK/<name>.json, which --reuse reads back
    instead of running it again (a part cut short continues where it stopped)."""
    kept = WORK / f"{name}.json"
    if REUSE and kept.is_file():
        return json.loads(kept.read_text())
    out = WORK / name
    run = run_for_results(["python", script, *flags, "--output_dir", str(out), "--overwrite_output_dir"], out,
                          "all_results.json", WORK / f"{name}.log", quiet_wait=QUIET_WAIT,
                          keep_weights=keep_weights)
    config = out / "run_config.json"
    run["time_budget"] = json.loads(config.read_text()).get("time_budget") if config.is_file() else None
    run["name"], run["machine"] = name, machine()
    kept.write_text(json.dumps(run, indent=1, default=str) + "\n")
    print(f"{name}: exit {run['code']}, wall {run['wall']:.1f} s, "
          f"eval accuracy {(run['results'] or {}).get('eval_accuracy')}, test accuracy "
          f"{(run['results'] or {}).get('test_accuracy')}", flush=True)
    return run


def part_sst2() -> list[dict]:
    return [recipe_run(f"sst2_{budget}s", "recipes/sentiment.py", [*sst2_flags(), "--time_budget", f"{budget}s"])
            for budget in BUDGETS]


def part_autogluon() -> list[dict]:
    if not AG_PYTHON.is_file():
        subprocess.run(["bash", "bench/peers/autogluon_env.sh"], cwd=ROOT, check=True)
    runs = []
    for budget in BUDGETS:
        out = WORK / f"autogluon_{budget}s.json"
        wait_for_quiet(QUIET_WAIT)
        start = time.perf_counter()
        done = subprocess.run([str(AG_PYTHON), "bench/peers/autogluon_sst2.py", "--train", str(sst2_sample()),
                               "--dev", str(data("sst2", "dev.tsv")), "--time_limit", str(budget),
                               "--model_dir", str(WORK / f"autogluon_{budget}s"), "--output", str(out)],
                              cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        (WORK / f"autogluon_{budget}s.log").write_text(done.stdout + done.stderr)
        result = json.loads(out.read_text()) if done.returncode == 0 and out.is_file() else None
        runs.append({"name": f"autogluon_{budget}s", "code": done.returncode, "wall": wall, "results": result,
                     "machine": machine()})
        print(f"autogluon {budget}s: exit {done.returncode}, process wall {wall:.1f} s, {result}", flush=True)
    return runs


def part_default() -> list[dict]:
    default = recipe_run("sst2_default", "recipes/sentiment.py", ["--config", SST2_CONFIG, *sst2_flags()])
    budget = f"{default['wall']:.0f}s"
    same = recipe_run("sst2_budget_default_wall", "recipes/sentiment.py", [*sst2_flags(), "--time_budget", budget])
    return [default, same]


def part_strategies() -> list[dict]:
    forced = {"lora": ["--peft", "lora"], "cache": ["--freeze", "backbone", "--cache_features", "true"]}
    return [recipe_run(f"sst2_180s_{name}", "recipes/sentiment.py", [*sst2_flags(), "--time_budget", "180s", *flags])
            for name, flags in forced.items()]


def part_averaging() -> list[dict]:
    flags = [*heldout_flags(), "--time_budget", "180s"]
    runs = []
    for seed in SEEDS:
        for arm, extra in (("plain", ["--average_checkpoints", "none"]), ("greedy5", ["--average_checkpoints", "greedy", "5"])):
            runs.append(recipe_run(f"averaging_{arm}_seed{seed}", "recipes/sentiment.py",
                                   [*flags, "--seed", str(seed), *extra]))
    return runs


def dev_accuracy(run_dir: Path, dev_labels: list[int]) -> float:
    """Accuracy of `finetune-recipes predict` on all 872 dev sentences, against their labels (0/1, the class ids)."""
    import pandas as pd
    from transformers import AutoConfig

    output = run_dir / "dev_predictions.csv"
    output.unlink(missing_ok=True)  # predict refuses to overwrite a file
    subprocess.run([sys.executable, "-m", "common.cli", "predict", str(run_dir), "--input", shared("sst2", "dev.tsv"),
                    "--output", str(output)], cwd=ROOT, check=True, capture_output=True)
    label2id = {str(name): i for name, i in AutoConfig.from_pretrained(run_dir).label2id.items()}
    predicted = pd.read_csv(output)["prediction"].astype(str).map(label2id).tolist()
    return sum(p == g for p, g in zip(predicted, dev_labels, strict=True)) / len(dev_labels)


def part_seed_soup() -> list[dict]:
    import shutil

    import pandas as pd
    from transformers import AutoModelForSequenceClassification

    from common.toolkit.averaging import load_mean, snapshot

    runs = [recipe_run(f"seed_soup_seed{seed}", "recipes/sentiment.py",
                       ["--config", SST2_CONFIG, *sst2_flags(), "--seed", str(seed), "--do_predict", "false"],
                       keep_weights=True)
            for seed in SOUP_SEEDS]
    members = [WORK / run["name"] for run in runs]
    soup_dir = WORK / "seed_soup"
    # The members share the tokenizer and run_config.json (which predict reads); what describes one member's run
    # (its metrics, predictions, model card) is left behind.
    shutil.rmtree(soup_dir, ignore_errors=True)
    shutil.copytree(members[0], soup_dir, ignore=shutil.ignore_patterns(
        "all_results.json", "trainer_state.json", "*.csv", "*.png", "*.html", "README.md", "*.safetensors"))
    models = [AutoModelForSequenceClassification.from_pretrained(member) for member in members]
    load_mean(models[0], [snapshot(model) for model in models])  # the first member becomes the soup
    models[0].save_pretrained(soup_dir)
    dev_labels = pd.read_csv(shared("sst2", "dev.tsv"), sep="\t", quoting=3, keep_default_na=False)["label"].tolist()
    for run, member in zip(runs, members):
        run["predict_dev_accuracy"] = dev_accuracy(member, dev_labels)  # re-scored as the soup is: = eval_accuracy
    return [*runs, {"name": "seed_soup", "members": [run["name"] for run in runs],
                    "wall": sum(run["wall"] for run in runs), "predict_dev_accuracy": dev_accuracy(soup_dir, dev_labels),
                    "machine": machine()}]


def heldout_flags() -> list[str]:
    """SST-2 as AutoGluon splits it: validation held out of the 2,000 training sentences, dev only for the score."""
    return ["--model_name_or_path", minilm_dir(), "--train_file", str(sst2_sample()), "--validation_split", "0.1",
            "--test_file", shared("sst2", "dev.tsv"), "--disable_tqdm", "true"]


def part_heldout() -> list[dict]:
    return [recipe_run("sst2_heldout_600s", "recipes/sentiment.py", [*heldout_flags(), "--time_budget", "600s"])]


def part_default_heldout() -> list[dict]:
    default = recipe_run("sst2_heldout_default", "recipes/sentiment.py", ["--config", SST2_CONFIG, *heldout_flags()])
    same = recipe_run("sst2_heldout_budget_default_wall", "recipes/sentiment.py",
                      [*heldout_flags(), "--time_budget", f"{default['wall']:.0f}s"])
    return [default, same]


def part_others() -> list[dict]:
    from common.models.tiny import tiny_convnext

    convnext = WORK / "tiny-convnext"
    if not (convnext / "config.json").is_file():
        tiny_convnext(convnext, image_size=64)
    runs = []
    for budget in BUDGETS:
        runs.append(recipe_run(f"trec_{budget}s", "recipes/text_classification.py", [
            "--model_name_or_path", minilm_dir(), *TREC_DATA, "--validation_split", "0.1", "--disable_tqdm", "true",
            "--time_budget", f"{budget}s"]))
        runs.append(recipe_run(f"clothing_{budget}s", "recipes/image_classification.py", [
            "--model_name_or_path", str(convnext), *CLOTHING_DATA, "--learning_rate", "3e-3",
            "--disable_tqdm", "true", "--time_budget", f"{budget}s"]))
    return runs


# --- the report -------------------------------------------------------------------------------------------------


def load(part: str) -> list[dict]:
    path = RESULTS / f"{part}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def budget_of(run: dict) -> float | None:
    record = run.get("time_budget")
    return record["budget_s"] if record else None


def over(run: dict) -> str:
    budget = budget_of(run)
    if budget is None:
        return "no budget"
    share = run["wall"] / budget - 1
    return f"{share:+.1%}"


def plan_cells(run: dict) -> str:
    record = run.get("time_budget")
    if not record:
        return ""
    planned, actual = record["planned"], record["actual"]
    lr = planned["learning_rate"] or "as configured"
    stopped = " (deadline)" if actual["stopped_by_deadline"] else ""
    # What the run averaged (all_results.json), also for runs recorded before the plan listed it.
    results = run.get("results") or {}
    averaging = results.get("averaging_method") or planned.get("average_checkpoints") or "none"
    if results.get("averaged_seeds"):
        averaging += f" (seeds {', '.join(map(str, results['averaged_seeds']))} kept)"
    earlier = actual.get("seeded_runs_before_the_last") or []
    runs = (f"{len(earlier) + 1} seeded runs: " + ", ".join(f"{r['steps']}" for r in earlier)
            + " steps, then the last: ") if earlier else ""
    return (f"{record['strategy']}; {runs}{planned['max_steps']} steps planned = {planned['epochs']:.2f} epochs, "
            f"{actual['steps']} run{stopped}; batch {planned['batch_size']}, lr {lr}, "
            f"{planned['evaluations']} evaluations; averaging {averaging}; "
            f"probe {record['phases'].get('probe_s')} s")


def autogluon_cells(result: dict) -> str:
    notes = result.get("notes") or {}
    trainer = notes.get("trainer") or {}
    return (f"{notes.get('preset')} preset: max text length {notes.get('max_text_len_used')}, batch "
            f"{notes.get('batch_size')} ({notes.get('per_gpu_batch_size')} x {trainer.get('accumulate_grad_batches')} "
            f"accumulation), lr {notes.get('lr')}, {notes.get('fit_rows')} rows fit / {notes.get('holdout_rows')} held "
            f"out, {result.get('steps')} steps = {notes.get('epochs_reached')} epochs of {notes.get('max_epochs')} "
            "planned; text augmentation without the WordNet synonym op, which needs a download")


def metric(run: dict, key: str) -> str:
    value = (run.get("results") or {}).get(key)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def report() -> list[str]:
    lines = [f"<!-- {MARK} -->", "## Time budget: `--time_budget` against AutoGluon at the same time limit", "",
             f"Written {datetime.datetime.now():%Y-%m-%d %H:%M} by `python bench/time_budget.py` (runs and logs in "
             "`bench/runs/time_budget/`, numbers in `bench/results/time_budget/`); every run alone on the machine, one "
             "after another. Wall time is measured outside each process, from its start to its exit.", "", *machine(),
             ""]
    sst2, ag, default, strategies, averaging, others, heldout, default_heldout, seed_soup = (load(p) for p in PARTS)
    if sst2 or ag or heldout:
        lines += ["### SST-2, 2,000 sentences, MiniLM: the budget against AutoGluon at the same time limit", "",
                  "| system | budget (s) | wall (s) | over budget | dev accuracy (872) | plan |", "|---|---:|---:|---:|---:|---|"]
        for run in sst2:
            lines.append(f"| finetune-recipes `--time_budget` | {budget_of(run):.0f} | {run['wall']:.1f} | {over(run)} | "
                         f"{metric(run, 'eval_accuracy')} | {plan_cells(run)} |")
        for run in [*(r for r in averaging if r["name"].startswith("averaging_greedy5")), *heldout]:
            lines.append(f"| finetune-recipes `--time_budget`, 10% held out for validation, dev as test "
                         f"({run['name']}) | {budget_of(run):.0f} | {run['wall']:.1f} | {over(run)} | "
                         f"{metric(run, 'test_accuracy')} | {plan_cells(run)} |")
        for run in ag:
            result = run.get("results") or {}
            limit = result.get("time_limit")
            fit = result.get("fit_s")
            share = f"fit {fit / limit - 1:+.1%}, process {run['wall'] / limit - 1:+.1%}" if fit and limit else "-"
            lines.append(f"| AutoGluon {result.get('version', '?')} MultiModalPredictor | {limit} | "
                         f"{run['wall']:.1f} (fit {fit:.1f}) | {share} | {result.get('dev_accuracy', float('nan')):.4f} | "
                         f"{autogluon_cells(result)} |")
        greedy = [r for r in averaging if r["name"].startswith("averaging_greedy5")]
        lines += ["", *other_hosts([*sst2, *greedy, *heldout, *ag])]
    if default or default_heldout:
        lines += ["### The recipe's own default against a budget of its wall time", "",
                  "Dev is the validation split in the first two rows, the test split in the last two (validation held "
                  "out of the 2,000).", "",
                  "| run | wall (s) | dev accuracy (872) | plan |", "|---|---:|---:|---|"]
        for run in default:
            lines.append(f"| {run['name']} | {run['wall']:.1f} | {metric(run, 'eval_accuracy')} | {plan_cells(run)} |")
        for run in default_heldout:
            lines.append(f"| {run['name']} | {run['wall']:.1f} | {metric(run, 'test_accuracy')} | {plan_cells(run)} |")
        lines += ["", *other_hosts([*default, *default_heldout])]
    if strategies:
        lines += ["### Each strategy at the same budget (SST-2, 180 s)", "",
                  "| strategy | wall (s) | dev accuracy (872) | plan |", "|---|---:|---:|---|"]
        compared = [*(r for r in sst2 if r["name"] == "sst2_180s"), *strategies]
        for run in compared:
            lines.append(f"| {run['name']} | {run['wall']:.1f} | {metric(run, 'eval_accuracy')} | {plan_cells(run)} |")
        lines += ["", *other_hosts(compared)]
    if averaging:
        lines += ["### Checkpoint averaging: `--average_checkpoints greedy 5` on and off (180 s budget, 3 seeds)", "",
                  "Validation is 10% held out of the 2,000 sentences (the soup selects on it); dev (872) is the test split.", "",
                  "| seed | plain: test accuracy | greedy 5: test accuracy | greedy 5: averaged steps | wall plain / greedy (s) |",
                  "|---|---:|---:|---|---|"]
        for seed in SEEDS:
            plain = next((r for r in averaging if r["name"] == f"averaging_plain_seed{seed}"), None)
            soup = next((r for r in averaging if r["name"] == f"averaging_greedy5_seed{seed}"), None)
            if plain and soup:
                steps = (soup.get("results") or {}).get("averaged_steps")
                lines.append(f"| {seed} | {metric(plain, 'test_accuracy')} | {metric(soup, 'test_accuracy')} | {steps} | "
                             f"{plain['wall']:.0f} / {soup['wall']:.0f} |")
        means = {arm: [(r["results"] or {}).get("test_accuracy") for r in averaging if f"_{arm}_" in r["name"]]
                 for arm in ("plain", "greedy5")}
        if all(means.values()) and None not in means["plain"] + means["greedy5"]:
            lines.append(f"| mean | {statistics.mean(means['plain']):.4f} | {statistics.mean(means['greedy5']):.4f} | | |")
        lines += ["", *other_hosts(averaging)]
    if others:
        lines += ["### TREC and clothing_small", "",
                  "| run | budget (s) | wall (s) | over budget | validation accuracy | test accuracy | plan |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for run in others:
            lines.append(f"| {run['name']} | {budget_of(run):.0f} | {run['wall']:.1f} | {over(run)} | "
                         f"{metric(run, 'eval_accuracy')} | {metric(run, 'test_accuracy')} | {plan_cells(run)} |")
        lines += ["", *other_hosts(others)]
    if seed_soup:
        lines += ["### Three seeded runs of the default, and their weights averaged (SST-2, no budget)", "",
                  "Each member is the shipped sst2_minilm.yaml (3 epochs); the soup is the uniform average of their "
                  "weights. Dev accuracy (872) from `finetune-recipes predict`; each member's also as its run reported it.",
                  "", "| model | wall (s) | dev accuracy (predict) | dev accuracy (run's report) |", "|---|---:|---:|---:|"]
        for run in seed_soup:
            reported = metric(run, "eval_accuracy") if "results" in run else ""
            lines.append(f"| {run['name']} | {run['wall']:.0f} | {run['predict_dev_accuracy']:.4f} | {reported} |")
        lines += ["", *other_hosts(seed_soup)]
    return [*lines, f"<!-- /{MARK} -->"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--report_only", action="store_true", help="Rewrite the RESULTS.md section from the results.")
    parser.add_argument("--reuse", action="store_true",
                        help="Take each recipe run already measured (bench/runs/time_budget/<run>.json) as it is.")
    options = parser.parse_args()
    global REUSE
    REUSE = options.reuse
    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    if not options.report_only:
        for part in options.parts:
            runs = globals()[f"part_{part}"]()
            (RESULTS / f"{part}.json").write_text(json.dumps(runs, indent=1, default=str) + "\n")
            write_section(MARK, report())
    write_section(MARK, report())
    print("\n".join(report()))


if __name__ == "__main__":
    main()
