"""`report.html`: one self-contained page per output dir, built from the files the run left there.

The page holds the run's settings (run_config.json), its metrics before and after fine-tuning beside the constant
baseline (all_results.json), the training curves and confusion matrix, the error analysis (errors.csv,
confused_pairs.csv, errors.png), the augmentation preview, and a section per strategy that ran: hyperparameter
search (hpo_results.csv), cross-validation (cv_results.json), ensemble (ensemble_results.json) and comparison
(comparison.json), with links to the reports of their runs; and the parity check of each export
(export_report.json). Images are inlined as data URIs; there is no
script, and a Content-Security-Policy forbids any, so nothing on the page loads or runs anything. jinja2
escapes every string taken from the data.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from common.training.error_analysis import CONFUSED_FILE, ERRORS_FILE, GRID_FILE

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
RUN_CONFIG_FILE = "run_config.json"
PIPELINE_CALL_KWARGS = "pipeline_call_kwargs"  # its key for Task.pipeline_call_kwargs
METRIC_COLUMNS = {"before": "before fine-tuning", "eval": "validation", "test": "test",
                  "heldout_fold": "held-out fold", "baseline_eval": "constant baseline"}
NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "samples")
FIGURES = {"training_curves.png": "Training curves", "confusion_matrix.png": "Confusion matrix (validation)",
           "augment_preview.png": "Augmentation preview: the same training images as the model sees them"}
DATA_OPTIONS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file", "train_dir",
                "validation_dir", "test_dir", "audio_folder", "source_file", "target_file")
TRAINING_SETTINGS = ("num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "weight_decay", "seed", "bf16", "fp16")
SHOWN_ROWS = 50  # rows of a strategy's table on the page; the file beside it has them all

@functools.cache
def _template() -> jinja2.Template:
    """Compiled on the first report, not when a recipe imports the training layer."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,  # every value from the data (texts, labels, file names) reaches the page as text
        undefined=jinja2.StrictUndefined,
    ).get_template("report.html.j2")


def write_run_config(out: Path, config: dict[str, Any]) -> None:
    """run_config.json: which recipe made this output dir, its input columns, every option it ran with and the
    pipeline() call arguments that repeat its predictions (`Task.pipeline_call_kwargs`)."""
    (out / RUN_CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _data_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy scalars, float32 among them, as Python numbers
        value = value.item()
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return value


def _table(frame: pd.DataFrame, rows: int | None = None) -> dict:
    frame = frame.head(rows) if rows else frame
    return {"columns": [str(c) for c in frame.columns],
            "rows": [[_cell(v) for v in row] for row in frame.itertuples(index=False)]}


def _metrics(results: dict) -> tuple[list[str], list[tuple[str, list]]]:
    """One row per metric, one column per stage (before, validation, test, baseline) that has any."""
    names: list[str] = []
    for key, value in results.items():
        for prefix in METRIC_COLUMNS:
            if key.startswith(prefix + "_") and isinstance(value, (int, float)) and not isinstance(value, bool):
                name = key[len(prefix) + 1:]
                if name not in names and not name.endswith(NOT_METRICS):
                    names.append(name)
    stages = [p for p in METRIC_COLUMNS if any(f"{p}_{n}" in results for n in names)]
    rows = [(n, [_cell(results.get(f"{p}_{n}", "")) for p in stages]) for n in sorted(names)]
    return [METRIC_COLUMNS[p] for p in stages], rows


def _settings(config: dict, results: dict) -> list[tuple[str, Any]]:
    options = config.get("options", {})
    settings = [("recipe", config.get("recipe", "")), ("model", config.get("model_name_or_path", ""))]
    settings += [(name, options[name]) for name in DATA_OPTIONS if options.get(name)]
    settings += [(name, options[name]) for name in TRAINING_SETTINGS
                 if name in options and options[name] not in (None, -1, False)]
    settings += [(name, results[name]) for name in ("train_samples", "eval_samples", "train_runtime") if name in results]
    return settings


def _links(out: Path, pattern: str) -> list[tuple[str, str]]:
    return [(path.parent.name, path.relative_to(out).as_posix()) for path in sorted(out.glob(pattern))]


def _budget_section(budget: dict) -> dict:
    """--time_budget: the probe's measurements, the plan and what happened (run_config.json's time_budget)."""
    planned, actual, phases = budget["planned"], budget["actual"], budget["phases"]
    lines = [f"Budget {budget['budget_s']:.0f} s; plan: {budget['strategy']} ({budget['why']}).",
             f"Planned {planned['max_steps']} steps ({planned['epochs']} epochs, batch {planned['batch_size']} x "
             f"{planned['gradient_accumulation_steps']}, {planned['evaluations']} evaluations); trained "
             f"{actual['steps']}{' (stopped by the deadline)' if actual['stopped_by_deadline'] else ''}.",
             "Wall time by phase (s): " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v}"
                                                    for k, v in phases.items()) + "."]
    earlier = actual.get("seeded_runs_before_the_last") or []
    if planned.get("seeded_runs", 1) > 1:
        lines.insert(2, f"{planned['seeded_runs']} seeded runs planned, their final weights averaged; the steps "
                        "above are the last run's. Before it: " + ", ".join(
                            f"seed {r['seed']}: {r['steps']} steps, score {r['score']:.4f}" for r in earlier) + ".")
    if budget.get("kept_as_set"):
        lines.append(f"Kept as set: {', '.join(budget['kept_as_set'])}.")
    columns = {"name": "strategy", "step_s": "s/step", "batch_size": "batch", "eval_rows_per_s": "eval rows/s",
               "peak_memory_gb": "memory GB", "epochs_fit": "epochs that fit", "note": "note"}
    table = pd.DataFrame([{label: c.get(key) for key, label in columns.items()} for c in budget["candidates"]])
    return {"anchor": "budget", "title": "Time budget", "lines": lines, "table": _table(table), "image": None,
            "links": []}


