"""The text-classification recipe end to end, on real data where the claim is about learning."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import fast_args

from recipes import text_classification


@pytest.mark.slow
def test_string_labels_multiclass_trec(tiny_bert, test_data, tmp_path):
    out = tmp_path / "trec"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert,
        "--train_file", str(test_data / "squad_questions/train.tsv"),
        "--label_column", "kind", "--max_train_samples", "1000",
        *fast_args(out, num_train_epochs=3, learning_rate=2e-3, per_device_train_batch_size=32),
    ])
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["how many", "what", "when", "where", "who", "why"]
    assert config["label2id"]["where"] == 3
    # Validation was held out from the whole train file (10% of 1219, stratified) before the cap; the loss fell on it.
    assert results["eval_samples"] == 122 and results["train_samples"] == 1000
    assert results["eval_loss"] < results["before_loss"] - 0.1
    assert results["eval_accuracy"] > 0.5  # majority class is ~0.2
    # Error analysis over six classes: the mistakes counted per (true, predicted) pair add up to every mistake.
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == ["text", "true_label", "predicted_label", "confidence", "loss"] and len(errors) == 20
    pairs = pd.read_csv(out / "confused_pairs.csv")
    assert (pairs["true_label"] != pairs["predicted_label"]).all() and pairs["count"].is_monotonic_decreasing
    assert len(pairs) <= 30 and pairs["count"].sum() <= round((1 - results["eval_accuracy"]) * 122)


def _synthetic(n: int, seed: int = 0) -> list[dict]:
    """Sentences mentioning fruit and/or vehicles; the label set says which."""
    import random

    rng = random.Random(seed)
    fruit, vehicles, filler = ["apple", "banana", "cherry"], ["car", "truck", "bus"], ["today", "we", "saw", "a", "the"]
    rows = []
    for _ in range(n):
        labels = rng.choice([["fruit"], ["vehicle"], ["fruit", "vehicle"]])
        words = rng.sample(filler, 3) + [rng.choice(fruit if lab == "fruit" else vehicles) for lab in labels]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": labels})
    return rows


@pytest.mark.slow
def test_multi_label_from_jsonl(tiny_bert, tmp_path):
    train = tmp_path / "train.jsonl"
    pd.DataFrame(_synthetic(300)).to_json(train, orient="records", lines=True)
    out = tmp_path / "out"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", str(train), "--label_column", "labels",
        "--test_file", str(train), "--max_predict_samples", "10",
        *fast_args(out, num_train_epochs=8, learning_rate=3e-3, per_device_train_batch_size=16),
    ])
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["id2label"].values()) == ["fruit", "vehicle"]
    assert results["eval_loss"] < results["before_loss"]
    assert results["eval_f1_micro"] > 0.8
    assert "score_vehicle" in pd.read_csv(out / "predictions.csv").columns


def test_label_separator_and_regression_pairs(tiny_bert, csv_file, tmp_path):
    rows = [{"text": r["text"], "tags": ";".join(r["labels"])} for r in _synthetic(40)]
    from common.data import load_file
    from common.data.labels import infer_label_spec

    spec = infer_label_spec({"train": load_file(csv_file(rows), "--train_file")}, "tags", "train", separator=";")
    assert spec.problem_type == "multi_label_classification" and spec.names == ["fruit", "vehicle"]

    pairs = [{"s1": f"a {w} here", "s2": f"the {w} there", "score": (i % 5) * 0.75} for i, w in enumerate(["x", "y"] * 40)]
    out = tmp_path / "reg"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", csv_file(pairs, "pairs.csv"),
        "--text_columns", "s1", "s2", "--label_column", "score",
        *fast_args(out, num_train_epochs=2),
    ])
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    assert {"eval_mse", "eval_pearson", "eval_spearman"} <= results.keys()


@pytest.mark.slow
def test_sentence_pairs_go_to_the_tokenizer_as_pairs(tiny_bert, csv_file, tmp_path, monkeypatch):
    from common.models import loading as models

    calls = []
    load = models.load_processor

    def spy(*args, **kwargs):
        tokenizer = load(*args, **kwargs)
        original = tokenizer.__class__.__call__

        def record(self, *texts, **kw):
            calls.append(len(texts))
            return original(self, *texts, **kw)

        monkeypatch.setattr(tokenizer.__class__, "__call__", record)
        return tokenizer

    monkeypatch.setattr(text_classification, "load_processor", spy)
    pairs = [{"premise": f"a {i}", "hypothesis": f"b {i}", "label": i % 2} for i in range(20)]
    text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", csv_file(pairs),
        *fast_args(tmp_path / "o", num_train_epochs=1, do_eval="false", do_predict="false"),
    ])
    assert calls and set(calls) == {2}  # premise/hypothesis found by default and passed as a pair


@pytest.mark.slow
def test_resume_from_checkpoint(tiny_bert, test_data, tmp_path):
    out = tmp_path / "resume"
    common_args = ["--model_name_or_path", tiny_bert, "--train_file", str(test_data / "sms_spam/train.tsv"),
                   "--max_train_samples", "160", "--do_eval", "false", "--do_predict", "false"]
    text_classification.main([*common_args, *fast_args(out, num_train_epochs=2, save_strategy="steps", save_steps=10)])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    # Continue from the step-30 checkpoint into the same dir: only the last 10 steps run.
    resumed = text_classification.main([*common_args, "--resume_from_checkpoint", str(out / "checkpoint-30"),
                                        *fast_args(out, num_train_epochs=2, save_strategy="no")])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 40
    assert resumed["train_runtime"] > 0


@pytest.mark.slow
def test_each_run_loads_the_pretrained_model_once(tiny_bert, test_data, tmp_path, monkeypatch):
    """Trainer given model_init builds the model in __init__ and again in train(): the recipes hand it one."""
    from transformers import AutoModelForSequenceClassification

    loads = []
    load = AutoModelForSequenceClassification.from_pretrained
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained",
                        lambda *args, **kwargs: loads.append(args[0]) or load(*args, **kwargs))
    data = ["--model_name_or_path", tiny_bert, "--train_file", str(test_data / "squad_questions/train.tsv"),
            "--label_column", "kind", "--max_train_samples", "64", "--max_eval_samples", "32"]
    results = text_classification.main([*data, *fast_args(tmp_path / "one", do_predict=False)])
    assert len(loads) == 1
    assert "before_loss" in results  # evaluated before training, on that one model
    loads.clear()
    text_classification.main([*data, *fast_args(tmp_path / "cv", do_predict=False, cv_folds=2)])
    assert len(loads) == 2  # one per fold


def test_eval_before_training_false_skips_the_first_evaluation(tiny_bert, test_data, tmp_path):
    out = tmp_path / "run"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", str(test_data / "squad_questions/train.tsv"),
        "--label_column", "kind", "--max_train_samples", "64", "--max_eval_samples", "32",
        *fast_args(out, do_predict=False, eval_before_training=False),
    ])
    written = json.loads((out / "all_results.json").read_text())
    assert not any(key.startswith("before_") for key in [*results, *written])
    assert "eval_accuracy" in written and "train_loss" in written
