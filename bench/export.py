"""Serving throughput of `finetune-recipes export`: PyTorch fp32 against ONNX Runtime fp32 and int8, on this CPU.

    python bench/export.py                    # every part: train what is missing, export, measure
    python bench/export.py --parts sst2       # one part

Parts (each trains its model once into bench/runs/export/<part>/run, and reuses it after):
- sst2: the sentiment recipe's shipped config (MiniLM) on a stratified 2,000-sentence sample of SST-2 train
  (seed 0), validated on dev: throughput and accuracy on all 872 dev sentences, batch 32.
- image: the tiny ConvNeXt (random init, 64 px) on clothing_small, 5 epochs: its 341 validation images.
- speech: audio classification of FSDD's spoken digits with a tiny wav2vec2 (random init), 10 epochs, 30% of
  the clips held out by speaker: those clips.
- translation: the tiny Marian (random init, 4,000-token BPE vocabulary) on 10,000 Multi30k pairs, 5 epochs;
  CTranslate2 fp32 and int8 against transformers' generate(), greedy, on the 1,000 test_2016_flickr sentences
  through `finetune-recipes predict --runtime torch|onnx`: identical translations and sentences per second.

For the classifiers, each runtime predicts the validation split through the recipe's own trainer (the export's
parity check), 3 passes each, the runtimes taking turns; the median pass gives rows/s. Every export also runs
its own parity check, whose numbers (metric drop, top-1 agreement, largest logit difference) are reported.
Writes bench/results/export/<part>.json and the section of bench/RESULTS.md.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import (  # noqa: E402
    CLOTHING_DATA,
    MULTI30K_DATA,
    ROOT,
    SST2_CONFIG,
    data,
    machine,
    minilm_dir,
    other_hosts,
    run_parts,
    shared,
    stratified_tsv_sample,
)

WORK = ROOT / "bench" / "runs" / "export"
RESULTS = ROOT / "bench" / "results" / "export"
MARK = "export"
PASSES = 3
BATCH = 32
PARTS = ("sst2", "image", "speech", "translation")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
QUIET = ["--disable_tqdm", "true", "--report_to", "none", "--save_strategy", "no", "--overwrite_output_dir"]


def sh(cmd: list[str], log: Path) -> float:
    """Run a command from the repository root, its output to `log`; its wall seconds. Fails loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}; see {log}")
    return time.perf_counter() - started


def train(part: str, script: str, flags: list[str]) -> Path:
    out = WORK / part / "run"
    if not (out / "config.json").is_file():
        print(f"{part}: training", flush=True)
        sh([sys.executable, script, *flags, "--output_dir", str(out), *QUIET], WORK / part / "train.log")
    return out


def export(part: str, run: Path, precision: str) -> tuple[Path | None, dict]:
    """The export dir of `precision` (made once) and its parity report; None and the report when the parity
    check refused the export (exit 2)."""
    target = WORK / part / precision
    if not (target / "export_report.json").is_file():
        shutil.rmtree(target, ignore_errors=True)
        extra = ["--quantize", "int8"] if precision == "int8" else []
        cmd = [sys.executable, "-m", "common.cli", "export", str(run), "--output", str(target), *extra,
               "--batch_size", str(BATCH)]
        with (WORK / part / f"export-{precision}.log").open("w") as log:
            code = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT).returncode
        if code == 2:  # refused by its parity check: the run's export_report.json keeps the numbers
            return None, json.loads((run / "export_report.json").read_text())[precision]
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} exited {code}")
    return target, json.loads((target / "export_report.json").read_text())


