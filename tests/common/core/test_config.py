"""Config files, command-line overrides and --help: defaults < YAML < command line, and bad keys named."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import TrainingArguments

from common.core.config import RunArguments, parse_args
from common.core.errors import RecipeInputError
from common.data.options import DataArguments
from common.dispatch import FinetuneArguments
from common.models.loading import ModelArguments
from recipes.text_classification import DEFAULTS, TextDataArguments

TYPES = (ModelArguments, TextDataArguments, FinetuneArguments, RunArguments, TrainingArguments)


def test_defaults_then_yaml_then_command_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\nnum_train_epochs: 7\ntext_columns: [a, b]\nfreeze: [backbone]\n"
                      "label_smoothing: 0.1\n")
    model, data, finetune, _, training = parse_args(
        TYPES, ["--config", str(config), "--num_train_epochs", "2", "--output_dir", str(tmp_path / "o")], DEFAULTS
    )
    assert training.learning_rate == pytest.approx(1e-3)  # YAML beats the recipe default (5e-5)
    assert training.num_train_epochs == 2  # the command line beats YAML
    assert training.per_device_train_batch_size == DEFAULTS["per_device_train_batch_size"]
    assert data.text_columns == ["a", "b"] and finetune.freeze == ["backbone"]
    assert training.label_smoothing_factor == pytest.approx(0.1)  # alias


@pytest.mark.parametrize(
    ("yaml_text", "argv", "message"),
    [
        ("learning_rat: 0.1\n", [], "unknown key 'learning_rat' in .*did you mean 'learning_rate'"),
        ("", ["--num_train_epoch", "2"], "unknown option '--num_train_epoch'.*did you mean 'num_train_epochs'"),
        ("", ["--validation_split", "1.5"], r"--validation_split 1.5 is outside \(0, 1\)"),
        ("- a\n- b\n", [], "must be a mapping"),
    ],
)
def test_bad_options_name_the_key(tmp_path, yaml_text, argv, message):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(RecipeInputError, match=message):
        parse_args(TYPES, ["--config", str(config), *argv])


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "recipes/text_classification.py", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--text_columns", "--freeze", "--learning_rate", "--config", "--overwrite_output_dir", "--peft"):
        assert option in result.stdout
    assert "Regex patterns of parameters kept trainable" in " ".join(result.stdout.split())


def test_data_arguments_are_shared():
    assert issubclass(TextDataArguments, DataArguments)
