"""Hyperparameter search: the space format and its errors, and a 2-trial search that retrains the best."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from common.core.errors import RecipeInputError
from common.strategies.hpo import DEFAULT_SPACE, parse_space
from tests.conftest import fast_args


def test_space_defaults_and_parsing():
    assert parse_space(None) is DEFAULT_SPACE
    space = parse_space("{learning_rate: {type: loguniform, low: 1e-5, high: 1e-3}, epochs: {type: int, low: 1, high: 3}}")
    # Unquoted 1e-5 is a string to YAML 1.1; aliases resolve to TrainingArguments fields.
    assert space == {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                     "num_train_epochs": {"type": "int", "low": 1, "high": 3}}
    assert parse_space({"per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]}})


@pytest.mark.parametrize("space, message", [
    ({"learning_rte": {"type": "uniform", "low": 0, "high": 1}}, "learning_rte (did you mean 'learning_rate'?)"),
    ({"weight_decay": {"type": "gaussian", "low": 0, "high": 1}}, "unknown distribution type 'gaussian'"),
    ({"weight_decay": {"type": "uniform", "low": 0.2, "high": 0.1}}, "low < high"),
    ({"learning_rate": {"type": "loguniform", "low": 0, "high": 1e-3}}, "must be positive"),
    ({"num_train_epochs": {"type": "int", "low": 1.5, "high": 3}}, "integer low and high"),
    ({"seed": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"seed": {"type": "categorical", "values": [1, 2]}}, "takes choices"),
    ("[1, 2]", "non-empty mapping"),
])
def test_space_errors_name_the_problem(space, message):
    with pytest.raises(RecipeInputError, match="hpo_space") as err:
        parse_space(space)
    assert message in str(err.value)


def test_two_trials_write_results_and_retrain_the_best(tiny_bert, tmp_path, csv_file):
    from recipes import text_classification

    rows = [{"sentence": f"{'good fine' if i % 2 else 'bad poor'} movie {i}", "label": i % 2} for i in range(40)]
    train, dev = csv_file(rows[:32], "train.csv"), csv_file(rows[32:], "dev.csv")
    out = tmp_path / "run"
    # The space as a YAML mapping, beside an integer warmup_steps that the search draws fractions for.
    config = tmp_path / "hpo.yaml"
    config.write_text(
        "warmup_steps: 0\n"
        "hpo_space:\n"
        "  learning_rate: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n"
        "  per_device_train_batch_size: {type: categorical, choices: [4, 8]}\n"
        "  warmup_steps: {type: uniform, low: 0.05, high: 0.2}\n"
    )
    results = text_classification.main([
        "--config", str(config), "--model_name_or_path", tiny_bert, "--train_file", train, "--validation_file", dev,
        "--hpo_trials", "2", "--do_predict", "false", "--save_strategy", "epoch", *fast_args(out),
    ])

    table = pd.read_csv(out / "hpo_results.csv")
    assert list(table["trial"]) == [0, 1]
    assert set(table.columns) >= {"learning_rate", "per_device_train_batch_size", "warmup_steps", "objective"}
    assert table["objective"].between(0, 1).all() and (out / "hpo.png").stat().st_size > 0
    assert table["learning_rate"].nunique() == 2
    # The final model was retrained with the best trial's configuration.
    best = table.loc[table["objective"].idxmax()]
    retrained = json.loads((out / "training_args.json").read_text())
    assert retrained["learning_rate"] == pytest.approx(best["learning_rate"])
    assert retrained["per_device_train_batch_size"] == best["per_device_train_batch_size"]
    assert retrained["warmup_steps"] == pytest.approx(best["warmup_steps"])
    assert retrained["seed"] == best["seed"]
    assert (out / "config.json").is_file() and "eval_accuracy" in results
    # Trials leave no checkpoints; the retrain keeps the ones it was asked for.
    assert not (out / "hpo").exists()
    assert all(p.parent == out for p in out.rglob("checkpoint-*"))


def test_hpo_needs_a_validation_split():
    from common.dispatch import FinetuneArguments
    from common.strategies.hpo import run_hpo
    from common.training.task import Task

    task = Task("t", lambda: None, None, None, None, None, None, None, "accuracy", "text-classification")
    with pytest.raises(RecipeInputError, match="validation split"):
        run_hpo(task, None, FinetuneArguments(hpo_trials=2))


def test_trials_take_every_value_of_the_space_as_drawn(tmp_path, monkeypatch):
    """Trainer casts a trial's value to the type of the argument it replaces: with an integer warmup_steps from the
    YAML, a drawn 0.1 would train as 0 while the retrain of the best used 0.1. Trials start from arguments of a
    type that keeps every value the space can draw."""
    from transformers import TrainingArguments

    from common.dispatch import FinetuneArguments
    from common.strategies import hpo
    from common.training.task import Task

    class Started(Exception):
        pass

    def build_trainer(task, trial_args, finetune_args):
        raise Started(trial_args)

    monkeypatch.setattr(hpo, "build_trainer", build_trainer)
    space = {"warmup_steps": {"type": "categorical", "choices": [0.1, 0.2]},
             "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
             "num_train_epochs": {"type": "int", "low": 1, "high": 3}}
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=0, weight_decay=0, num_train_epochs=3)
    task = Task("t", lambda: None, None, [0], None, None, None, None, "accuracy", "text-classification")
    with pytest.raises(Started) as started:
        hpo.run_hpo(task, args, FinetuneArguments(hpo_trials=1, hpo_space=json.dumps(space)))
    trial_args = started.value.args[0]
    for name, spec in space.items():
        for value in spec.get("choices", [spec.get("low"), spec.get("high")]):
            assert type(getattr(trial_args, name))(value) == value, (name, value)
