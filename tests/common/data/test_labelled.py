"""The labelled-data steps shared by the classification recipes: their order, and what they hand the run
(splits, label spec, groups and source rows lined up with the final train rows, the counts)."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict
from transformers import TrainingArguments

from common.core.errors import RecipeInputError
from common.data.bad_rows import BadRow, drop_bad_rows
from common.data.labelled import prepare_labelled_splits
from common.data.options import DataArguments

SOURCES = {"train": "train.csv", "validation": "dev.csv"}


def rows(n: int = 40) -> dict[str, list]:
    label = ["good" if i % 2 else "bad" for i in range(n)]
    label[3] = label[17] = None  # bad rows: no label
    text = [f"clip {i}" + (" broken" if i % 7 == 5 else "") for i in range(n)]
    return {"text": text, "label": label, "speaker": [f"s{i % 8}" for i in range(n)]}


def training_args(tmp_path, **extra) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], do_eval=True, **extra)


def test_groups_and_source_rows_name_each_final_train_row(tmp_path):
    """Bad rows, a hold-out by whole speakers, a cap and a recipe check that drops rows after the cap: each final
    train row's source row is the file row holding its text, label and group, and the counts add up."""
    file = rows()
    seen = {}

    def drop_broken(splits: DatasetDict, sources: dict[str, str]):
        seen.update({split: len(d) for split, d in splits.items()})
        bad = {split: [BadRow(i, f"row {i}", "broken") for i, t in enumerate(d["text"]) if "broken" in t]
               for split, d in splits.items()}
        return drop_bad_rows(splits, bad, sources, True, 0.5)

    data = prepare_labelled_splits(
        DatasetDict({"train": Dataset.from_dict(file)}), {"train": "train.csv"},
        DataArguments(skip_bad_examples=True, max_bad_fraction=0.1, validation_split=0.25, max_train_samples=24),
        training_args(tmp_path), "label", group_column="speaker", check_sampled=drop_broken)

    train = data.splits["train"]
    assert seen["train"] == 24  # the check ran on the capped rows
    assert len(train) == len(data.source_rows) == len(data.groups) < 24
    assert not {3, 17} & set(data.source_rows) and all(i % 7 != 5 for i in data.source_rows)
    assert train["text"] == [file["text"][i] for i in data.source_rows]
    assert [data.label_spec.names[i] for i in train["labels"]] == [file["label"][i] for i in data.source_rows]
    assert data.groups == [file["speaker"][i] for i in data.source_rows]
    assert not set(data.groups) & set(data.splits["validation"]["speaker"])  # whole speakers held out
    assert data.sources["validation"] == "validation split held out from train.csv"
    dropped_after_cap = 24 - len(train)
    assert data.skipped["skipped_bad_examples_train"] == 2 + dropped_after_cap
    assert data.duplicates == {}  # no text columns given: nothing compared
    assert [b.index for b in data.bad["train"]] == [3, 17]


def test_text_columns_make_empty_texts_bad_rows_and_count_duplicates(tmp_path):
    train = {"text": ["a", "b", "", "c", "d", "e"], "label": ["x", "y", "x", "y", "x", "y"]}
    validation = {"text": ["a", "f"], "label": ["x", "y"]}
    splits = DatasetDict({"train": Dataset.from_dict(train), "validation": Dataset.from_dict(validation)})
    args = training_args(tmp_path)
    with pytest.raises(RecipeInputError, match=r"train.csv: 1 bad row: row 3 \(empty text in 'text'\)"):
        prepare_labelled_splits(splits, SOURCES, DataArguments(), args, "label", ["text"])
    data = prepare_labelled_splits(splits, SOURCES, DataArguments(skip_bad_examples=True, max_bad_fraction=0.5),
                                   args, "label", ["text"])
    assert data.duplicates == {"duplicates_validation": 1} and data.skipped["skipped_bad_examples_train"] == 1
    assert data.source_rows == [0, 1, 3, 4, 5]


def test_label_options_rename_and_refuse_before_anything_is_encoded(tmp_path):
    """Integer labels named by the recipe's names; a one-class recipe refuses label sets, and label smoothing
    refuses anything but single-label classes."""
    ints = DatasetDict({"train": Dataset.from_dict({"label": [0, 1, 2] * 4})})
    data = prepare_labelled_splits(ints, {"train": "train.csv"}, DataArguments(), training_args(tmp_path), "label",
                                   names_for_ids={3: ["neg", "neu", "pos"]}.get)
    assert data.label_spec.names == ["neg", "neu", "pos"]
    sets = DatasetDict({"train": Dataset.from_dict({"label": ["a;b", "b", "a"] * 4})})
    with pytest.raises(RecipeInputError, match="label column 'label' of train.csv holds multi_label_classification "
                                               "labels; this recipe gives each clip one class."):
        prepare_labelled_splits(sets, {"train": "train.csv"}, DataArguments(), training_args(tmp_path), "label",
                                separator=";", one_class="gives each clip one class")
    with pytest.raises(RecipeInputError, match="--label_smoothing applies to single-label classification, not "
                                               "multi_label_classification"):
        prepare_labelled_splits(sets, {"train": "train.csv"}, DataArguments(),
                                training_args(tmp_path, label_smoothing_factor=0.1), "label", separator=";")
