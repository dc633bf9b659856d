"""Labels: infer the problem type from the label column, map values to ids, encode every split.

Every step works on whole Arrow columns (`pyarrow.compute`), so millions of labels are read, checked and
encoded in well under a second. Class ids are the sorted set of values present in train: ids 1..4, or
{0, 1, 3}, become 0..N-1 with their values as names (or the names given by --class_names/--class_names_file).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value

from common.core.errors import RecipeInputError
from common.data.arrow import column_array

logger = logging.getLogger(__name__)

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE, MULTI, REGRESSION)
NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
INTEGER = r"^\s*[-+]?\d+\s*$"
SHOWN = 10


@dataclass
class LabelSpec:
    problem_type: str
    names: list[str] | None = None  # class names, index = id; None for regression
    values: list | None = None  # single-label: the label value of each id as the data holds it; None: the names
    from_ids: bool = False  # names are integer ids written as text (no --class_names): a recipe may name them

    @property
    def num_labels(self) -> int:
        return len(self.names) if self.names else 1

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names)) if self.names else {0: "score"}

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @property
    def main_metric(self) -> str:
        return {SINGLE: "accuracy", MULTI: "f1_micro", REGRESSION: "pearson"}[self.problem_type]

    def renamed(self, names: list[str]) -> LabelSpec:
        return LabelSpec(self.problem_type, names, self.values if self.values is not None else self.names)


def read_class_names(path: str, what: str = "class") -> list[str]:
    """--class_names_file (--tag_names_file for `what` tag): one name per line (blank lines ignored), like the
    classes.txt many datasets ship."""
    file = Path(path)
    if not file.is_file():
        raise RecipeInputError(f"--{what}_names_file {path} does not exist. Give a text file with one {what} name per "
                               "line, in the sorted order of the label ids.")
    names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise RecipeInputError(f"--{what}_names_file {path} is empty: give one {what} name per line.")
    return names


def class_names_option(names: list[str] | None, names_file: str | None) -> list[str] | None:
    if names and names_file:
        raise RecipeInputError("give --class_names or --class_names_file, not both.")
    return read_class_names(names_file) if names_file else names


def canonical(dataset: Dataset, column: str, separator: str | None = None, where: str = "") -> pa.Array:
    """The label column as the values to classify by: class names for ClassLabel ids (-1, the Hub's mark for
    'no label', becomes null), label lists with empty parts dropped, integer-looking strings as integers,
    booleans as 0/1."""
    feature = dataset.features[column]
    values = column_array(dataset, column)
    if isinstance(values.type, pa.BaseExtensionType):  # JSON values of several types: 1 in one row, "pos" in another
        _mixed_types([json.loads(v) for v in values.storage.to_pylist() if v is not None], column, where)
    if isinstance(feature, ClassLabel):
        ids = pc.if_else(pc.less(values, 0), pa.scalar(None, values.type), values)
        return pa.array(feature.names, pa.string()).take(ids)
    if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
        flat = pa.array(feature.feature.names, pa.string()).take(pc.list_flatten(values))
        return pa.ListArray.from_arrays(values.offsets, flat)
    if pa.types.is_boolean(values.type):
        return values.cast(pa.int64())
    if pa.types.is_large_string(values.type):  # what some readers produce; one string type keeps the rest simple
        values = values.cast(pa.string())
    if separator and pa.types.is_string(values.type):
        values = pc.split_pattern(values, separator)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        # 'sports; news;' -> {sports, news}: no class named '' from a trailing or doubled separator.
        flat = pc.utf8_trim_whitespace(pc.list_flatten(values).cast(pa.string()))
        parents = pc.list_parent_indices(values)
        keep = pc.not_equal(flat, "")
        flat, parents = flat.filter(keep), parents.filter(keep)
        counts = np.bincount(parents.to_numpy(), minlength=len(values))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), flat, mask=values.is_null())
    if pa.types.is_string(values.type):
        values = pc.utf8_trim_whitespace(values)
        present = values.drop_null()
        if len(present) and pc.all(pc.match_substring_regex(present, INTEGER)).as_py():
            return values.cast(pa.int64())
        if len(present) and pc.all(pc.match_substring_regex(present, NUMBER)).as_py():
            return values.cast(pa.float64())
        return values
    if pa.types.is_integer(values.type):
        return values.cast(pa.int64())
    return values


def _mixed_types(values: list, column: str, where: str) -> None:
    examples: dict[str, object] = {}
    for value in values:
        examples.setdefault("list" if isinstance(value, list) else type(value).__name__, value)
    shown = ", ".join(f"{name} (e.g. {value!r})" for name, value in examples.items())
    raise RecipeInputError(
        f"label column '{column}' of {where} mixes types: {shown}. Make every label the same type: all class names, "
        "all integer ids, or all numbers for regression."
    )


def bad_label_rows(dataset: Dataset, column: str, separator: str | None = None, where: str = "") -> dict[int, str]:
    """Rows whose label is missing or, in a column of numbers, not a number: {row: problem}."""
    values = canonical(dataset, column, separator, where)
    bad: dict[int, str] = {int(i): "no label" for i in np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))}
    if pa.types.is_string(values.type):
        empty = pc.equal(values, "").fill_null(False).to_numpy(zero_copy_only=False)
        bad.update({int(i): "empty label" for i in np.flatnonzero(empty)})
        numeric = pc.match_substring_regex(values, NUMBER).fill_null(False).to_numpy(zero_copy_only=False)
        filled = ~values.is_null().to_numpy(zero_copy_only=False) & ~empty
        # Mostly numbers with a few words ('n/a', '?'): the words are broken labels, not extra classes. Class
        # names (a ClassLabel: folders, Hub datasets) are all names, numbers or not.
        if numeric.sum() > 0.5 * filled.sum() and not isinstance(dataset.features[column], ClassLabel):
            for i in np.flatnonzero(filled & ~numeric):
                bad[int(i)] = f"label {values[int(i)].as_py()!r} is not a number, unlike the others"
    return bad


def infer_label_spec(
    splits: DatasetDict,
    column: str,
    where: str,
    names: list[str] | None = None,
    problem_type: str | None = None,
    separator: str | None = None,
) -> LabelSpec:
    """Decide single-label / multi-label / regression from train's label values (or --problem_type)."""
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise RecipeInputError(f"--problem_type {problem_type}: use one of {', '.join(PROBLEM_TYPES)}.")
    values = canonical(splits["train"], column, separator, where)
    missing = values.null_count
    if missing:
        raise RecipeInputError(f"{missing} rows of {where} have no value in label column '{column}'. Fill or drop "
                               "them, or pass --skip_bad_examples to train without them.")
    kind = values.type
    if pa.types.is_list(kind):
        found = _sorted(pc.unique(pc.list_flatten(values)).to_pylist())
        return LabelSpec(problem_type or MULTI, _named(found, names, where))
    if problem_type == REGRESSION:
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise RecipeInputError(f"--problem_type regression needs numbers in label column '{column}' of {where}, "
                                   f"e.g. {values[0].as_py()!r} is not one.")
        return LabelSpec(REGRESSION)
    if pa.types.is_floating(kind):
        integral = pc.all(pc.equal(values, pc.floor(values))).as_py()
        if integral and problem_type is None:
            logger.info("label column '%s' holds whole numbers written as floats: single-label classification "
                        "(--problem_type regression keeps them numeric)", column)
            values, kind = values.cast(pa.int64()), pa.int64()
        elif problem_type is None:
            return LabelSpec(REGRESSION)
    # Class names (folders 0..9, a Hub ClassLabel) are names even when they look like numbers.
    if pa.types.is_string(kind) and not isinstance(splits["train"].features[column], ClassLabel):
        numeric = pc.match_substring_regex(values, NUMBER)
        if pc.any(numeric).as_py() and not pc.all(numeric).as_py():  # numbers among names
            number = values.filter(numeric)[0].as_py()
            text = values.filter(pc.invert(numeric))[0].as_py()
            raise RecipeInputError(
                f"label column '{column}' of {where} mixes numbers and names (e.g. {number!r} and {text!r}). Make "
                "every label the same type: all class names or all integer ids."
            )
    found = _sorted(pc.unique(values).to_pylist())
    if problem_type == MULTI:
        raise RecipeInputError(f"--problem_type {MULTI} needs a list of labels per row in '{column}' of {where}: "
                               "a list column (jsonl/parquet) or --label_separator for text like 'a;b'.")
    if pa.types.is_string(kind):
        return LabelSpec(SINGLE, _named(found, names, where))
    if not names:
        return LabelSpec(SINGLE, [_text(v) for v in found], found, from_ids=True)
    return LabelSpec(SINGLE, _names_for_ids(found, names, where, column), found)


