"""Every shipped config runs on a fresh clone: its options parse with its recipe, its data is a Hub dataset or
files inside the repository, and its header shows how to launch it. Data named on the command line replaces a
Hub dataset named in the YAML. The accelerate configs in accelerate_configs/ load, and their DeepSpeed files leave
the batch and learning-rate settings to the run ("auto")."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re

import pytest
import yaml
from conftest import ROOT
from transformers import TrainingArguments

from common.core import config as config_module
from common.core.config import RunArguments, parse_args
from common.dispatch import FinetuneArguments
from common.models.loading import ModelArguments
from recipes import available
from recipes.text_classification import DEFAULTS, TextDataArguments

CONFIGS = [(recipe, path) for recipe, paths in available().items() for path in paths]
# The option groups of the text-classification and sentiment recipes.
TYPES = (ModelArguments, TextDataArguments, FinetuneArguments, RunArguments, TrainingArguments)
# Options naming the data a run reads; a config with none of them must name a Hub dataset.
DATA_OPTION = re.compile(r"^((train|validation|test)_(file|dir|source_file|target_file)|audio_folder)$")
# Paths a run writes or caches into, not data it reads.
NOT_INPUT_PATHS = {"output_dir", "logging_dir", "cache_dir"}


class Parsed(Exception):
    """Raised by the patched parse_args: the recipe's options are parsed and nothing else runs."""

    def __init__(self, parsed: tuple):
        self.parsed = parsed


def parse_with_recipe(recipe: str, argv: list[str], monkeypatch) -> tuple:
    """The recipe's own main() parses argv (its dataclasses, its defaults) and stops right after."""
    module = importlib.import_module(f"recipes.{recipe}")
    # sentiment delegates to text_classification.main, which calls its module's parse_args.
    owner = importlib.import_module("recipes.text_classification") if recipe == "sentiment" else module

    def parse_only(*args, **kwargs):
        raise Parsed(config_module.parse_args(*args, **kwargs))

    monkeypatch.setattr(owner, "parse_args", parse_only)
    with pytest.raises(Parsed) as stop:
        module.main(argv)
    return stop.value.parsed


def data_args(parsed: tuple):
    return next(a for a in parsed if type(a).__name__.endswith("DataArguments"))


def values(tree) -> list:
    """Every scalar value in a YAML tree (mappings and lists walked)."""
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in values(value)]
    if isinstance(tree, list):
        return [v for value in tree for v in values(value)]
    return [tree]


@pytest.mark.parametrize(("recipe", "path"), CONFIGS, ids=[f"{r}/{p.stem}" for r, p in CONFIGS])
def test_shipped_config_runs_on_a_fresh_clone(recipe, path, monkeypatch):
    options = yaml.safe_load(path.read_text(encoding="utf-8"))

    # (a) Every key is an option of the recipe, and the values parse.
    data = data_args(parse_with_recipe(recipe, ["--config", str(path)], monkeypatch))

    # (b) Paths it reads exist inside the repository; nothing points at the development-only ../shared/data.
    for key, value in options.items():
        if (key.endswith(("_file", "_dir")) or key == "audio_folder") and key not in NOT_INPUT_PATHS and value:
            resolved = (ROOT / value).resolve()
            assert resolved.exists(), f"{path.name}: {key} {value} does not exist"
            assert resolved.is_relative_to(ROOT), f"{path.name}: {key} {value} is outside the repository"
    assert not [v for v in values(options) if "shared/data" in str(v)], f"{path.name} names ../shared/data"

    # (c) Without local data it names a Hub dataset.
    if not any(DATA_OPTION.match(key) and value for key, value in options.items()):
        assert options.get("dataset_name"), f"{path.name} names neither data files nor a dataset_name"
        assert data.dataset_name == options["dataset_name"]

    # (d) The header comment shows the exact launch commands.
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    command = f"recipes/{recipe}.py --config recipes/configs/{recipe}/{path.name}"
    assert any(f"python {command}" in line for line in header), f"{path.name}: no `python {command}` in its header"
    assert any(f"accelerate launch {command}" in line for line in header), f"{path.name}: no accelerate command"


