"""Regularization: weight decay spares biases and norms, --dropout reaches the config, label smoothing, early stopping."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fast_args
from transformers import (
    AutoModelForSequenceClassification,
    TrainingArguments,
    ViTConfig,
    Wav2Vec2Config,
    WhisperConfig,
)

import common.training.run
from common.core.config import parse_args
from common.core.errors import RecipeInputError
from common.models.loading import ModelArguments, set_dropout
from common.training.trainer import FinetuneTrainer
from recipes import text_classification


def _sms(test_data, train: int = 32, evaluation: int = 32) -> list[str]:
    return ["--train_file", str(test_data / "sms_spam/train.tsv"), "--validation_file", str(test_data / "sms_spam/dev.tsv"),
            "--max_train_samples", str(train), "--max_eval_samples", str(evaluation)]


def test_weight_decay_spares_biases_and_norms(tiny_bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.05, report_to="none")
    optimizer = FinetuneTrainer(model=model, args=args).create_optimizer()
    name_of = {id(p): name for name, p in model.named_parameters()}
    decayed = {name_of[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    spared = {name_of[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed and spared and decayed | spared == set(name_of.values())
    norms_and_biases = {n for n in name_of.values() if n.endswith(".bias") or "LayerNorm" in n}
    assert spared == norms_and_biases
    assert "bert.encoder.layer.0.attention.self.query.weight" in decayed
    assert "bert.embeddings.LayerNorm.weight" in spared and "classifier.bias" in spared


def test_dropout_and_label_smoothing_reach_the_run(tiny_bert, test_data, tmp_path, monkeypatch):
    trainers = []
    build = common.training.run.build_trainer
    monkeypatch.setattr(common.training.run, "build_trainer", lambda *a, **k: trainers.append(build(*a, **k)) or trainers[-1])
    out = tmp_path / "run"
    text_classification.main(["--model_name_or_path", tiny_bert, *_sms(test_data), "--dropout", "0.25",
                              "--label_smoothing", "0.1", *fast_args(out)])
    config = json.loads((out / "config.json").read_text())
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        assert config[key] == 0.25, key
    model = AutoModelForSequenceClassification.from_pretrained(out)
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.25}
    assert trainers[0].args.label_smoothing_factor == 0.1
    assert trainers[0].label_smoother is not None and trainers[0].label_smoother.epsilon == 0.1


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        (Wav2Vec2Config(), {"hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout",
                            "final_dropout"}),
        (WhisperConfig(), {"dropout", "attention_dropout", "activation_dropout"}),
        (ViTConfig(), {"hidden_dropout_prob", "attention_probs_dropout_prob"}),
    ],
    ids=["wav2vec2", "whisper", "vit"],
)
def test_dropout_fields_of_other_families(config, fields):
    changed = set(set_dropout(config, 0.3))
    assert fields <= changed
    assert all(getattr(config, name) == 0.3 for name in changed)
    assert not any("mask" in name or "layerdrop" in name for name in changed)  # SpecAugment / LayerDrop are not dropout


def test_dropout_out_of_range_raises(tiny_bert):
    from common.models.loading import load_config

    with pytest.raises(RecipeInputError, match="--dropout 1.5 must be in"):
        load_config(ModelArguments(model_name_or_path=tiny_bert, dropout=1.5))


def test_label_smoothing_alias_and_its_limits(tiny_bert, csv_file, tmp_path):
    (training_args,) = parse_args((TrainingArguments,), ["--output_dir", str(tmp_path), "--label_smoothing", "0.2"])
    assert training_args.label_smoothing_factor == 0.2
    regression = csv_file([{"text": f"row {i}", "label": i / 10} for i in range(12)], "regression.csv")
    with pytest.raises(RecipeInputError, match="--label_smoothing applies to single-label classification, not regression"):
        text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", regression,
                                  "--label_smoothing", "0.1", *fast_args(tmp_path / "r")])
    multi = csv_file([{"text": f"row {i}", "label": ["a;b", "a", "b"][i % 3]} for i in range(12)], "multi.csv")
    with pytest.raises(RecipeInputError, match="not multi_label_classification"):
        text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", multi, "--label_separator", ";",
                                  "--label_smoothing", "0.1", *fast_args(tmp_path / "m")])


def test_early_stopping_stops_before_the_last_epoch(tiny_bert, test_data, tmp_path):
    # No change in eval loss can beat a threshold of 1e9: patience 1 ends training after the second evaluation.
    out = tmp_path / "stop"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, *_sms(test_data, train=16, evaluation=16),
        "--early_stopping_patience", "1", "--early_stopping_threshold", "1e9",
        *fast_args(out, num_train_epochs=5),
    ])
    state = json.loads((out / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert results["epoch"] <= 2 and len(evaluations) <= 2
    assert state["global_step"] < 5 * 2  # 2 steps of 8 rows per epoch; 5 epochs would have run 10
    assert state["best_model_checkpoint"] is not None  # load_best_model_at_end is on with early stopping