def _sorted(found: list) -> list:
    """Values in sorted order; names that are all integers ('0' .. '10') numerically, not as text."""
    if found and all(isinstance(v, str) and re.match(INTEGER, v) for v in found):
        return sorted(found, key=int)
    return sorted(found)


def _text(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _named(found: list[str], names: list[str] | None, where: str) -> list[str]:
    """String labels name themselves; --class_names fixes their order, and must cover every one."""
    if not names:
        return found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise RecipeInputError(f"labels {unknown[:SHOWN]} in {where} are not in --class_names {names}. Add them or "
                               "fix the data.")
    present = set(found)
    absent = [n for n in names if n not in present]
    if absent:
        logger.warning("--class_names %s have no rows in %s: left out, since the model could not learn them",
                       absent, where)
    return [n for n in names if n in present]


def _names_for_ids(found: list, names: list[str], where: str, column: str) -> list[str]:
    """Names for the sorted ids present: one name per present id, or names indexed by id 0..N-1."""
    if len(names) == len(found):
        return list(names)
    if all(isinstance(v, int) and 0 <= v < len(names) for v in found):
        present = set(found)
        absent = [names[i] for i in range(len(names)) if i not in present]
        logger.warning("class ids of %s: %s have no training rows and are left out", where, absent)
        return [names[v] for v in found]
    raise RecipeInputError(
        f"--class_names gives {len(names)} names but label column '{column}' of {where} holds {len(found)} "
        f"distinct ids ({', '.join(map(_text, found[:SHOWN]))}{' ...' if len(found) > SHOWN else ''}). Give one "
        "name per id, in sorted id order (e.g. ids 1..4 -> 4 names)."
    )


def encode_labels(splits: DatasetDict, spec: LabelSpec, column: str, sources: dict[str, str],
                  separator: str | None = None) -> DatasetDict:
    """Add a `labels` column the model understands. Splits without the label column, or whose labels are all
    missing (a Hub test split marked -1), are left unlabeled."""
    encoded = DatasetDict()
    for split, dataset in splits.items():
        if column not in dataset.column_names:
            encoded[split] = dataset
            continue
        values = canonical(dataset, column, separator, sources[split])
        if split != "train" and values.null_count == len(values):
            logger.info("%s has no labels (every value missing): predictions only", sources[split])
            encoded[split] = dataset.remove_columns(column)
            continue
        if values.null_count:
            raise RecipeInputError(f"{values.null_count} rows of {sources[split]} have no value in label column "
                                   f"'{column}'. Fill or drop them, or pass --skip_bad_examples.")
        if spec.problem_type == REGRESSION:
            try:
                labels, feature = values.cast(pa.float32()), Value("float32")
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise RecipeInputError(f"label column '{column}' of {sources[split]}: {err}; regression needs "
                                       "numbers.") from None
        elif spec.problem_type == MULTI:
            labels, feature = _multi_hot(values, spec, sources[split]), Sequence(Value("float32"))
        else:
            labels, feature = _ids(values, spec, sources[split]), Value("int64")
        # Added under a temporary name: the raw column may itself be called `labels`, or be the only column.
        dataset = dataset.add_column("__labels__", labels, feature=feature).remove_columns(column)
        encoded[split] = dataset.rename_column("__labels__", "labels")
    return encoded


def _ids(values: pa.Array, spec: LabelSpec, where: str) -> pa.Array:
    known = spec.values if spec.values is not None else spec.names
    value_set = pa.array(known)
    if not values.type.equals(value_set.type):
        # One type for every split: ids 0/1 in a json validation file against "0"/"1" read from a csv train.
        try:
            values = values.cast(value_set.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = values.cast(pa.string())
            value_set = pa.array([_text(v) for v in known])
    ids = pc.index_in(values, value_set=value_set)
    if ids.null_count:
        unknown = sorted({_text(v) for v in values.filter(ids.is_null()).to_pylist()})
        raise RecipeInputError(
            f"labels {unknown[:SHOWN]} in {where} never occur in training ({', '.join(spec.names[:20])}), so the "
            "model cannot predict them. Remove those rows or add training examples."
        )
    return ids.cast(pa.int64())


def _multi_hot(values: pa.Array, spec: LabelSpec, where: str) -> pa.Array:
    flat = pc.list_flatten(values)
    ids = pc.index_in(flat, value_set=pa.array(spec.names))
    if ids.null_count:
        unknown = sorted(set(flat.filter(ids.is_null()).to_pylist()))
        raise RecipeInputError(f"labels {unknown[:SHOWN]} in {where} never occur in training, so the model cannot "
                               "predict them. Remove those rows or add training examples.")
    hot = np.zeros((len(values), spec.num_labels), dtype=np.float32)
    hot[pc.list_parent_indices(values).to_numpy(), ids.to_numpy()] = 1.0
    empty = int((hot.sum(1) == 0).sum())
    if empty:
        logger.info("%s: %d rows have no labels (an empty set)", where, empty)
    return pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32) * spec.num_labels),
                                    pa.array(hot.ravel()))