def _export_section(exports: dict) -> dict:
    """finetune-recipes export: each export's parity check on the validation split (export_report.json)."""
    rows = []
    for name, report in exports.items():
        metric = report["main_metric"]
        rows.append({"export": name, "runtime": f"{report['runtime']} {report['precision']}",
                     f"{metric} PyTorch": report["torch"][metric], f"{metric} exported": report["exported"][metric],
                     "drop (points)": report["metric_drop"], "limit": report["max_metric_drop"],
                     "top-1 agreement": report["top1_agreement"],
                     "max |logit diff|": report.get("max_abs_logit_diff"),
                     "rows/s PyTorch": report["torch"]["rows_per_s"], "rows/s exported": report["exported"]["rows_per_s"],
                     "check": "passed" if report["passed"] else "refused"})
    return {"anchor": "export", "title": "Export",
            "lines": [f"The exported model against PyTorch on the {next(iter(exports.values()))['validation_rows']} "
                      "validation rows (export_report.json); a refused export was not written."],
            "table": _table(pd.DataFrame(rows)), "image": None, "links": []}


def _label_issues_section(out: Path) -> dict:
    """label_issues.csv (the top rows) and, after --drop_label_issues, the runs with and without them."""
    table = pd.read_csv(out / "label_issues.csv", keep_default_na=False)
    lines = [f"{len(table)} train rows flagged by confident learning on the out-of-fold probabilities, worst first "
             "(label_issues.csv); the data files are unchanged."]
    comparison = _read_json(out / "label_issues_results.json")
    if comparison:
        metric = comparison["main_metric"]
        lines += [f"{run} ({result['train_rows']} train rows): validation {metric} {result.get('eval_' + metric)}"
                  for run, result in comparison["runs"].items()]
        lines.append(f"Dropped {len(comparison['dropped_rows'])} of the {comparison['flagged']} flagged rows.")
    return {"anchor": "label-issues", "title": "Label issues", "lines": lines, "table": _table(table, 20),
            "image": _data_uri(out / "label_issues.png"), "links": _links(out, "*/" + REPORT_FILE)
            if comparison else []}


