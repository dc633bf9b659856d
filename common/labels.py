"""Labels: infer the problem type from the label column, map names to ids, encode every split."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, DatasetDict, Sequence, Value

from common.errors import RecipeInputError

logger = logging.getLogger(__name__)

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
REGRESSION = "regression"


@dataclass
class LabelSpec:
    problem_type: str
    names: list[str] | None = None  # class names, index = id; None for regression

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


def _is_number_string(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _type_name(value: object) -> str:
    return "list" if isinstance(value, (list, tuple)) else type(value).__name__


def infer_label_spec(
    splits: DatasetDict,
    column: str,
    where: str,
    names: list[str] | None = None,
    problem_type: str | None = None,
    separator: str | None = None,
) -> LabelSpec:
    """Decide single-label / multi-label / regression from train's label values (or --problem_type)."""
    spec = _infer_label_spec(splits, column, where, names, problem_type, separator)
    if spec.problem_type == SINGLE:
        _require_two_classes(splits["train"], column, where)
    return spec


def _require_two_classes(train, column: str, where: str) -> None:
    # A classifier trained on one class learns nothing, yet its loss still falls: without this the run would
    # "succeed". Counted on the rows present, since integer ids (or --class_names) can imply unseen classes.
    feature = train.features[column]
    values = train[column]
    if isinstance(feature, ClassLabel):
        values = [feature.int2str(v) for v in values]
    present = sorted({str(v).strip() for v in values})
    if len(present) == 1:
        raise RecipeInputError(
            f"label column '{column}' of {where} holds a single class ({present[0]!r}) in every row: a classifier "
            "needs examples of at least two classes. Add rows (or class folders) of the other classes, or check "
            "that --label_column names the label."
        )


def _infer_label_spec(
    splits: DatasetDict,
    column: str,
    where: str,
    names: list[str] | None,
    problem_type: str | None,
    separator: str | None,
) -> LabelSpec:
    train = splits["train"]
    feature = train.features[column]
    if isinstance(feature, ClassLabel) and problem_type in (None, SINGLE):
        return LabelSpec(SINGLE, names or list(feature.names))
    if isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
        return LabelSpec(MULTI, names or list(feature.feature.names))

    values = train[column]
    missing = sum(v is None for v in values)
    if missing:
        raise RecipeInputError(
            f"{missing} rows of {where} have no value in label column '{column}'. Fill or drop them."
        )
    types = {_type_name(v) for v in values}
    if types == {"bool"}:
        types, values = {"int"}, [int(v) for v in values]
    if separator and types == {"str"}:
        values, types = [v.split(separator) for v in values], {"list"}

    if types == {"list"}:
        flat = sorted({str(x).strip() for v in values for x in v})
        return LabelSpec(problem_type or MULTI, names or flat)
    if problem_type == REGRESSION or types == {"float"} or types == {"int", "float"}:
        return LabelSpec(REGRESSION)
    if types == {"int"}:
        ints = np.asarray(values)
        if ints.min() < 0:
            raise RecipeInputError(
                f"label column '{column}' of {where} has negative class id {int(ints.min())}. "
                "Class ids must be 0..N-1, or use class names."
            )
        count = int(ints.max()) + 1
        if names and len(names) < count:
            raise RecipeInputError(
                f"--class_names gives {len(names)} names but label column '{column}' of {where} has ids up to "
                f"{count - 1}. Give one name per class id."
            )
        return LabelSpec(problem_type or SINGLE, names or [str(i) for i in range(count)])
    if types == {"str"}:
        numeric = [v for v in values if _is_number_string(v)]
        if numeric and len(numeric) < len(values):
            text = next(v for v in values if not _is_number_string(v))
            raise RecipeInputError(
                f"label column '{column}' of {where} mixes numbers and names (e.g. {numeric[0]!r} and {text!r}). "
                "Make every label the same type: all class names or all integer ids."
            )
        found = sorted({v.strip() for v in values})
        if names:
            unknown = sorted(set(found) - set(names))
            if unknown:
                raise RecipeInputError(
                    f"labels {unknown} in {where} are not in --class_names {names}. Add them or fix the data."
                )
            found = list(names)
        return LabelSpec(problem_type or SINGLE, found)
    examples = {}
    for v in values:
        examples.setdefault(_type_name(v), v)
    shown = ", ".join(f"{t} (e.g. {v!r})" for t, v in examples.items())
    raise RecipeInputError(
        f"label column '{column}' of {where} mixes types: {shown}. "
        "Make every label the same type: all class names, all integer ids, or all numbers for regression."
    )


def encode_labels(splits: DatasetDict, spec: LabelSpec, column: str, sources: dict[str, str],
                  separator: str | None = None) -> DatasetDict:
    """Add a `labels` column the model understands; splits without the label column (test) are left as is."""
    label2id = spec.label2id
    encoded = DatasetDict()
    for split, dataset in splits.items():
        if column not in dataset.column_names:
            encoded[split] = dataset
            continue
        original = dataset
        if column == "labels":  # the encoded column takes this name; keep the raw values aside
            dataset = dataset.rename_column("labels", "__raw_labels__")
            column_in_split = "__raw_labels__"
        else:
            column_in_split = column
        feature = original.features[column]
        values = original[column]
        if isinstance(feature, ClassLabel):
            values = [feature.int2str(v) for v in values]
        elif isinstance(feature, Sequence) and isinstance(feature.feature, ClassLabel):
            values = [[feature.feature.int2str(x) for x in v] for v in values]
        if spec.problem_type == REGRESSION:
            try:
                labels = [float(v) for v in values]
            except (TypeError, ValueError) as err:
                raise RecipeInputError(f"label column '{column}' of {sources[split]}: {err}; regression needs numbers.") from None
            new = dataset.add_column("labels", labels, feature=Value("float32"))
        elif spec.problem_type == MULTI:
            rows = [v.split(separator) if separator and isinstance(v, str) else v for v in values]
            unknown = sorted({str(x).strip() for r in rows for x in r} - set(label2id))
            if unknown:
                raise RecipeInputError(
                    f"labels {unknown[:10]} in {sources[split]} never occur in training, so the model cannot "
                    "predict them. Remove those rows or add training examples."
                )
            hot = np.zeros((len(rows), spec.num_labels), dtype=np.float32)
            for i, row in enumerate(rows):
                hot[i, [label2id[str(x).strip()] for x in row]] = 1.0
            new = dataset.add_column("labels", list(hot), feature=Sequence(Value("float32")))
        else:
            # Integer labels are already ids (their names may come from --label_names); strings are names.
            ids = [v if isinstance(v, int) else label2id.get(str(v).strip(), -1) for v in values]
            unknown = sorted({str(v) for v, i in zip(values, ids) if not 0 <= i < spec.num_labels})
            if unknown:
                raise RecipeInputError(
                    f"labels {unknown[:10]} in {sources[split]} never occur in training ({', '.join(spec.names)}), "
                    "so the model cannot predict them. Remove those rows or add training examples."
                )
            new = dataset.add_column("labels", ids, feature=Value("int64"))
        new = new.remove_columns(column_in_split)
        encoded[split] = new
    return encoded