def classifier_part(part: str, script: str, flags: list[str]) -> dict:
    """Rows/s of each runtime on the validation split, through the recipe's trainer, PASSES turns each."""
    import tempfile

    import torch
    import transformers

    from common.cli import recipe_main
    from common.models.runtime import exported_model
    from common.strategies.export import prepared_task, timed_predictions

    run = train(part, script, flags)
    exports = {precision: export(part, run, precision) for precision in ("fp32", "int8")}
    with tempfile.TemporaryDirectory() as scratch:
        task, args = prepared_task(run, json.loads((run / "run_config.json").read_text()), Path(scratch) / "run",
                                   BATCH, recipe_main)
        config = transformers.AutoConfig.from_pretrained(run)
        models = {"PyTorch fp32": getattr(transformers, config.architectures[0]).from_pretrained(run).eval(),
                  "ONNX Runtime fp32": exported_model(exports["fp32"][0]),
                  "ONNX Runtime int8": exported_model(exports["int8"][0])}
        timed_predictions(task, args, models["PyTorch fp32"])  # warm-up: first-call allocations, lazy imports
        speeds: dict[str, list[float]] = {name: [] for name in models}
        metric = f"eval_{task.main_metric}"
        scores = {}
        for _ in range(PASSES):
            for name, model in models.items():
                output, rows_per_s = timed_predictions(task, args, model)
                speeds[name].append(rows_per_s)
                scores[name] = output.metrics[metric]
    rows = []
    base = statistics.median(speeds["PyTorch fp32"])
    for name in models:
        rate = statistics.median(speeds[name])
        rows.append({"runtime": name, "rows_per_s": round(rate, 1), "ratio": round(rate / base, 2),
                     "metric": task.main_metric, "value": scores[name], "passes": [round(s, 1) for s in speeds[name]]})
    return {"part": part, "rows": rows, "validation_rows": len(task.eval_dataset), "threads": torch.get_num_threads(),
            "checks": {p: {k: e[1].get(k) for k in ("metric_drop", "max_metric_drop", "top1_agreement",
                                                    "max_abs_logit_diff", "passed")} for p, e in exports.items()},
            "model_bytes": {p: (e[0] / "model.onnx").stat().st_size for p, e in exports.items()},
            "machine": machine()}  # a part rerun alone may be measured on another host than the others


def op_profile(model_file: Path, texts: list[str], tokenizer) -> dict:
    """ONNX Runtime's own profile of one pass over `texts` (batch 32): kernel seconds per op type, and the share
    of the matrix products (quantized or not)."""
    import collections

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(WORK / "ort_profile")
    session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for start in range(0, len(texts), BATCH):
        batch = tokenizer(texts[start:start + BATCH], padding=True, truncation=True, max_length=128, return_tensors="np")
        session.run(None, {n: batch[n] for n in names})
    trace = Path(session.end_profiling())
    by_op: collections.Counter = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1e6
    trace.unlink()
    total = sum(by_op.values())
    matmul = sum(v for k, v in by_op.items() if "MatMul" in k)
    return {"kernel_s": round(total, 3), "matmul_s": round(matmul, 3), "other_s": round(total - matmul, 3),
            "top_ops": {k: round(v, 3) for k, v in by_op.most_common(6)}}