def _sections(out: Path, config: dict) -> list[dict]:
    """One per strategy whose results are in the output dir (or, for a time budget, in its run_config.json)."""
    sections = []
    budget = config.get("time_budget")
    if budget:
        sections.append(_budget_section(budget))
    if (out / "label_issues.csv").is_file():
        sections.append(_label_issues_section(out))
    exports = _read_json(out / "export_report.json")
    if exports:
        sections.append(_export_section(exports))
    if (out / "hpo_results.csv").is_file():
        trials = pd.read_csv(out / "hpo_results.csv")
        sections.append({"anchor": "hpo", "title": "Hyperparameter search",
                         "lines": [f"{len(trials)} trials (hpo_results.csv); the model above was retrained with the best."],
                         "table": _table(trials, SHOWN_ROWS), "image": _data_uri(out / "hpo.png"), "links": []})
    cv = _read_json(out / "cv_results.json")
    if cv:
        metric = cv.get("main_metric", "")
        held = cv.get("heldout", {}).get(metric)
        lines = [f"{cv.get('k')}-fold cross-validation (cv_results.json)."]
        if held:
            lines.append(f"Held-out {metric}: {held['mean']:.4f} ± {held['std']:.4f} (mean ± sample std over folds).")
        folds = pd.DataFrame([{"fold": f["fold"], "train rows": f["train_rows"], "held-out rows": f["heldout_rows"],
                               **{f"held-out {k}": v for k, v in f["heldout"].items()}} for f in cv.get("folds", [])])
        sections.append({"anchor": "cv", "title": "Cross-validation", "lines": lines,
                         "table": _table(folds) if len(folds) else None, "image": _data_uri(out / "cv.png"),
                         "links": _links(out, "fold_*/" + REPORT_FILE)})
    ensemble = _read_json(out / "ensemble_results.json")
    if ensemble:
        metric = ensemble.get("main_metric", "")
        rows = []
        for split in ("eval", "test"):
            if split in ensemble:
                part = ensemble[split]
                rows += [{"split": split, "model": name, metric: m.get(metric)} for name, m in part["members"].items()]
                rows += [{"split": split, "model": "member mean", metric: part["member_mean"].get(metric)},
                         {"split": split, "model": f"ensemble ({ensemble['method']})", metric: part["ensemble"].get(metric)}]
        sections.append({"anchor": "ensemble", "title": f"Ensemble: {ensemble.get('method')}",
                         "lines": [f"Members: {', '.join(map(str, ensemble.get('members', [])))} (ensemble_results.json)."],
                         "table": _table(pd.DataFrame(rows)) if rows else None,
                         "image": _data_uri(out / "ensemble.png"), "links": []})
    comparison = _read_json(out / "comparison.json")
    if comparison:
        runs = comparison.get("runs", {})
        keys = sorted({k for run in runs.values() for k in run if k.startswith(("eval_", "test_", "before_"))
                       and not k.endswith(NOT_METRICS)})
        table = pd.DataFrame([{"metric": k, **{name: run.get(k) for name, run in runs.items()}} for k in keys])
        sections.append({"anchor": "comparison", "title": "Pretrained against from scratch",
                         "lines": ["The same command, pretrained and from scratch (comparison.json)."],
                         "table": _table(table) if len(table) else None, "image": _data_uri(out / "comparison.png"),
                         "links": _links(out, "*/" + REPORT_FILE)})
    return sections


def write_html_report(out: str | Path, title: str | None = None) -> Path:
    """Render report.html from what `out` holds now; returns its path."""
    out = Path(out)
    config = _read_json(out / RUN_CONFIG_FILE)
    results = _read_json(out / "all_results.json")
    columns, metrics = _metrics(results)
    errors = None
    if (out / ERRORS_FILE).is_file():
        confused = out / CONFUSED_FILE
        errors = {"description": results.get("error_analysis", "the validation rows the model got most wrong"),
                  "table": _table(pd.read_csv(out / ERRORS_FILE, keep_default_na=False)),
                  "confused": _table(pd.read_csv(confused, keep_default_na=False)) if confused.is_file() else None,
                  "grid": _data_uri(out / GRID_FILE)}
    figures = [{"title": caption, "uri": uri} for name, caption in FIGURES.items()
               if (uri := _data_uri(out / name)) is not None]
    page = _template().render(
        title=title or f"{config.get('recipe', 'Run').replace('_', ' ')}: {out.name}",
        subtitle=f"Output dir {out.resolve()}",
        warning=results.get("degenerate_reason") and f"Degenerate run: {results['degenerate_reason']}.",
        settings=_settings(config, results) if config or results else [],
        all_options=sorted(config.get("options", {}).items()),
        metric_columns=columns, metrics=metrics,
        baseline=results.get("baseline_description"),
        figures=figures, errors=errors, sections=_sections(out, config),
    )
    path = out / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
