"""The error analysis ranks rows the way each task is scored, and --error_examples sets how many."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args
from transformers.trainer_utils import PredictionOutput

from common.data.audio import normalize_text
from common.data.labels import MULTI, REGRESSION, SINGLE, LabelSpec
from common.training.error_analysis import classification_errors
from common.training.seq2seq import translation_errors
from common.training.speech import speech_errors


def test_single_label_rows_by_loss_and_confused_pairs_by_count():
    logits = np.log(np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]]))
    labels = np.array([0, 2, 1, 2, 1])  # rows 1, 2 and 4 are wrong; row 1 worst (p=0.1), then 2 (0.3), then 4 (0.4)
    spec = LabelSpec(SINGLE, ["cat", "dog", "<bird>"])
    found = classification_errors(PredictionOutput(logits, labels, {}), spec, {"text": list("abcde")}, 3)
    table = found.table
    assert list(table["text"]) == ["b", "c", "e"]
    assert list(table["true_label"]) == ["<bird>", "dog", "dog"] and list(table["predicted_label"]) == ["dog", "cat", "cat"]
    assert table["loss"].tolist() == pytest.approx(-np.log([0.1, 0.3, 0.4]))
    assert table["confidence"].tolist() == pytest.approx([0.7, 0.6, 0.5])
    assert found.confused.values.tolist() == [["dog", "cat", 2], ["<bird>", "dog", 1]]
    assert found.description == "the 3 validation rows with the highest loss"
    # More rows asked for than exist: all of them; rows without labels: nothing to rank.
    assert len(classification_errors(PredictionOutput(logits, labels, {}), spec, {"text": list("abcde")}, 50).table) == 5
    assert classification_errors(PredictionOutput(logits, None, {}), spec, {"text": list("abcde")}, 3) is None
    with pytest.raises(ValueError, match="4 rows for 5 predictions"):
        classification_errors(PredictionOutput(logits, labels, {}), spec, {"text": list("abcd")}, 3)


def test_multi_label_by_binary_cross_entropy_and_regression_by_absolute_error():
    spec = LabelSpec(MULTI, ["a", "b"])
    logits = np.array([[4.0, -4.0], [-4.0, 4.0], [0.5, 0.5]])
    hot = np.array([[1, 0], [1, 0], [1, 1]])
    table = classification_errors(PredictionOutput(logits, hot, {}), spec, {"text": ["x", "y", "z"]}, 2).table
    assert list(table["text"]) == ["y", "z"] and list(table["true_labels"]) == ["a", "a;b"]
    assert list(table["predicted_labels"]) == ["b", "a;b"]

    values = np.array([[1.0], [3.0], [2.5]])
    table = classification_errors(PredictionOutput(values, np.array([1.2, 1.0, 2.0]), {}), LabelSpec(REGRESSION),
                                  {"text": ["x", "y", "z"]}, 2).table
    assert list(table["text"]) == ["y", "z"] and table["abs_error"].tolist() == pytest.approx([2.0, 0.5])


def test_translation_by_lowest_sentence_chrf_and_speech_by_highest_wer():
    table = translation_errors(["s1", "s2", "s3"], ["Ein Hund läuft.", "Zwei Männer.", "Ein Kind spielt."],
                               ["Ein Hund läuft.", "Katze", "Ein Kind spielte."], 2).table
    assert list(table["source"]) == ["s2", "s3"] and table["chrf"].is_monotonic_increasing

    table = speech_errors(["a.wav", "b.wav", "c.wav", "d.wav"], ["one two", "three", "", "four five"],
                          ["one two", "tree", "noise", "four"], [1.0, 0.5, 0.25, 2.0], normalize_text, 4).table
    # c.wav has no words to recognise: its WER is undefined and it ranks last.
    assert list(table["audio_file"]) == ["b.wav", "d.wav", "a.wav", "c.wav"]
    assert table["wer"].tolist()[:3] == [1.0, 0.5, 0.0] and np.isnan(table["wer"].iloc[3])
    assert list(table["duration_s"]) == [0.5, 2.0, 1.0, 0.25]


@pytest.mark.parametrize("count", [0, 3])
def test_error_examples_sets_the_rows_and_zero_turns_it_off(count, tiny_bert, csv_file, tmp_path, one_thread):
    from recipes import text_classification

    rows = [{"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": i % 2} for i in range(60)]  # 6 validation
    out = tmp_path / "run"
    results = text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", csv_file(rows),
                                        "--error_examples", str(count), *fast_args(out)])
    page = (out / "report.html").read_text()
    if count:
        assert len(pd.read_csv(out / "errors.csv")) == count and "error_analysis" in results
        assert "Error analysis" in page
    else:
        assert not (out / "errors.csv").exists() and not (out / "confused_pairs.csv").exists()
        assert "Error analysis" not in page and "Metrics" in page
