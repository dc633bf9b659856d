"""Which row is which: the train file's row numbers, carried through every selection, and the row groups
(--cv_group_column: a speaker, a document) that validation and cross-validation keep on one side."""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict

from common.core.errors import RecipeInputError
from common.data.arrow import column_array
from common.data.files import require_columns

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


def cv_groups(dataset: Dataset, column: str, where: str) -> list:
    """The --cv_group_column values of the train split, or a clear error when the column is missing."""
    if column not in dataset.column_names and SOURCE_ROW in dataset.column_names:
        dataset = dataset.remove_columns(SOURCE_ROW)  # not the user's: leave it out of the columns listed
    require_columns(dataset, [column], where, "--cv_group_column")
    return list(dataset[column])


def check_disjoint_groups(splits: DatasetDict, column: str, sources: dict[str, str]) -> None:
    """No group in two splits: the given splits must keep each group (a speaker) on one side."""
    seen: dict[str, str] = {}
    for split, dataset in splits.items():
        if column not in dataset.column_names:
            continue
        for group in set(map(str, dataset[column])):
            if seen.setdefault(group, split) != split:
                raise RecipeInputError(
                    f"--cv_group_column {column}: '{group}' is in both {sources[seen[group]]} and {sources[split]}, "
                    f"so the model would be scored on a {column} it trained on. Give splits with disjoint groups, "
                    "or leave out the validation split and let the recipe hold one out by group.")
