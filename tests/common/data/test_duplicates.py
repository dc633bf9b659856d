"""Rows shared between splits: counted, warned about, and dropped with --dedupe."""

from __future__ import annotations

import logging

import pytest
from conftest import fast_args

from recipes import text_classification

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_duplicates_across_splits_are_counted_and_dropped_with_dedupe(tiny_bert, csv_file, tmp_path, caplog):
    """Validation rows that appear verbatim in train are counted and warned about; --dedupe drops them."""
    train = [{"text": f"question {i}", "label": "a" if i % 2 else "b"} for i in range(40)]
    validation = train[:3] + [{"text": f"new question {i}", "label": "a" if i % 2 else "b"} for i in range(7)]
    argv = ["--model_name_or_path", tiny_bert, "--train_file", csv_file(train),
            "--validation_file", csv_file(validation, "validation.csv")]
    with caplog.at_level(logging.WARNING):
        results = text_classification.main([*argv, *fast_args(tmp_path / "a", eval_strategy="no")])
    assert "3 of 10 rows of validation split" in caplog.text and "appear verbatim in train" in caplog.text
    assert results["duplicates_validation"] == 3 and results["eval_samples"] == 10
    results = text_classification.main([*argv, "--dedupe", *fast_args(tmp_path / "b", eval_strategy="no")])
    assert results["eval_samples"] == 7
