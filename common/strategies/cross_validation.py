"""k-fold cross-validation over the train split, with out-of-fold predictions and one model per fold.

Folds are stratified on the labels for single-label classification (`Task.stratify`), grouped when the
recipe passes `Task.groups` (--cv_group_column: rows of one group never span folds), both when both are
given, plain shuffled k-fold otherwise; every splitter is seeded with --seed. Each fold trains a fresh
model from the same start (`Task.model_init`, so freezing, PEFT and augmentation apply as in any run),
evaluates on the validation split, and predicts its held-out fold: the held-out fold is the fold's test
split, so the whole existing train/evaluate/predict flow runs unchanged. When the task has no validation
split, the held-out fold serves as the per-epoch evaluation too.

The output dir gets `fold_k/` (a complete model dir per fold), `cv_results.json` (metrics per fold,
mean and sample std, and metrics of the pooled out-of-fold predictions), `cv.png` and, for
classification and regression, `oof_predictions.parquet`: one line per train row with `row` (its 0-based
data row in the train file, header excluded, as `load_splits` read it: the recipe numbers the rows before bad
rows are dropped, validation is held out or samples are drawn, and passes them as `Task.source_rows`), `fold`,
`label` and `prediction` (both class names, so `(label == prediction).mean()` is the out-of-fold accuracy;
integer labels without --class_names stay integers, as in the file), `label_id` and one score column per
class. Under several processes every process trains every fold; only the main one writes files.

Folds as independent jobs: `--cv_folds K --cv_fold_index i` trains fold i alone into `OUTPUT_DIR/fold_i/`, with
its held-out and validation/test predictions and the run's fingerprint (cv_fold.json, cv_fold.npz). Run the K
jobs anywhere (a SLURM array, several GPUs), then `finetune-recipes cv-merge OUTPUT_DIR [--ensemble METHOD]`
checks that all K folds are there and were made with the same data and options, and writes what a single-job
run writes: cv_results.json, oof_predictions.parquet, cv.png and the ensemble's outputs, with the same numbers.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from transformers import TrainingArguments
from transformers.trainer_utils import PredictionOutput

from common.core.errors import RecipeInputError
from common.data.labels import MULTI, REGRESSION, LabelSpec
from common.strategies.ensembling import (
    Ensemble,
    check_method,
    ensemble_splits,
    logits_from_scores,
    member_scores,
    report_ensemble,
    run_ensemble,
)
from common.training.html_report import (
    PIPELINE_CALL_KWARGS,
    RUN_CONFIG_FILE,
    write_html_report,
    write_run_config,
)
from common.training.metrics import (
    first_output,
    predictions_from_scores,
    score_predictions,
    scores_from_logits,
)
from common.training.reliability import RUN_RECORD_ATTR, compare_fingerprints
from common.training.reporting import plot_bars, write_classification_predictions, write_json
from common.training.single_run import train_evaluate_predict

logger = logging.getLogger(__name__)


@dataclass
class CrossValidationArguments:
    cv_folds: int = field(default=0, metadata={"help": "k-fold cross-validation over train; 0 = off."})
    cv_group_column: str | None = field(default=None, metadata={"help": "Column whose groups never span folds."})
    cv_fold_index: int | None = field(
        default=None,
        metadata={"help": "Train only fold i (0-based) of --cv_folds, into OUTPUT_DIR/fold_i, as one of K independent "
                          "jobs; `finetune-recipes cv-merge OUTPUT_DIR` then combines them."},
    )

    def check(self) -> None:
        if self.cv_fold_index is None:
            return
        if not self.cv_folds:
            raise RecipeInputError("--cv_fold_index needs --cv_folds K: which of K folds this job trains.")
        if not 0 <= self.cv_fold_index < self.cv_folds:
            raise RecipeInputError(f"--cv_fold_index {self.cv_fold_index}: folds are numbered 0 to {self.cv_folds - 1}.")
        if getattr(self, "ensemble", None):
            raise RecipeInputError("--ensemble with --cv_fold_index: a fold job trains one member; ensemble the folds "
                                   f"with `finetune-recipes cv-merge OUTPUT_DIR --ensemble {self.ensemble}`.")

    @staticmethod
    def policies(options: dict[str, Any]) -> None:
        # Each fold job owns OUTPUT_DIR/fold_i: the guard against writing into an earlier run, and the lock, apply
        # to that folder, so K jobs share OUTPUT_DIR.
        if options.get("cv_fold_index") is not None and options.get("cv_folds") and options.get("output_dir"):
            options["output_dir"] = str(Path(options["output_dir"]) / f"fold_{options['cv_fold_index']}")

# The metrics of a fold's held-out rows, in its results and report: never test_*, which name the test split's.
HELDOUT_PREFIX = "heldout_fold"


def fold_indices(
    n_rows: int, folds: int, seed: int, stratify: Sequence | None = None, groups: Sequence | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) per fold, from the sklearn splitter that fits the labels and groups."""

    if folds < 2:
        raise RecipeInputError(f"--cv_folds {folds}: cross-validation needs at least 2 folds.")
    if folds > n_rows:
        raise RecipeInputError(f"--cv_folds {folds} is more than the {n_rows} training rows.")
    if groups is not None:
        if len(groups) != n_rows:
            raise RecipeInputError(f"--cv_group_column has {len(groups)} values for {n_rows} training rows.")
        distinct = len({str(g) for g in groups})
        if distinct < folds:
            raise RecipeInputError(
                f"--cv_group_column has {distinct} distinct groups, fewer than --cv_folds {folds}: every fold needs "
                "a group of its own. Lower --cv_folds or choose a finer group column."
            )
        groups = [str(g) for g in groups]
    if stratify is not None:
        stratify = [str(v) for v in stratify]
        smallest = min(np.unique(stratify, return_counts=True)[1])
        if smallest < folds:
            logger.warning("a class has only %d rows, fewer than the %d folds: some folds miss it", smallest, folds)
    if groups is not None and stratify is not None:
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    elif groups is not None:
        splitter = GroupKFold(folds, shuffle=True, random_state=seed)
    elif stratify is not None:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    logger.info("%d-fold cross-validation with %s", folds, type(splitter).__name__)
    try:
        return list(splitter.split(np.zeros(n_rows), stratify, groups))
    except ValueError as err:
        raise RecipeInputError(f"cannot split {n_rows} training rows into {folds} folds: {err}") from None


