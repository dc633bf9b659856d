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
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
from transformers import TrainingArguments

from common.core.errors import RecipeInputError
from common.data import require_columns
from common.data.arrow import column_array
from common.data.labels import MULTI, REGRESSION
from common.strategies.ensembling import run_ensemble
from common.training.metrics import predictions_from_scores, score_predictions, scores_from_logits
from common.training.reporting import plot_bars, write_json
from common.training.run import train_evaluate_predict

logger = logging.getLogger(__name__)


@dataclass
class CrossValidationArguments:
    cv_folds: int = field(default=0, metadata={"help": "k-fold cross-validation over train; 0 = off."})
    cv_group_column: str | None = field(default=None, metadata={"help": "Column whose groups never span folds."})

SOURCE_ROW = "__source_row__"  # the train rows' numbers in the file as loaded; see `number_rows`


def number_rows(dataset: Dataset) -> Dataset:
    """The train split as loaded, plus a column of its 0-based row numbers. `Dataset.select` keeps it, so after
    dropped bad rows, a held-out validation split and sampling it still says which file row each row is."""
    if SOURCE_ROW in dataset.column_names:
        raise RecipeInputError(f"the train data has a column named {SOURCE_ROW!r}, a name this toolkit reserves; "
                               "rename it.")
    return dataset.add_column(SOURCE_ROW, np.arange(len(dataset), dtype=np.int64))


def take_source_rows(splits: DatasetDict) -> tuple[DatasetDict, list[int] | None]:
    """The splits without the `number_rows` column (it must reach no model, collator or report), and train's
    row numbers (`Task.source_rows`; None when the train split was not numbered)."""
    train = splits.get("train")
    rows = (column_array(train, SOURCE_ROW).to_numpy().tolist()
            if train is not None and SOURCE_ROW in train.column_names else None)
    result = DatasetDict({name: ds.remove_columns(SOURCE_ROW) if SOURCE_ROW in ds.column_names else ds
                          for name, ds in splits.items()})
    return result, rows


def cv_groups(dataset, column: str, where: str) -> list:
    """The --cv_group_column values of the train split, or a clear error when the column is missing."""
    if column not in dataset.column_names and SOURCE_ROW in dataset.column_names:
        dataset = dataset.remove_columns(SOURCE_ROW)  # not the user's: leave it out of the columns listed
    require_columns(dataset, [column], where, "--cv_group_column")
    return list(dataset[column])


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
    out = Path(args.output_dir)
    main = args.process_index == 0
    spec = task.label_spec  # out-of-fold scores only for classification and regression
    labels = np.asarray(train["labels"]) if spec is not None else None
    oof_scores: np.ndarray | None = None
    fold_of = np.full(len(train), -1)
    per_fold: list[dict] = []

    for k, (train_rows, held_rows) in enumerate(splits):
        logger.info("fold %d/%d: train on %d rows, hold out %d", k + 1, len(splits), len(train_rows), len(held_rows))
        held_out = train.select(held_rows)
        captured = {}
        fold_task = dataclasses.replace(
            task,
            train_dataset=train.select(train_rows),
            eval_dataset=task.eval_dataset if task.eval_dataset is not None else held_out,
            test_dataset=held_out,
            # The recipe's error analysis shows its validation rows; a held-out fold in their place has others.
            error_analysis=task.error_analysis if task.eval_dataset is not None else None,
            write_predictions=lambda output, _dir, captured=captured: captured.update(output=output),
        )
        fold_args = dataclasses.replace(args, output_dir=str(out / f"fold_{k}"), do_train=True, do_predict=True,
                                        resume_from_checkpoint=None)
        results = train_evaluate_predict(fold_task, fold_args, finetune_args)
        per_fold.append({"fold": k, "train_rows": len(train_rows), "heldout_rows": len(held_rows),
                         "heldout": _split_metrics(results, "test"), "eval": _split_metrics(results, "eval")})
        if main and spec is not None:
            predictions = captured["output"].predictions
            logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
            scores = scores_from_logits(logits, spec.problem_type)
            if oof_scores is None:
                oof_scores = np.zeros((len(train), *scores.shape[1:]), dtype=np.float64)
            oof_scores[held_rows] = scores
            fold_of[held_rows] = k
        gc.collect()  # the fold's trainer and model are gone; free them before the next fold loads its own

    results = {}
    if main:
        oof_metrics = (write_oof_predictions(spec, oof_scores, labels, fold_of, out, source_rows)
                       if spec is not None else {})
        results = write_cv_results(task.main_metric, per_fold, oof_metrics, out)
    if finetune_args.ensemble:
        members = [str(out / f"fold_{k}") for k in range(len(splits))]
        results.update(run_ensemble(task, args, finetune_args, members, oof_scores=oof_scores, oof_labels=labels))
    return results


def oof_class_names(spec) -> list:
    """What `label` and `prediction` hold per class id: its name; for integer labels without --class_names,
    whose names are those integers as text, the integers themselves, so they compare equal to the file's."""
    return list(spec.values) if spec.from_ids and spec.values is not None else list(spec.names)


def write_oof_predictions(spec, scores: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, out: Path,
                          rows: np.ndarray) -> dict[str, float]:
    """oof_predictions.parquet: row (in the train file), fold, label, prediction, label_id, per-class scores;
    returns the pooled metrics. `label` and `prediction` are in the same terms, class names."""

    table = pd.DataFrame({"row": rows, "fold": fold_of})
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
