"""The labelled-data steps of a classification-style recipe, in the one order every such recipe needs.

Bad rows -> labels -> groups -> validation hold-out -> duplicates -> unused splits -> caps -> the recipe's own
check of the sampled rows -> source rows -> final groups -> class balance. The order is the contract: rows are
numbered before anything drops one (so `source_rows` name file rows), files are opened or clips decoded only
once sampled, and the groups are read from the train rows that are left, so they line up with the rows a run
trains on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datasets import DatasetDict
from transformers import TrainingArguments

from common.core.errors import RecipeInputError
from common.data.bad_rows import BadRow, add_counts, drop_bad_rows, find_bad_rows
from common.data.duplicates import find_duplicates
from common.data.labels import SINGLE, LabelSpec, class_names_option, encode_labels, infer_label_spec
from common.data.options import DataArguments
from common.data.rows import check_disjoint_groups, cv_groups, number_rows, take_source_rows
from common.data.sampling import (
    add_validation_split,
    cap_splits,
    check_class_balance,
    column_codes,
    drop_unused_splits,
)

# A recipe's check of the rows a run uses, once sampled (images opened, clips decoded): (splits, sources) ->
# (the splits left, counts of the rows it dropped or filtered).
SampledCheck = Callable[[DatasetDict, dict[str, str]], tuple[DatasetDict, dict[str, int]]]


@dataclass
class LabelledSplits:
    splits: DatasetDict  # labels encoded as `labels`; validation held out, deduplicated, capped, checked
    sources: dict[str, str]  # where each split came from, the held-out validation split included
    label_spec: LabelSpec
    bad: dict[str, list[BadRow]]  # per split, the rows with an empty input or a bad label, as loaded
    skipped: dict[str, int]  # rows dropped as bad (--skip_bad_examples) plus the counts of the sampled check
    duplicates: dict[str, int]  # duplicates_<split>: rows repeating an earlier split (with text columns only)
    groups: list | None  # the --cv_group_column value of each final train row (`Task.groups`)
    source_rows: list[int] | None  # each final train row's 0-based row in the train file (`Task.source_rows`)


def prepare_labelled_splits(
    splits: DatasetDict,
    sources: dict[str, str],
    data_args: DataArguments,
    training_args: TrainingArguments,
    label_column: str,
    text_columns: Sequence[str] = (),
    *,
    group_column: str | None = None,
    class_names: list[str] | None = None,
    class_names_file: str | None = None,
    problem_type: str | None = None,
    separator: str | None = None,
    names_for_ids: Callable[[int], list[str] | None] | None = None,
    one_class: str | None = None,
    disjoint_groups: bool = False,
    check_sampled: SampledCheck | None = None,
) -> LabelledSplits:
    """Loaded splits (train present, columns checked) to the splits a classification run trains on.

    `text_columns`: inputs whose empty values are bad rows and whose repeats across splits are duplicates.
    `names_for_ids(num_labels)` names integer labels that came without --class_names. `one_class` refuses
    labels that are not single-label, saying what the recipe does instead ("classifies each image into one
    class"). `disjoint_groups` refuses given splits that share a group. `check_sampled` runs after the caps.
    Single-label classes are stratified in the hold-out and the caps, and checked for balance at the end.
    """
    sources, splits = dict(sources), DatasetDict(splits)
    splits["train"] = number_rows(splits["train"])  # file row numbers: the `row` of oof_predictions.parquet
    bad = {split: find_bad_rows(ds, list(text_columns), label_column, sources[split], separator)
           for split, ds in splits.items()}
    splits, skipped = drop_bad_rows(splits, bad, sources, data_args.skip_bad_examples, data_args.max_bad_fraction)

    spec = infer_label_spec(splits, label_column, sources["train"], class_names_option(class_names, class_names_file),
                            problem_type, separator)
    if names_for_ids and spec.from_ids:
        spec = spec.renamed(names_for_ids(spec.num_labels) or spec.names)
    if one_class and spec.problem_type != SINGLE:
        raise RecipeInputError(f"label column '{label_column}' of {sources['train']} holds {spec.problem_type} "
                               f"labels; this recipe {one_class}.")
    if training_args.label_smoothing_factor and spec.problem_type != SINGLE:
        raise RecipeInputError(f"--label_smoothing applies to single-label classification, not {spec.problem_type}.")
    single = spec.problem_type == SINGLE
    splits = encode_labels(splits, spec, label_column, sources, separator)

    if group_column and disjoint_groups:
        check_disjoint_groups(splits, group_column, sources)
    groups = cv_groups(splits["train"], group_column, sources["train"]) if group_column else None
    splits = add_validation_split(splits, data_args.validation_split, training_args.seed,
                                  column_codes(splits["train"], "labels") if single else None, groups)
    sources.setdefault("validation", f"validation split held out from {sources['train']}")
    duplicates: dict[str, int] = {}
    if text_columns:
        splits, duplicates = find_duplicates(splits, list(text_columns), sources, data_args.dedupe)
    splits = drop_unused_splits(splits, training_args)
    splits = cap_splits(splits, data_args, training_args.seed, "labels" if single else None)
    if check_sampled:
        splits, counts = check_sampled(splits, sources)
        skipped = add_counts(skipped, counts)
    splits, source_rows = take_source_rows(splits)  # out of the data before it reaches a report or the model
    if group_column:  # the groups of the train rows left after the hold-out, the caps and the sampled check
        groups = list(splits["train"][group_column])
    if single:
        check_class_balance(splits, spec.names, sources)
    return LabelledSplits(splits, sources, spec, bad, skipped, duplicates, groups, source_rows)