def test_command_line_file_overrides_the_yaml_hub_dataset(tmp_path, monkeypatch):
    from common.data import load_splits

    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,1\nbad,0\nfine,1\n", encoding="utf-8")
    config = ROOT / "recipes/configs/text_classification/sst2_minilm.yaml"

    data = data_args(parse_with_recipe("text_classification", ["--config", str(config)], monkeypatch))
    assert data.dataset_name == "SetFit/sst2" and data.train_file is None

    data = data_args(parse_with_recipe("text_classification", ["--config", str(config), "--train_file", str(train)],
                                       monkeypatch))
    assert data.dataset_name is None and data.dataset_config_name is None and data.train_file == str(train)
    assert data.text_columns == ["text"]  # the rest of the config still applies
    splits = load_splits(data)  # the run reads the file, not the Hub (the tests run offline)
    assert list(splits) == ["train"] and splits["train"]["text"] == ["good", "bad", "fine"]


@pytest.mark.parametrize(
    ("recipe", "name", "argv"),
    [
        ("image_classification", "clothing_tiny_convnext", ["--train_dir", "imgs/train"]),
        ("translation", "opus_mt_en_de", ["--train_source_file", "a.en", "--train_target_file", "a.de"]),
        ("speech_recognition", "fsdd_whisper_tiny", ["--audio_folder", "clips"]),
        ("text_classification", "multilabel_csv", ["--validation_file=v.csv"]),
    ],
)
def test_each_kind_of_local_data_clears_the_yaml_dataset(recipe, name, argv, monkeypatch):
    config = ROOT / f"recipes/configs/{recipe}/{name}.yaml"
    data = data_args(parse_with_recipe(recipe, ["--config", str(config), *argv], monkeypatch))
    assert data.dataset_name is None and data.dataset_config_name is None


def test_dataset_name_given_on_the_command_line_is_kept(monkeypatch):
    config = ROOT / "recipes/configs/speech_recognition/fsdd_tiny_ctc.yaml"
    argv = ["--config", str(config), "--train_file", "m.csv", "--dataset_name", "someone/speech"]
    data = data_args(parse_with_recipe("speech_recognition", argv, monkeypatch))
    assert data.dataset_name == "someone/speech" and data.train_file == "m.csv"


def test_sentiment_demo_config_is_the_recipes_embedded_default(monkeypatch):
    """recipes/configs/sentiment/demo.yaml resolves to the options `python recipes/sentiment.py` runs with when given
    none: the same data (validation held out of train, never the test file), model and training settings."""
    from recipes import text_classification

    def resolved(argv: list[str]) -> list[dict]:
        """Every option group as the recipe holds it once its sample data is filled in, paths made absolute."""
        def stop(training_args, run_args):
            raise Parsed((*run_args.arguments, run_args))

        monkeypatch.setattr(text_classification, "setup_run", stop)
        with pytest.raises(Parsed) as stopped:
            importlib.import_module("recipes.sentiment").main(argv)
        groups = []
        for group in stopped.value.parsed:
            values = group.to_dict() if hasattr(group, "to_dict") else {
                f.name: getattr(group, f.name) for f in dataclasses.fields(group) if f.init}
            groups.append({k: str((ROOT / v).resolve()) if isinstance(v, str) and (ROOT / v).is_file() else v
                           for k, v in values.items()})
        return groups

    monkeypatch.chdir(ROOT)  # `make demo` runs from the repository root, where the config's paths point
    embedded, config = resolved([]), resolved(["--config", "recipes/configs/sentiment/demo.yaml"])
    assert len(embedded) == len(config) == 5  # model, data, fine-tuning, training and run options
    for ours, theirs in zip(embedded, config):
        assert {k: (v, theirs[k]) for k, v in ours.items() if theirs[k] != v} == {}


def test_every_shipped_config_parses():
    from recipes import available

    for recipe, configs in available().items():
        for path in configs:
            header = [line for line in path.read_text().splitlines() if line.startswith("#")]
            assert any("python recipes/" in line for line in header), path
            assert any("accelerate launch" in line for line in header), path
            if recipe in ("text_classification", "sentiment"):
                parse_args(TYPES, ["--config", str(path)], DEFAULTS)


# ---- accelerate_configs/ ------------------------------------------------------------------------------------

ACCELERATE_CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.stem for p in ACCELERATE_CONFIGS])
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    header = path.read_text().splitlines()[1:3]
    assert any("accelerate launch --config_file accelerate_configs/" + path.name in line for line in header)
    if path.stem == "cpu_ddp":
        assert config.use_cpu and config.num_processes == 2


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_uses_auto(stage):
    config = json.loads((ROOT / f"accelerate_configs/deepspeed_zero{stage}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        assert config[key] == "auto"
    assert config["optimizer"]["params"]["lr"] == "auto"
