"""The sentiment recipe end to end: MiniLM learns the hand-written demo reviews, labels 1/2 read as
negative/positive, and the demo never selects on its test file."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import fast_args
from transformers import pipeline

from recipes import sentiment


@pytest.mark.slow
def test_minilm_learns_sst2(minilm, tmp_path):
    out = tmp_path / "sst2"
    demo = sentiment.DEMO_DATA  # hand-written reviews (MIT): 280 train, 80 test, which here also validates
    results = sentiment.main([
        "--model_name_or_path", minilm,
        "--train_file", str(demo / "train.csv"),
        "--validation_file", str(demo / "test.csv"),
        "--test_file", str(demo / "test.csv"),
        "--max_train_samples", "500", "--max_predict_samples", "50",
        *fast_args(out, num_train_epochs=3, per_device_train_batch_size=16, learning_rate=1e-4,
                   train_sampling_strategy="group_by_length"),
    ])
    assert results["eval_accuracy"] >= 0.75
    assert results["eval_accuracy"] > results["before_accuracy"] + 0.15
    for name in ("all_results.json", "training_curves.png", "confusion_matrix.png", "predictions.csv", "README.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["eval_accuracy"] == pytest.approx(results["eval_accuracy"])

    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 50
    assert set(predictions["prediction"]) <= {"negative", "positive"}
    assert predictions["score"].between(0.5, 1.0).all()

    classify = pipeline("text-classification", model=str(out), device="cpu")
    # Each row's prediction belongs to its own sentence: length grouping must not reorder prediction.
    assert [p["label"] for p in classify(list(predictions["text"]))] == list(predictions["prediction"])
    labels = [p["label"] for p in classify(["A moving, beautifully acted film.", "Dull, lifeless and far too long."])]
    assert labels == ["positive", "negative"]

    # Error analysis: the 20 highest-loss validation texts, worst first. With two classes every mistake's loss
    # (> ln 2) is above every correct row's, so the mistakes come first.
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == ["text", "true_label", "predicted_label", "confidence", "loss"]
    assert len(errors) == 20 and errors["loss"].is_monotonic_decreasing and errors["confidence"].between(0.5, 1).all()
    dev = pd.read_csv(demo / "test.csv")
    mistakes = min(20, round((1 - results["eval_accuracy"]) * len(dev)))
    assert list(errors["true_label"] != errors["predicted_label"]) == [True] * mistakes + [False] * (20 - mistakes)
    assert set(errors["text"]) <= set(dev["text"])
    pairs = pd.read_csv(out / "confused_pairs.csv")
    assert pairs["count"].sum() == round((1 - results["eval_accuracy"]) * len(dev))  # every mistake, by pair
    assert (out / "report.html").is_file() and json.loads((out / "run_config.json").read_text())["input_columns"] == ["text"]


def _config(out) -> dict:
    return json.loads((out / "config.json").read_text())


@pytest.mark.usefixtures("one_thread")
def test_labels_1_2_are_negative_positive(tiny_bert, tmp_path):
    """Reviews relabelled 1/2, the usual review-polarity layout: two classes, named negative/positive."""
    data = pd.read_csv(sentiment.DEMO_DATA / "train.csv")
    data["label"] = data["label"].map({"negative": 1, "positive": 2})
    train = tmp_path / "reviews_12.tsv"
    data.to_csv(train, sep="\t", index=False)
    out = tmp_path / "out"
    sentiment.main(["--model_name_or_path", tiny_bert, "--train_file", str(train), *fast_args(out)])
    assert _config(out)["id2label"] == {"0": "negative", "1": "positive"}
    columns = pd.read_csv(out / "predictions.csv").columns  # validation predictions: no test file
    assert "score_neutral" not in columns and {"score_negative", "score_positive"} <= set(columns)


def test_demo_does_not_select_on_its_test_file():
    """The demo's sample data validates on rows held out of train, never on the test file it reports."""
    assert sentiment.SAMPLE_DATA.get("validation_file") != sentiment.SAMPLE_DATA["test_file"]
