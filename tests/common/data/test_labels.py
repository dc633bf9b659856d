"""Labels: class names and ids inferred from the values present, aligned across splits whatever their type,
and the problem type (single-label, multi-label, regression) as the data and --problem_type say."""

from __future__ import annotations

import json

import pytest
from conftest import fast_args
from datasets import ClassLabel, Dataset, DatasetDict, Features

from common.core.errors import RecipeInputError
from common.data.labels import encode_labels, infer_label_spec
from recipes import text_classification

pytestmark = pytest.mark.usefixtures("one_thread")


def test_integer_ids_are_the_sorted_values_present():
    splits = DatasetDict({"train": Dataset.from_dict({"label": [3, 1, 0, 3, 1]}),
                          "validation": Dataset.from_dict({"label": [0, 3]})})
    spec = infer_label_spec(splits, "label", "train")
    assert spec.names == ["0", "1", "3"] and spec.num_labels == 3  # not 4 with an id 2 never trained
    encoded = encode_labels(splits, spec, "label", {"train": "train", "validation": "validation"})
    assert encoded["train"]["labels"] == [2, 1, 0, 2, 1] and encoded["validation"]["labels"] == [0, 2]
    unseen = DatasetDict({**splits, "validation": Dataset.from_dict({"label": [2]})})
    with pytest.raises(RecipeInputError, match=r"labels \['2'\] in validation never occur in training"):
        encode_labels(unseen, spec, "label", {"train": "train", "validation": "validation"})


def test_class_names_that_are_digits_are_names_in_numeric_order():
    """Class names that are digits (folders 0..10, an MNIST-like Hub ClassLabel) name their classes, sorted
    numerically; a text column that mixes numbers and names fails quoting one of each."""
    features = Features({"label": ClassLabel(names=["0", "1", "10", "2"])})
    splits = DatasetDict({"train": Dataset.from_dict({"label": [2, 0, 3, 1, 2]}, features=features)})
    spec = infer_label_spec(splits, "label", "train")
    assert spec.names == ["0", "1", "2", "10"] and not spec.from_ids
    assert encode_labels(splits, spec, "label", {"train": "train"})["train"]["labels"] == [3, 0, 2, 1, 3]
    mixed = DatasetDict({"train": Dataset.from_dict({"label": ["1", "cat", "dog", "2"]})})
    with pytest.raises(RecipeInputError, match=r"mixes numbers and names \(e.g. '1' and 'cat'\)"):
        infer_label_spec(mixed, "label", "train")


def _config(out) -> dict:
    return json.loads((out / "config.json").read_text())


WORDS = ["apple", "river", "candle", "tiger", "violin", "desert", "rocket", "garden", "pepper", "marble", "falcon"]


def _write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.slow
def test_integer_class_ids_are_the_values_present(tiny_bert, csv_file, tmp_path):
    """Integer labels 0, 1 and 3 are three classes named by their values, not four ids with a phantom '2'; a
    validation label training never saw is refused."""
    rows = [{"text": f"review {i}", "label": [0, 1, 3][i % 3]} for i in range(30)]
    out = tmp_path / "out"
    text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", csv_file(rows),
                              *fast_args(out, eval_strategy="no")])
    assert _config(out)["id2label"] == {"0": "0", "1": "1", "2": "3"}  # three trained classes, no phantom '2'
    validation = csv_file([{"text": "unseen", "label": 2}, {"text": "seen", "label": 1}], "validation.csv")
    with pytest.raises(RecipeInputError, match=r"labels \['2'\] in validation split .* never occur in training"):
        text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", csv_file(rows),
                                  "--validation_file", validation, *fast_args(tmp_path / "again")])


@pytest.mark.slow
def test_string_train_labels_align_with_integer_validation_labels(tiny_bert, tmp_path):
    """Train labels as strings '0'..'10' (sorted as text they would put '10' before '2'), validation as ints."""
    train = [{"text": f"{WORDS[c]} {WORDS[c]} {WORDS[c]}", "label": str(c)} for c in range(11) for _ in range(8)]
    validation = [{"text": f"{WORDS[c]} {WORDS[c]} {WORDS[c]}", "label": c} for c in range(11)]
    out = tmp_path / "out"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", _write_jsonl(tmp_path / "train.jsonl", train),
        "--validation_file", _write_jsonl(tmp_path / "validation.jsonl", validation),
        *fast_args(out, num_train_epochs=12, learning_rate=5e-3, eval_strategy="no"),
    ])
    assert _config(out)["id2label"]["2"] == "2"
    assert results["eval_accuracy"] >= 0.9  # scored against the right classes; misaligned ids cap it near 2/11


@pytest.mark.slow
def test_problem_type_decides_for_float_labels(tiny_bert, csv_file, tmp_path):
    """Float labels 0.0/1.0 are two classes unless --problem_type says regression."""
    rows = [{"text": f"review {i}", "label": float(i % 2)} for i in range(30)]
    for flags, expected in (([], "single_label_classification"),
                            (["--problem_type", "single_label_classification"], "single_label_classification"),
                            (["--problem_type", "regression"], "regression")):
        out = tmp_path / expected / str(len(flags))
        text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", csv_file(rows), *flags,
                                  *fast_args(out, eval_strategy="no")])
        assert _config(out)["problem_type"] == expected
        assert len(_config(out)["id2label"]) == (1 if expected == "regression" else 2)


@pytest.mark.slow
def test_trailing_label_separator_adds_no_class(tiny_bert, csv_file, tmp_path):
    """Empty pieces around --label_separator (a trailing ';', ';;', spaces) add no empty class."""
    rows = [{"text": f"story {i}", "tags": ["sports;", "news; sports", "news;;", " sports ; news "][i % 4]}
            for i in range(24)]
    out = tmp_path / "out"
    text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", csv_file(rows),
                              "--label_column", "tags", "--label_separator", ";", *fast_args(out, eval_strategy="no")])
    assert sorted(_config(out)["id2label"].values()) == ["news", "sports"]
