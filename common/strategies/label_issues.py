"""Label issues: the train rows whose given label is most likely wrong, found by cleanlab's confident learning on
the out-of-fold class probabilities that `--cv_folds K` writes; and, with `--drop_label_issues`, the same model
trained on every train row and on them less the flagged ones, side by side on the validation split.

- `--cv_folds K --find_label_issues` (or `finetune-recipes label-issues OUTPUT_DIR` on a finished CV run) writes
  `label_issues.csv`: every train row cleanlab flags, worst first, with its file row, its input (text, image or
  audio path, as oof_predictions.parquet holds it), the given label, the suggested one (the out-of-fold argmax),
  cleanlab's label-quality score (self-confidence: the out-of-fold probability of the given label) and the rank.
  The report gets a section with the top rows, and for images a captioned grid.
- Single-label classification only. Multi-label sets, regression and per-token labels are refused with a message:
  for each, the out-of-fold file holds no per-class probabilities of one label per row.
- `--drop_label_issues N|FRACTION|all` trains two more models on the whole train split: `all_rows/` on every row,
  `cleaned/` without the N worst flagged rows (a FRACTION of the train rows, or every flagged one). Validation and
  test are never cleaned, and the user's files are never changed; label_issues_results.json and the report put
  the two runs side by side.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.core.errors import RecipeInputError
from common.data.labels import SINGLE
from common.training.html_report import write_html_report
from common.training.reliability import carry_run_record
from common.training.reporting import write_json
from common.training.single_run import train_evaluate_predict

logger = logging.getLogger(__name__)

OOF_FILE = "oof_predictions.parquet"
LABEL_ISSUES_FILE = "label_issues.csv"
RESULTS_FILE = "label_issues_results.json"
GRID_FILE = "label_issues.png"
GRID_ROWS = 16
IMAGE = "image"  # the input column of image recipes' Task.train_inputs: file paths


@dataclass
class LabelIssueArguments:
    find_label_issues: bool = field(
        default=False,
        metadata={"help": "With --cv_folds K: rank the train rows whose label is most likely wrong (cleanlab's "
                          "confident learning on the out-of-fold probabilities) into label_issues.csv."},
    )
    drop_label_issues: str | None = field(
        default=None,
        metadata={"help": "With --cv_folds K: also train on every train row (all_rows/) and without the flagged rows "
                          "(cleaned/): N of them, worst first, a FRACTION of the train rows, or 'all' flagged; both "
                          "are scored on the same validation split."},
    )

    def check(self) -> None:
        if (self.find_label_issues or self.drop_label_issues) and not getattr(self, "cv_folds", 0):
            raise RecipeInputError("--find_label_issues and --drop_label_issues need --cv_folds K: the rows are judged "
                                   "by out-of-fold predictions, which a model never made on its own training rows.")
        if self.drop_label_issues is not None:
            drop_count(self.drop_label_issues, 100, 100)  # the value's form, checked before anything trains
        if getattr(self, "cv_fold_index", None) is not None and (self.find_label_issues or self.drop_label_issues):
            raise RecipeInputError("--find_label_issues with --cv_fold_index: a fold job sees one fold; run "
                                   "`finetune-recipes cv-merge OUTPUT_DIR`, then `finetune-recipes label-issues OUTPUT_DIR`.")


def check_label_issue_options(task, finetune_args: LabelIssueArguments) -> None:
    """Refuse label issues for a task without single-label classes before anything trains."""
    if not (finetune_args.find_label_issues or finetune_args.drop_label_issues):
        return
    spec = task.label_spec
    if spec is None or spec.problem_type != SINGLE:
        kind = "texts, tags or spans, not a class per row" if spec is None else spec.problem_type
        raise RecipeInputError(f"--find_label_issues: the {task.name} recipe's labels are {kind}; label issues are "
                               "found among classes of one label per row (single-label classification).")


def drop_count(value: str, flagged: int, train_rows: int) -> int:
    """How many flagged rows --drop_label_issues drops: N, a FRACTION (0-1) of the train rows, or all flagged."""
    text = str(value).strip().lower()
    try:
        if text == "all":
            return flagged
        number = float(text)
    except ValueError:
        number = -1.0
    if number >= 1 and number.is_integer():
        return min(int(number), flagged)
    if 0 < number < 1:
        return min(round(number * train_rows), flagged)
    raise RecipeInputError(f"--drop_label_issues {value}: give a number of rows (e.g. 100), a fraction of the train "
                           "rows (e.g. 0.05), or all.")


def find_label_issues(out: Path, write: bool = True) -> pd.DataFrame:
    """cleanlab's flagged rows of the out-of-fold predictions in `out`, worst first (written to label_issues.csv)."""
    from cleanlab.filter import find_label_issues as flag
    from cleanlab.rank import get_label_quality_scores

    path = out / OOF_FILE
    if not path.is_file():
        raise RecipeInputError(f"{out} holds no {OOF_FILE}: find label issues in the output dir of a --cv_folds K run "
                               "of single-label classification.")
    oof = pd.read_parquet(path)
    score_columns = [c for c in oof.columns if c.startswith("score_")]
    if "label_id" not in oof.columns or not score_columns or oof["label_id"].map(np.ndim).any():
        raise RecipeInputError(f"{path} is not single-label classification: label issues are found among classes of "
                               "one label per row (multi-label sets, regression values and per-token tags are not).")
    labels = oof["label_id"].to_numpy(dtype=np.int64)
    probabilities = oof[score_columns].to_numpy(dtype=np.float64)
    missing = sorted(set(range(probabilities.shape[1])) - set(labels))
    if missing:
        raise RecipeInputError(f"{path}: classes {[score_columns[i].removeprefix('score_') for i in missing]} have no "
                               "train row; confident learning needs every class among the given labels.")
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    # n_jobs=1: cleanlab's default forks a multiprocessing pool from this process, whose torch and gloo threads
    # can leave a lock held in the child, which then hangs; one process takes milliseconds at this size.
    flagged = flag(labels, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    names = [c.removeprefix("score_") for c in score_columns]
    inputs = [c for c in oof.columns if c.startswith("input_")]
    table = pd.DataFrame({"row": oof["row"], **{c.removeprefix("input_"): oof[c] for c in inputs},
                          "given_label": oof["label"], "suggested_label": [names[i] for i in probabilities.argmax(1)],
                          "label_quality": quality, "flagged": flagged})
    table = table.sort_values(["flagged", "label_quality"], ascending=[False, True], kind="stable")
    table = table[table["flagged"]].drop(columns="flagged").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    if not write:
        return table
    table.to_csv(out / LABEL_ISSUES_FILE, index=False)
    logger.info("label issues: %d of %d train rows flagged (%s); worst: %s", len(table), len(oof), LABEL_ISSUES_FILE,
                "; ".join(f"row {r.row} given {r.given_label!r}, suggested {r.suggested_label!r}"
                          for r in table.head(3).itertuples()))
    return table


def draw_grid(out: Path, table: pd.DataFrame) -> None:
    """For image inputs (an `image` column of file paths): the top flagged images, captioned with the given and
    the suggested label (label_issues.png)."""
    from PIL import Image

    from common.training.reporting import plot_image_grid

    top = table.head(GRID_ROWS)
    if IMAGE not in top.columns or not len(top) or not all(Path(str(p)).is_file() for p in top[IMAGE]):
        return
    images = [Image.open(path).convert("RGB") for path in top[IMAGE]]
    captions = [f"row {r.row}: {r.given_label} -> {r.suggested_label} ({r.label_quality:.2f})" for r in top.itertuples()]
    plot_image_grid(images, captions, f"Most likely mislabeled train images ({len(top)})", out / GRID_FILE)


def run_label_issues(task, args, finetune_args: LabelIssueArguments) -> dict[str, Any]:
    """After a CV run: label_issues.csv; with --drop_label_issues, the train split with and without the flagged rows."""
    out, main = Path(args.output_dir), args.process_index == 0
    # The main process wrote the out-of-fold predictions; under DDP the others read them after it, so that every
    # process drops the same rows.
    with args.main_process_first(desc="label issues"):
        table = find_label_issues(out, write=main)
    if main:
        draw_grid(out, table)
    results: dict[str, Any] = {"label_issues_flagged": len(table)}
    if finetune_args.drop_label_issues is None:
        return results
    flagged_rows = table["row"].to_numpy()
    source_rows = np.arange(len(task.train_dataset)) if task.source_rows is None else np.asarray(task.source_rows)
    dropped = flagged_rows[:drop_count(finetune_args.drop_label_issues, len(flagged_rows), len(source_rows))]
    keep = np.flatnonzero(~np.isin(source_rows, dropped))
    runs = {}
    for name, rows in (("all_rows", np.arange(len(source_rows))), ("cleaned", keep)):
        subset = dataclasses.replace(task, train_dataset=task.train_dataset.select(rows), train_inputs=None,
                                     source_rows=source_rows[rows].tolist(), stratify=None, groups=None)
        run_args = dataclasses.replace(args, output_dir=str(out / name), do_train=True, resume_from_checkpoint=None)
        carry_run_record(args, run_args)  # its run_config.json records the options: predict and export read them
        runs[name] = {"train_rows": int(len(rows)), **train_evaluate_predict(subset, run_args, finetune_args)}
    metric = f"eval_{task.main_metric}"
    summary = {"dropped_rows": dropped.tolist(), "flagged": int(len(flagged_rows)), "main_metric": task.main_metric,
               "runs": {name: {k: v for k, v in run.items() if k == "train_rows" or k.startswith(("eval_", "test_"))}
                        for name, run in runs.items()}}
    if main:
        write_json(out / RESULTS_FILE, summary)
        logger.info("--drop_label_issues: %s %s on all %d train rows, %s without the %d dropped", metric,
                    runs["all_rows"].get(metric), runs["all_rows"]["train_rows"], runs["cleaned"].get(metric), len(dropped))
    results.update({f"all_rows_{metric}": runs["all_rows"].get(metric), f"cleaned_{metric}": runs["cleaned"].get(metric),
                    "label_issues_dropped": len(dropped)})
    return results


def label_issues_command(output_dir: str) -> pd.DataFrame:
    """`finetune-recipes label-issues OUTPUT_DIR`: label_issues.csv (and the report's section) from a finished CV run."""
    out = Path(output_dir)
    table = find_label_issues(out)
    draw_grid(out, table)
    if (out / "report.html").is_file():
        write_html_report(out)
    return table
