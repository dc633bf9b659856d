"""Which row is which: file row numbers kept through selection and taken out before the model, and the
--cv_group_column groups, checked for presence and for a group on both sides of a split."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from common.core.errors import RecipeInputError
from common.data.rows import SOURCE_ROW, check_disjoint_groups, cv_groups, number_rows, take_source_rows


def test_row_numbers_follow_selection_and_leave_every_split():
    """After any selection the numbers still name the loaded rows; `take_source_rows` returns train's and no
    split keeps the column."""
    train = number_rows(Dataset.from_dict({"text": [f"t{i}" for i in range(8)]}))
    validation = train.select([0, 6])
    splits = DatasetDict({"train": train.select([7, 2, 5]), "validation": validation,
                          "test": Dataset.from_dict({"text": ["x"]})})
    taken, rows = take_source_rows(splits)
    assert rows == [7, 2, 5]
    assert taken["train"]["text"] == ["t7", "t2", "t5"]
    assert all(SOURCE_ROW not in d.column_names for d in taken.values())
    assert take_source_rows(DatasetDict({"train": Dataset.from_dict({"text": ["a"]})}))[1] is None


def test_a_column_with_the_reserved_name_is_refused():
    with pytest.raises(RecipeInputError, match=f"column named '{SOURCE_ROW}', a name this toolkit reserves; rename"):
        number_rows(Dataset.from_dict({SOURCE_ROW: [1, 2]}))


def test_missing_group_column_names_it_and_not_the_row_numbers():
    """The error lists the user's columns only: the row-number column is the toolkit's."""
    dataset = number_rows(Dataset.from_dict({"text": ["a"], "label": [0]}))
    with pytest.raises(RecipeInputError, match=r"'speaker' not found in train split.*Columns present: text, label\. "
                                               r"Set --cv_group_column"):
        cv_groups(dataset, "speaker", "train split")
    assert cv_groups(dataset.add_column("speaker", ["s1"]), "speaker", "train split") == ["s1"]


def test_a_group_in_two_given_splits_is_refused_naming_both():
    splits = DatasetDict({"train": Dataset.from_dict({"speaker": ["ana", "bo", "bo"]}),
                          "validation": Dataset.from_dict({"speaker": ["cy", "bo"]}),
                          "test": Dataset.from_dict({"text": ["no speaker column"]})})
    sources = {"train": "train.csv", "validation": "dev.csv", "test": "test.csv"}
    with pytest.raises(RecipeInputError, match="--cv_group_column speaker: 'bo' is in both train.csv and dev.csv, so "
                                               "the model would be scored on a speaker it trained on"):
        check_disjoint_groups(splits, "speaker", sources)
    check_disjoint_groups(DatasetDict({k: splits[k] for k in ("train", "test")}), "speaker", sources)