def part_sst2() -> dict:
    import pandas as pd
    from transformers import AutoTokenizer

    sample = stratified_tsv_sample(data("sst2", "train.tsv"), WORK / "sst2_train_2000.tsv", 2000, seed=0)
    result = classifier_part("sst2", "recipes/sentiment.py", [
        "--config", SST2_CONFIG, "--model_name_or_path", minilm_dir(), "--train_file", str(sample),
        "--validation_file", shared("sst2", "dev.tsv"), "--do_predict", "false"])
    texts = pd.read_csv(shared("sst2", "dev.tsv"), sep="\t", quoting=3)["sentence"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(WORK / "sst2" / "run")
    result["profile"] = {p: op_profile(WORK / "sst2" / p / "model.onnx", texts, tokenizer) for p in ("fp32", "int8")}
    return result


def part_image() -> dict:
    from common.models.tiny import tiny_convnext

    model = WORK / "image" / "tiny-convnext"
    if not (model / "config.json").is_file():
        tiny_convnext(model, image_size=64)
    return classifier_part("image", "recipes/image_classification.py", [
        "--model_name_or_path", str(model), *CLOTHING_DATA, "--num_train_epochs", "5", "--learning_rate", "3e-3",
        "--do_predict", "false"])


def part_speech() -> dict:
    from common.models.tiny import tiny_wav2vec2_ctc

    model = WORK / "speech" / "tiny-wav2vec2"
    if not (model / "config.json").is_file():
        tiny_wav2vec2_ctc(model, hidden_size=64)
    return classifier_part("speech", "recipes/audio_classification.py", [
        "--model_name_or_path", str(model), "--train_file", shared("fsdd", "metadata.csv"), "--audio_column", "file",
        "--label_column", "digit", "--cv_group_column", "speaker", "--validation_split", "0.3",
        "--num_train_epochs", "10", "--learning_rate", "3e-3", "--do_predict", "false"])


def part_translation() -> dict:
    from common.data.parallel import read_lines
    from common.models.tiny import tiny_marian

    model = WORK / "translation" / "tiny-marian"
    if not (model / "config.json").is_file():
        corpus = read_lines(shared("multi30k_en_de", "train.en"), "en") + read_lines(shared("multi30k_en_de", "train.de"), "de")
        tiny_marian(model, corpus, vocab_size=4000, d_model=128)
    run = train("translation", "recipes/translation.py", [
        "--model_name_or_path", str(model), *MULTI30K_DATA, "--max_train_samples", "10000", "--num_train_epochs", "5",
        "--learning_rate", "2e-3", "--per_device_train_batch_size", "64", "--generation_max_length", "64",
        "--max_eval_samples", "300", "--do_predict", "false"])
    exports = {precision: export("translation", run, precision) for precision in ("fp32", "int8")}
    sources = shared("multi30k_en_de", "test_2016_flickr.en")
    outputs, rows = {}, []
    runtimes = [("transformers generate()", ["--runtime", "torch"])] + [
        (f"CTranslate2 {p}", ["--runtime", "onnx", "--export_dir", str(e[0])]) for p, e in exports.items() if e[0]]
    for name, flags in runtimes:
        written = WORK / "translation" / f"{name.split()[0]}-{flags[-1].rsplit('/', 1)[-1]}.tsv"
        written.unlink(missing_ok=True)
        wall = sh([sys.executable, "-m", "common.cli", "predict", str(run), "--input", sources, "--output",
                   str(written), "--batch_size", str(BATCH), *flags], written.with_suffix(".log"))
        outputs[name] = [line.split("\t")[-1] for line in written.read_text(encoding="utf-8").splitlines()[1:]]
        rows.append({"runtime": name, "wall_s": round(wall, 1), "sentences": len(outputs[name])})
    reference = outputs["transformers generate()"]
    for row in rows:
        same = sum(a == b for a, b in zip(reference, outputs[row["runtime"]]))
        row["identical"] = same
        row["ratio"] = round(rows[0]["wall_s"] / row["wall_s"], 2)
    return {"part": "translation", "rows": rows,
            "checks": {p: {k: e[1].get(k) for k in ("metric_drop", "identical_generations", "passed", "max_metric_drop")}
                       | {"bleu_torch": e[1]["torch"]["bleu"], "bleu_exported": e[1]["exported"]["bleu"],
                          "validation_rows": e[1]["validation_rows"], "rows_per_s_torch": e[1]["torch"]["rows_per_s"],
                          "rows_per_s_exported": e[1]["exported"]["rows_per_s"]}
                       for p, e in exports.items()}}


def render(results: dict[str, dict]) -> list[str]:
    lines = [f"<!-- {MARK} -->", "## Export: serving throughput of PyTorch, ONNX Runtime and CTranslate2", "",
             f"Written {datetime.datetime.now():%Y-%m-%d %H:%M} by `python bench/export.py` (models and exports in "
             "`bench/runs/export/`, numbers in `bench/results/export/`), alone on the machine.", "", *machine(), "",
             "Each classifier predicts its validation split through the recipe's trainer, batch 32, in 3 passes per "
             "runtime taken in turns (median pass shown); the ratio is rows/s against PyTorch fp32. The parity check "
             "is the export's own, on the same split.", ""]
    titles = {"sst2": "MiniLM fine-tuned on 2,000 SST-2 sentences: the 872 dev sentences",
              "image": "tiny ConvNeXt (random init, 64 px) on clothing_small: validation images",
              "speech": "tiny wav2vec2 (random init) on FSDD digits: held-out clips"}
    for part, title in titles.items():
        if part not in results:
            continue
        result = results[part]
        lines += [f"### {title} ({result['validation_rows']} rows)", "",
                  "| runtime | rows/s | ratio | " + result["rows"][0]["metric"] + " | model file |", "|---|---:|---:|---:|---:|"]
        for row in result["rows"]:
            precision = row["runtime"].split()[-1]
            size = result["model_bytes"].get(precision) if row["runtime"].startswith("ONNX") else None
            lines.append(f"| {row['runtime']} | {row['rows_per_s']} | {row['ratio']}x | {row['value']:.4f} | "
                         f"{f'{size / 2**20:.1f} MiB' if size else ''} |")
        profile = result.get("profile")
        if profile:
            fp32, int8 = profile["fp32"], profile["int8"]
            lines.append(
                f"\nONNX Runtime's profile of one pass (kernel seconds): fp32 {fp32['kernel_s']} s, of which matrix "
                f"products {fp32['matmul_s']} s; int8 {int8['kernel_s']} s, of which matrix products {int8['matmul_s']} s "
                f"({fp32['matmul_s'] / int8['matmul_s']:.2f}x faster than fp32's) and the rest (layer norms, GELU, "
                f"transposes, masking) {int8['other_s']} s against {fp32['other_s']} s: with int8 products "
                f"{fp32['matmul_s'] / int8['matmul_s']:.2f}x as fast, no model can gain more than that.")
        for precision, check in result["checks"].items():
            lines.append(f"\nExport check ({precision}): drop {check['metric_drop']} points (limit "
                         f"{check['max_metric_drop']}), top-1 agreement {check['top1_agreement']:.4f}, largest logit "
                         f"difference {check['max_abs_logit_diff']:.2g}: {'passed' if check['passed'] else 'refused'}.")
        lines += ["", *other_hosts([{"name": "The rows above", "machine": result.get("machine")}])]
    if "translation" in results:
        result = results["translation"]
        lines += ["### Tiny Marian on Multi30k: the 1,000 test_2016_flickr sentences, greedy", "",
                  "`finetune-recipes predict --runtime torch|onnx`, batch 32, wall time of the whole command (model "
                  "loading included).", "", "| runtime | wall (s) | ratio | translations identical to generate() |",
                  "|---|---:|---:|---:|"]
        for row in result["rows"]:
            lines.append(f"| {row['runtime']} | {row['wall_s']} | {row['ratio']}x | {row['identical']} of {row['sentences']} |")
        for precision, check in result["checks"].items():
            lines.append(f"\nExport check ({precision}, {check['validation_rows']} validation sentences): BLEU "
                         f"{check['bleu_torch']:.2f} (PyTorch) against {check['bleu_exported']:.2f}, a drop of "
                         f"{check['metric_drop']:.2f} (limit {check['max_metric_drop']}); identical generations "
                         f"{check['identical_generations']:.4f}; {check['rows_per_s_torch']} against "
                         f"{check['rows_per_s_exported']} sentences/s: {'passed' if check['passed'] else 'refused, so not measured above'}.")
        lines.append("")
    lines.append(f"<!-- /{MARK} -->")
    return lines


def main() -> None:
    run_parts(__doc__.splitlines()[0], PARTS, RESULTS, MARK, lambda part: globals()[f"part_{part}"](), render)


if __name__ == "__main__":
    main()
