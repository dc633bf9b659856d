"""Held-out validation and --max_*_samples: seeded, stratified by class, grouped when groups are given.

Everything here works on whole columns (NumPy, Arrow), never on rows in Python, so a split of millions of rows
is divided or sampled in well under a second. Sampling never takes "the first N rows": data files are often
sorted (by label, by speaker, by date), and a prefix of a sorted file is one class.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from sklearn.model_selection import GroupShuffleSplit

from common.core.errors import RecipeInputError
from common.data.arrow import column_array

logger = logging.getLogger(__name__)

CAPS = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}


def column_codes(dataset: Dataset, column: str) -> np.ndarray:
    """A column as integer codes (one per distinct value), read through Arrow in one pass."""
    values = column_array(dataset, column)
    if pa.types.is_integer(values.type) and values.null_count == 0:
        return values.to_numpy()
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return pc.dictionary_encode(values).indices.to_numpy(zero_copy_only=False)


def stratified_sample(codes: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` row indices drawn without replacement, each class in proportion to its share (largest
    remainders), every class present at least once when `size` allows. Sorted, so file order is kept."""
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    quota = counts * size / len(codes)
    take = np.floor(quota).astype(int)
    if size >= len(classes):
        take = np.maximum(take, 1)
    order = np.argsort(-(quota - take), kind="stable")
    for c in order:
        if take.sum() >= size:
            break
        if take[c] < counts[c]:
            take[c] += 1
    while take.sum() > size:  # the minimum of one per class overshot: trim the largest classes
        take[np.argmax(take)] -= 1
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])  # one sort, not a scan per class
    chosen = [rng.choice(rows, n, replace=False) for rows, n in zip(by_class, take) if n]
    return np.sort(np.concatenate(chosen))


def add_validation_split(
    splits: DatasetDict, fraction: float, seed: int, stratify: np.ndarray | None = None,
    groups: Sequence | None = None,
) -> DatasetDict:
    """Hold out `fraction` of train as validation: stratified by class when every class has 2+ rows, and
    by whole groups when `groups` is given (no speaker or document on both sides)."""
    if "validation" in splits or "train" not in splits:
        return splits

    indices = np.arange(len(splits["train"]))
    if groups is not None:

        group_codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
        if group_codes.max() < 1:
            raise RecipeInputError("cannot hold out a validation split by groups: train has a single group. Give "
                                   "--validation_file, or a group column with several values.")
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        train_idx, eval_idx = next(splitter.split(indices, groups=group_codes))
        logger.info("no validation split given: held out %d of %d training rows as whole groups (%d groups for "
                    "validation, %d for train, seed %d)", len(eval_idx), len(indices),
                    len(np.unique(group_codes[eval_idx])), len(np.unique(group_codes[train_idx])), seed)
    else:
        n_eval = math.ceil(fraction * len(indices))  # as scikit-learn's train_test_split rounds
        if not 0 < n_eval < len(indices):
            raise RecipeInputError(f"cannot hold out {fraction} of {len(indices)} training rows: that leaves no row "
                                   "on one side. Give --validation_file, or more training rows.")
        codes = stratify if stratify is not None else np.zeros(len(indices), dtype=np.int64)
        eval_idx = stratified_sample(codes, n_eval, seed)
        train_idx = np.setdiff1d(indices, eval_idx, assume_unique=True)
        logger.info("no validation split given: held out %d of %d training rows%s (seed %d)", len(eval_idx),
                    len(indices), ", stratified by class" if stratify is not None else "", seed)
    result = DatasetDict(splits)
    result["train"] = splits["train"].select(np.sort(train_idx))
    result["validation"] = splits["train"].select(np.sort(eval_idx))
    return result


def drop_unused_splits(splits: DatasetDict, args: Any) -> DatasetDict:
    """Leave out validation without --do_eval and test without --do_predict: nothing reads them, and tokenizing
    or decoding them costs as much as the data the run uses (a held-out 10% of a big file)."""
    unused = {"validation": not args.do_eval, "test": not args.do_predict}
    return DatasetDict({split: ds for split, ds in splits.items() if not unused.get(split, False)})


def cap_splits(splits: DatasetDict, args: Any, seed: int, stratify_column: str | None = None) -> DatasetDict:
    """Apply --max_train_samples / --max_eval_samples / --max_predict_samples as a seeded random sample,
    stratified by `stratify_column` (the class ids) where a split has it."""
    result = DatasetDict(splits)
    for split, option in CAPS.items():
        cap = getattr(args, option, None)
        if cap is None or split not in result or len(result[split]) <= cap:
            continue
        dataset = result[split]
        if stratify_column and stratify_column in dataset.column_names:
            rows = stratified_sample(column_codes(dataset, stratify_column), cap, seed)
        else:
            rows = np.sort(np.random.default_rng(seed).choice(len(dataset), cap, replace=False))
        result[split] = dataset.select(rows)
    return result


def class_counts(dataset: Dataset, column: str, names: Sequence[str]) -> dict[str, int]:
    """Rows per class name for a column of class ids."""
    ids = column_array(dataset, column).to_numpy()
    counts = np.bincount(ids.astype(np.int64), minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


def check_class_balance(splits: DatasetDict, names: Sequence[str], sources: dict[str, str],
                        column: str = "labels") -> dict[str, dict[str, int]]:
    """Log each split's class counts; a train split of one class is an error, a validation class that train
    lacks a warning. Returns the counts per split."""
    counts = {split: class_counts(ds, column, names) for split, ds in splits.items() if column in ds.column_names}
    for split, per_class in counts.items():
        logger.info("%s split: %d rows, per class %s", split, sum(per_class.values()), per_class)
    present = [name for name, n in counts["train"].items() if n]
    if len(present) < 2:
        raise RecipeInputError(
            f"after sampling, {sources['train']} holds a single class: {counts['train']}. A classifier needs at "
            "least two. The usual cause is a file sorted by label and read or capped from the top: sampling here "
            "is random and stratified, so check the label column, --max_train_samples and any filtering."
        )
    for split, per_class in counts.items():
        missing = [name for name, n in per_class.items() if n and not counts["train"][name]]
        if split != "train" and missing:
            logger.warning("%s has classes that the train split lacks after sampling: %s. The model cannot "
                           "predict them; raise --max_train_samples or add training rows.", sources.get(split, split),
                           ", ".join(missing))
    return counts