def _split_metrics(results: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k[len(prefix) + 1:]: v for k, v in results.items()
        if k.startswith(f"{prefix}_") and not k.endswith(("_runtime", "_per_second", "_samples", "_time"))
    }


def _summary(folds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of every metric present in all folds."""
    keys = [k for k in folds[0] if all(k in f for f in folds)]
    return {k: {"mean": float(np.mean([f[k] for f in folds])), "std": float(np.std([f[k] for f in folds], ddof=1))}
            for k in keys}


def run_cross_validation(task, args: TrainingArguments, finetune_args: CrossValidationArguments) -> dict[str, float]:
    """Train one model per fold; write cv_results.json, cv.png, oof_predictions.parquet; ensemble if asked.

    `finetune_args` holds the whole toolkit's options: each fold trains with them, and --ensemble combines
    the folds."""
    if task.train_dataset is None:
        raise RecipeInputError("--cv_folds needs a training split.")
    if finetune_args.cv_group_column and task.groups is None:
        raise RecipeInputError(f"--cv_group_column {finetune_args.cv_group_column}: the {task.name} recipe does not "
                               "pass groups for cross-validation.")
    train = task.train_dataset
    source_rows = np.arange(len(train)) if task.source_rows is None else np.asarray(task.source_rows)
    if len(source_rows) != len(train):
        raise ValueError(f"Task.source_rows has {len(source_rows)} entries for {len(train)} train rows.")
    splits = fold_indices(len(train), finetune_args.cv_folds, args.seed, task.stratify, task.groups)
    if finetune_args.cv_fold_index is not None:
        return train_fold_job(task, args, finetune_args, splits, source_rows)
    out = Path(args.output_dir)
    main = args.process_index == 0
    spec = task.label_spec  # out-of-fold scores only for classification and regression
    labels = np.asarray(train["labels"]) if spec is not None else None
    oof_scores: np.ndarray | None = None
    fold_of = np.full(len(train), -1)
    per_fold: list[dict] = []
    for k, (train_rows, held_rows) in enumerate(splits):
        record, scores = _train_fold(task, args, finetune_args, k, train_rows, held_rows, out / f"fold_{k}")
        per_fold.append(record)
        if main and scores is not None:
            if oof_scores is None:
                oof_scores = np.zeros((len(train), *scores.shape[1:]), dtype=np.float64)
            oof_scores[held_rows] = scores
            fold_of[held_rows] = k
        gc.collect()  # the fold's trainer and model are gone; free them before the next fold loads its own

    results = {}
    if main:
        inputs = task.train_inputs() if task.train_inputs is not None else None
        oof_metrics = (write_oof_predictions(spec, oof_scores, labels, fold_of, out, source_rows, inputs)
                       if spec is not None else {})
        results = write_cv_results(task.main_metric, per_fold, oof_metrics, out)
    if finetune_args.ensemble:
        members = [str(out / f"fold_{k}") for k in range(len(splits))]
        results.update(run_ensemble(task, args, finetune_args, members, oof_scores=oof_scores, oof_labels=labels))
    return results


def _train_fold(task, args: TrainingArguments, finetune_args, k: int, train_rows: np.ndarray, held_rows: np.ndarray,
                fold_dir: Path) -> tuple[dict, np.ndarray | None]:
    """Train fold k into fold_dir: its record for cv_results.json, and its held-out scores (classification and
    regression; on the main process)."""
    train = task.train_dataset
    logger.info("fold %d: train on %d rows, hold out %d", k, len(train_rows), len(held_rows))
    held_out = train.select(held_rows)
    captured = {}
    fold_task = dataclasses.replace(
        task,
        train_dataset=train.select(train_rows),
        eval_dataset=task.eval_dataset if task.eval_dataset is not None else held_out,
        test_dataset=held_out,
        # The recipe's error analysis shows its validation rows; a held-out fold in their place has others.
        error_analysis=task.error_analysis if task.eval_dataset is not None else None,
        write_predictions=lambda output, _dir: captured.update(output=output),
    )
    fold_args = dataclasses.replace(args, output_dir=str(fold_dir), do_train=True, do_predict=True,
                                    resume_from_checkpoint=None)
    record = getattr(args, RUN_RECORD_ATTR, None)
    if record is not None:  # the fold's run_config.json and report show the run's options; a fold never resumes
        setattr(fold_args, RUN_RECORD_ATTR, dataclasses.replace(record, resumed=None))
    results = train_evaluate_predict(fold_task, fold_args, finetune_args, test_prefix=HELDOUT_PREFIX)
    record = {"fold": k, "train_rows": len(train_rows), "heldout_rows": len(held_rows),
              "heldout": _split_metrics(results, HELDOUT_PREFIX), "eval": _split_metrics(results, "eval")}
    if args.process_index != 0 or task.label_spec is None:
        return record, None
    return record, scores_from_logits(first_output(captured["output"].predictions), task.label_spec.problem_type)


FOLD_RECORD, FOLD_ARRAYS = "cv_fold.json", "cv_fold.npz"
# Options that differ between the K jobs of one cross-validation by design.
PER_JOB_OPTIONS = ("cv_fold_index", "output_dir", "overwrite_output_dir", "resume_from_checkpoint")


def train_fold_job(task, args: TrainingArguments, finetune_args, splits, source_rows: np.ndarray) -> dict[str, float]:
    """--cv_fold_index i: fold i alone, into the output dir (OUTPUT_DIR/fold_i), plus what cv-merge needs: the
    held-out scores, this member's scores on the validation and test splits, and the run's fingerprint."""
    k = finetune_args.cv_fold_index
    train_rows, held_rows = splits[k]
    fold_dir = Path(args.output_dir)
    record, held_scores = _train_fold(task, args, finetune_args, k, train_rows, held_rows, fold_dir)
    spec = task.label_spec
    arrays: dict[str, np.ndarray] = {"held_rows": held_rows}
    if spec is not None:
        scored = ensemble_splits(task, args)  # as an ensemble of the folds scores its members, from the saved model
        member, labels = member_scores(task, args, finetune_args, [str(fold_dir)], scored)
        for split in scored:
            arrays[f"{split}_scores"] = member[split][0]
            if split in labels:
                arrays[f"{split}_labels"] = labels[split]
        if args.process_index == 0:
            arrays["held_scores"] = held_scores
            arrays["held_labels"] = np.asarray(task.train_dataset.select(held_rows)["labels"])
            if "test" in scored and task.write_predictions is not None:  # this member's test predictions, inputs too
                task.write_predictions(PredictionOutput(logits_from_scores(member["test"][0], spec.problem_type),
                                                        None, {}), fold_dir)
    if args.process_index != 0:
        return {}
    np.savez(fold_dir / FOLD_ARRAYS, **arrays)
    fingerprint = getattr(args, RUN_RECORD_ATTR).fingerprint
    options = {k: v for k, v in fingerprint["options"].items() if k not in PER_JOB_OPTIONS}
    write_json(fold_dir / FOLD_RECORD, {
        "fold": k, "folds": len(splits), "record": record, "train_rows": len(task.train_dataset),
        "source_rows": np.asarray(source_rows)[held_rows].tolist(), "main_metric": task.main_metric,
        "inputs": {c: [values[i] for i in held_rows] for c, values in
                   (task.train_inputs() if task.train_inputs is not None else {}).items()},
        "pipeline_task": task.pipeline_task, "seed": args.seed,
        # Label values as the data holds them (ints stay ints), so the merged oof labels read as a single run's.
        "label_spec": {**dataclasses.asdict(spec), "values": None if spec.values is None else
                       [v.item() if isinstance(v, np.generic) else v for v in spec.values]} if spec is not None else None,
        "fingerprint": {**fingerprint, "options": options},
    })
    logger.info("fold %d of %d written to %s; when every fold is done: finetune-recipes cv-merge %s", k, len(splits),
                fold_dir, fold_dir.parent)
    return {f"{HELDOUT_PREFIX}_{key}": value for key, value in record["heldout"].items()}


def merge_folds(output_dir: str, method: str | None = None) -> dict[str, float]:
    """cv-merge: the K fold jobs' results combined, as a single-job --cv_folds K [--ensemble METHOD] run writes them."""
    out = Path(output_dir)
    found = {}
    for path in sorted(out.glob(f"fold_*/{FOLD_RECORD}")):
        saved = json.loads(path.read_text(encoding="utf-8"))
        found[saved["fold"]] = saved
    if not found:
        raise RecipeInputError(f"{out} holds no fold_*/{FOLD_RECORD}: train each fold first with --cv_folds K "
                               f"--cv_fold_index i --output_dir {out}.")
    first = found[min(found)]
    folds = first["folds"]
    missing = [i for i in range(folds) if i not in found]
    if missing:
        raise RecipeInputError(f"{out}: {', '.join(f'fold_{i}' for i in missing)} of {folds} missing (no {FOLD_RECORD}"
                               f"); run --cv_fold_index {' / '.join(map(str, missing))} first, or wait for those jobs.")
    for i in range(folds):
        saved = found[i]
        if saved["folds"] != folds:
            raise RecipeInputError(f"{out}/fold_{i} is fold {i} of {saved['folds']}, the others of {folds}.")
        changes = compare_fingerprints(first["fingerprint"], saved["fingerprint"])
        if changes:
            raise RecipeInputError(f"{out}/fold_{i} was trained with other data or options than fold_{min(found)}: "
                                   f"{'; '.join(changes)}. Rerun it with the same command.")
    arrays = [np.load(out / f"fold_{i}" / FOLD_ARRAYS) for i in range(folds)]
    spec = LabelSpec(**first["label_spec"]) if first["label_spec"] else None
    per_fold = [found[i]["record"] for i in range(folds)]
    results: dict[str, float] = {}
    oof_scores = labels = None
    if spec is not None:
        n = first["train_rows"]
        oof_scores = np.zeros((n, *arrays[0]["held_scores"].shape[1:]), dtype=np.float64)
        labels = np.zeros((n, *arrays[0]["held_labels"].shape[1:]), dtype=arrays[0]["held_labels"].dtype)
        fold_of, rows = np.full(n, -1), np.zeros(n, dtype=np.int64)
        inputs: dict[str, list] = {c: [None] * n for c in first.get("inputs", {})}
        for i, fold in enumerate(arrays):
            held = fold["held_rows"]
            oof_scores[held], labels[held], fold_of[held] = fold["held_scores"], fold["held_labels"], i
            rows[held] = found[i]["source_rows"]
            for column, values in found[i].get("inputs", {}).items():
                for row, value in zip(held, values):
                    inputs[column][row] = value
        oof_metrics = write_oof_predictions(spec, oof_scores, labels, fold_of, out, rows, inputs or None)
        results.update(write_cv_results(first["main_metric"], per_fold, oof_metrics, out))
    else:
        results.update(write_cv_results(first["main_metric"], per_fold, {}, out))
    if method:
        results.update(_merge_ensemble(out, method, spec, first, arrays, oof_scores, labels))
    config = json.loads((out / "fold_0" / RUN_CONFIG_FILE).read_text(encoding="utf-8"))
    config["options"] = {**first["fingerprint"]["options"], "ensemble": method}
    write_run_config(out, config)
    write_html_report(out)
    logger.info("merged %d folds into %s", folds, out)
    return results


def _merge_ensemble(out: Path, method: str, spec, first: dict, arrays: list, oof_scores, labels) -> dict[str, float]:
    if spec is None:
        raise RecipeInputError(f"cv-merge --ensemble combines classification and regression folds, not "
                               f"{first['pipeline_task']}: run the recipe with --ensemble soft_vote --ensemble_models "
                               f"{out}/fold_0 {out}/fold_1 ...")
    check_method(method, spec.problem_type)
    members = [str(out / f"fold_{i}") for i in range(len(arrays))]
    recorded = json.loads((out / "fold_0" / RUN_CONFIG_FILE).read_text(encoding="utf-8")).get(PIPELINE_CALL_KWARGS)
    ensemble = Ensemble(method, members, spec.problem_type, spec.names, first["pipeline_task"],
                        pipeline_call_kwargs=recorded)
    splits = [split for split in ("eval", "test") if f"{split}_scores" in arrays[0]]
    scores = {split: np.stack([fold[f"{split}_scores"] for fold in arrays]) for split in splits}
    truth = {split: arrays[0][f"{split}_labels"] for split in splits if f"{split}_labels" in arrays[0]}
    inputs = out / "fold_0" / "predictions.csv"  # fold 0's test predictions: their input columns

    def write_test(combined: np.ndarray) -> None:
        table = pd.read_csv(inputs, dtype=str, keep_default_na=False)
        columns = list(table.columns[: list(table.columns).index("prediction")])
        write_classification_predictions(out / "predictions.csv", {c: table[c].tolist() for c in columns}, combined,
                                         spec.problem_type, spec.names)

    return report_ensemble(ensemble, scores, truth, first["main_metric"], out,
                           write_test if inputs.is_file() else None, oof_scores, labels, first["seed"])


def oof_class_names(spec) -> list:
    """What `label` and `prediction` hold per class id: its name; for integer labels without --class_names,
    whose names are those integers as text, the integers themselves, so they compare equal to the file's."""
    return list(spec.values) if spec.from_ids and spec.values is not None else list(spec.names)


def write_oof_predictions(spec, scores: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, out: Path,
                          rows: np.ndarray, inputs: dict[str, list] | None = None) -> dict[str, float]:
    """oof_predictions.parquet: row (in the train file), the inputs (`Task.train_inputs`, as input_<column>), fold,
    label, prediction, label_id, per-class scores; returns the pooled metrics. `label` and `prediction` are in the
    same terms, class names."""

    table = pd.DataFrame({"row": rows, **{f"input_{k}": list(v) for k, v in (inputs or {}).items()}, "fold": fold_of})
    if spec.problem_type == REGRESSION:
        table["label"] = np.asarray(labels, dtype=np.float64).reshape(-1)
        table["prediction"] = scores.reshape(-1)
    else:
        names = oof_class_names(spec)
        predicted = predictions_from_scores(scores, spec.problem_type)
        if spec.problem_type == MULTI:  # label sets: lists of names and of ids
            label_ids = [np.flatnonzero(hot).tolist() for hot in labels]
            table["label"] = [[names[i] for i in ids] for ids in label_ids]
            table["prediction"] = [[names[i] for i in np.flatnonzero(hot)] for hot in predicted]
            table["label_id"] = label_ids
        else:
            ids = np.asarray(labels, dtype=np.int64)
            table["label"] = [names[i] for i in ids]
            table["prediction"] = [names[i] for i in predicted]
            table["label_id"] = ids
        for i, name in enumerate(spec.names):
            table[f"score_{name}"] = scores[:, i]
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "oof_predictions.parquet", index=False)
    return score_predictions(labels, scores, spec.problem_type)


def write_cv_results(main_metric: str, per_fold: list[dict], oof_metrics: dict[str, float],
                     out: Path) -> dict[str, float]:
    """cv_results.json and cv.png; returns the mean and std of every metric as flat results."""
    summary = {split: _summary([f[split] for f in per_fold]) for split in ("heldout", "eval")}
    write_json(out / "cv_results.json", {
        "folds": per_fold, "k": len(per_fold), "main_metric": main_metric, **summary, "oof": oof_metrics,
    })
    heldout = summary["heldout"].get(main_metric)
    if heldout is not None:
        values = {f"fold {f['fold']}": f["heldout"][main_metric] for f in per_fold}
        values["mean"] = heldout["mean"]
        plot_bars(values, {"mean": heldout["std"]}, main_metric,
                  f"{len(per_fold)}-fold CV: held-out {main_metric} (mean ± std)", out / "cv.png")
        logger.info("cross-validation held-out %s: %.4f ± %.4f", main_metric, heldout["mean"], heldout["std"])
    flat = {f"cv_{split}_{k}_{stat}": v for split, metrics in summary.items() for k, d in metrics.items()
            for stat, v in d.items()}
    flat.update({f"cv_oof_{k}": v for k, v in oof_metrics.items()})
    return flat
