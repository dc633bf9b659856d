"""FinetuneTrainer and what a run hands it: decisions for several processes (DDP's find_unused_parameters, and what
is refused or made safe), a two-process DDP run, and regularization (weight decay spares biases and norms,
--dropout, label smoothing, early stopping).

The decisions are tested in one process, several simulated with WORLD_SIZE or a patched world_size. The
two-process run is real: `accelerate launch` on CPU, against one process with the same effective batch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import ROOT, fast_args, subprocess_env
from helpers import SMALL, bert, marian
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    TrainingArguments,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
)

import common.training.single_run
from common.core.config import RunArguments, parse_args
from common.core.errors import RecipeInputError
from common.dispatch import FinetuneArguments
from common.toolkit.adapters import apply_peft
from common.toolkit.feature_cache import CachedHeadModel, _cached_split
from common.toolkit.freezing import GradualUnfreezingCallback, apply_freezing
from common.training.trainer import FinetuneTrainer, choose_find_unused_parameters
from recipes import text_classification
from recipes.text_classification import DEFAULTS, TextDataArguments


def wav2vec2(**config) -> Wav2Vec2ForSequenceClassification:
    options = dict(
        vocab_size=16,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=8,
        **SMALL,
    )
    return Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**{**options, **config}))


def unused_trainable(model: nn.Module) -> set[str]:
    """Trainable parameters that get no gradient from one training step: what DDP would need to find."""
    g = torch.Generator().manual_seed(0)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if isinstance(inner, Wav2Vec2ForSequenceClassification):
        batch = {"input_values": torch.randn(2, 400, generator=g)}
    else:
        batch = {"input_ids": torch.randint(3, 64, (2, 7), generator=g)}
    model.train()
    torch.manual_seed(0)
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    return {name for name, p in model.named_parameters() if p.requires_grad and p.grad is None}


def frozen(model: nn.Module, *entries: str) -> nn.Module:
    apply_freezing(model, FinetuneArguments(freeze=list(entries)))
    return model


def checkpointed(model):
    model.gradient_checkpointing_enable()
    return model


# ---- ddp_find_unused_parameters ------------------------------------------------------------------------------

# builder, the expected choice, words of its reason. Each case is also checked against one real training
# step: False must leave no trainable parameter without a gradient.
CASES = {
    "full fine-tune": (bert, False, "every trainable parameter is used"),
    "freeze bottom:1": (lambda: frozen(bert(), "bottom:1"), False, "frozen ones are outside"),
    "freeze backbone": (lambda: frozen(bert(), "backbone"), False, "frozen ones are outside"),
    "lora": (lambda: apply_peft(bert(), FinetuneArguments(peft="lora")), False, "PEFT"),
    "activation checkpointing": (lambda: checkpointed(bert()), False, "activation checkpointing"),
    "wav2vec2 without layerdrop": (lambda: wav2vec2(layerdrop=0.0), False, "every trainable parameter"),
    "wav2vec2 layerdrop": (lambda: wav2vec2(layerdrop=0.1), True, "layerdrop=0.1 skips random layers"),
    "wav2vec2 layerdrop under lora": (
        lambda: apply_peft(wav2vec2(layerdrop=0.1), FinetuneArguments(peft="lora")),
        True,
        "layerdrop=0.1",
    ),
    "wav2vec2 feature masking only": (
        lambda: wav2vec2(layerdrop=0.0, mask_time_prob=0.0, mask_feature_prob=0.1),
        True,
        "masked_spec_embed",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_find_unused_parameters_follows_the_model(case):
    build, expected, reason = CASES[case]
    torch.manual_seed(0)
    model = build()
    find_unused, why = choose_find_unused_parameters(model)
    assert find_unused is expected and reason in why
    if not expected:
        assert unused_trainable(model) == set()


def test_find_unused_parameters_where_parameters_do_miss_gradients():
    # With certain layer drop every layer is skipped: the parameters True protects DDP from, made visible.
    model = wav2vec2(layerdrop=1.0)
    assert choose_find_unused_parameters(model)[0] is True
    assert any(".encoder.layers." in name for name in unused_trainable(model))
    assert "wav2vec2.masked_spec_embed" in unused_trainable(
        wav2vec2(layerdrop=0.0, mask_time_prob=0.0, mask_feature_prob=0.1)
    )


def test_find_unused_parameters_for_seq2seq_layerdrop_cached_heads_and_unknown_models():
    encoder_drop = marian()
    encoder_drop.config.encoder_layerdrop = 0.2
    assert choose_find_unused_parameters(encoder_drop) == (
        True,
        "encoder_layerdrop=0.2 skips random layers in training, so their weights miss gradients",
    )
    assert choose_find_unused_parameters(marian())[0] is False
    assert choose_find_unused_parameters(CachedHeadModel(bert(), "classifier", ["dropout"]))[0] is False
    assert choose_find_unused_parameters(nn.Linear(2, 2))[0] is True  # unknown: keep DDP's safe setting
    # Asked for through TrainingArguments rather than on the model: the same answer as checkpointing.
    assert (
        "activation checkpointing" in choose_find_unused_parameters(bert(), activation_checkpointing=True)[1]
    )


@pytest.mark.parametrize(
    "explicit, build, expected",
    [
        (None, bert, False),  # Trainer alone would say True: with model_init the model does not exist yet
        (None, lambda: wav2vec2(layerdrop=0.1), True),
        (True, bert, True),  # the user's value is kept
        (False, lambda: wav2vec2(layerdrop=0.1), False),
    ],
)
def test_trainer_hands_the_choice_to_ddp(tmp_path, explicit, build, expected):
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, ddp_find_unused_parameters=explicit
    )
    trainer = FinetuneTrainer(model_init=build, args=args)
    assert trainer.accelerator.ddp_handler.find_unused_parameters is expected
    trainer.create_accelerator_and_postprocess()  # as a hyperparameter trial does
    assert trainer.accelerator.ddp_handler.find_unused_parameters is expected


# ---- several processes: refused or made safe ----------------------------------------------------------------

TYPES = (TextDataArguments, FinetuneArguments, RunArguments, TrainingArguments)


def test_unfreeze_schedule_is_refused_under_several_processes(monkeypatch, tmp_path):
    argv = ["--unfreeze_schedule", "epoch", "--output_dir", str(tmp_path)]
    assert parse_args(TYPES, argv, DEFAULTS)[1].unfreeze_schedule == "epoch"  # one process: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RecipeInputError) as err:
        parse_args(TYPES, argv, DEFAULTS)
    message = str(err.value)
    assert "needs a single process, but 2 are running" in message
    assert (
        "never be all-reduced" in message and "--freeze bottom:N" in message and "--layer_lr_decay" in message
    )
    # A Trainer built by hand, past parse_args, is stopped when training begins.
    callback = GradualUnfreezingCallback(FinetuneArguments(unfreeze_schedule="epoch"))
    with pytest.raises(RecipeInputError, match="needs a single process, but 2 are running"):
        callback.on_train_begin(SimpleNamespace(world_size=2), None, None, model=bert())


def test_other_toolkit_options_run_under_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    FinetuneArguments.apply_policies(
        {
            "cv_folds": 3,
            "hpo_trials": 4,
            "early_stopping_patience": 2,
            "cache_features": True,
            "freeze": ["bottom:2"],
            "layer_lr_decay": 0.8,
            "peft": "lora",
        },
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_hpo_never_prunes_under_several_processes(monkeypatch, tmp_path, processes):
    import optuna

    from common.strategies import hpo

    seen = {}

    class Stop(Exception):
        pass

    class Searcher:
        def hyperparameter_search(self, **kwargs):
            seen.update(kwargs)
            raise Stop

    monkeypatch.setattr(hpo, "build_trainer", lambda *args, **kwargs: Searcher())
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: processes))
    task = SimpleNamespace(eval_dataset=[0], main_metric="accuracy", greater_is_better=True)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(Stop):
        hpo.run_hpo(task, args, FinetuneArguments(hpo_trials=8))
    # Rank 0 alone holds the study: a trial pruned there would leave the other ranks training, then waiting.
    if processes > 1:
        assert isinstance(seen["pruner"], optuna.pruners.NopPruner)
    else:
        assert seen["pruner"] is None  # optuna's default


def test_feature_cache_keeps_the_copy_another_node_wrote_first(monkeypatch, tmp_path):
    data = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7]] * 4, "labels": [0, 1, 0, 1]})
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True
    )
    save = datasets.Dataset.save_to_disk

    def save_after_another_node(self, path, **kwargs):
        save(self, path, **kwargs)
        final = Path(path).with_name(Path(path).name.split(".partial")[0])
        shutil.copytree(path, final)  # the other node's main process renamed its copy first

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_after_another_node)
    cached = _cached_split(bert().eval(), "classifier", data, None, args, "key", "train")
    assert len(cached) == 4 and cached[0]["features"].shape == (16,)
    assert [
        p.name.startswith("train-") and ".partial" not in p.name
        for p in (tmp_path / "feature_cache").iterdir()
    ] == [True]


def test_length_grouped_shards_cover_every_row_once_in_every_epoch():
    """Under DDP each process iterates its own copy of the train sampler and keeps its shard of the batches.
    Whatever else each process draws from its global generator (dropout, augmentation), every epoch's shards
    together hold every train row exactly once, and each epoch has an order of its own."""
    from accelerate.data_loader import BatchSamplerShard

    from common.training.trainer import ShuffledLengthGroupedSampler

    lengths = torch.randint(3, 40, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    orders = []
    for epoch in range(3):
        shards = []
        for rank in range(2):
            torch.manual_seed(100 * rank + epoch)  # the processes' global generators differ
            sampler = ShuffledLengthGroupedSampler(lengths, 4, seed=42)
            sampler.set_epoch(epoch)
            batches = torch.utils.data.BatchSampler(sampler, 4, drop_last=False)
            shards.append([i for batch in BatchSamplerShard(batches, num_processes=2, process_index=rank) for i in batch])
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(64))
        orders.append(shards[0])
    assert orders[0] != orders[1] != orders[2]


# ---- two processes for real ----------------------------------------------------------------------------------

def _run(launcher: list[str], out: Path, tiny_bert: str, test_data: Path, batch: int) -> dict:
    args = ["--model_name_or_path", tiny_bert, "--train_file", str(test_data / "sms_spam/train.tsv"),
            "--validation_file", str(test_data / "sms_spam/dev.tsv"), "--max_train_samples", "640",
            "--max_eval_samples", "200", "--do_predict", "false",
            *fast_args(out, num_train_epochs=2, learning_rate=2e-3, per_device_train_batch_size=batch)]
    result = subprocess.run([*launcher, "recipes/text_classification.py", *args], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"results": json.loads((out / "all_results.json").read_text()), "log": result.stdout + result.stderr}


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_single_process(tiny_bert, test_data, tmp_path):
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch",
                  "--config_file", str(ROOT / "accelerate_configs/cpu_ddp.yaml")]
    ddp = _run(accelerate, tmp_path / "ddp", tiny_bert, test_data, batch=8)
    single = _run([sys.executable], tmp_path / "single", tiny_bert, test_data, batch=16)

    assert "effective batch 16 = 8 per device x 2 processes" in ddp["log"]
    assert "ddp_find_unused_parameters=False: every trainable parameter is used" in ddp["log"]
    # Same effective batch, same number of optimizer steps; only the shuffling order differs between the
    # samplers, so eval metrics agree within a small tolerance. Both runs learn (from 0.69), and mid-curve the
    # order moves the eval loss by about 0.12.
    assert ddp["results"]["train_samples"] == single["results"]["train_samples"] == 640
    assert all(run["results"]["eval_loss"] < run["results"]["before_loss"] - 0.1 for run in (ddp, single))
    assert abs(ddp["results"]["eval_loss"] - single["results"]["eval_loss"]) < 0.15
    assert abs(ddp["results"]["eval_accuracy"] - single["results"]["eval_accuracy"]) < 0.06
    # Only the main process wrote: one results file, one model, one set of plots.
    written = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert written.count("all_results.json") == 1 and "model.safetensors" in written
    assert ddp["log"].count("results, plots and model written to") == 1


# ---- regularization: weight decay, dropout, label smoothing, early stopping --------------------------------

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


@pytest.mark.slow
def test_dropout_and_label_smoothing_reach_the_run(tiny_bert, test_data, tmp_path, monkeypatch):
    trainers = []
    build = common.training.single_run.build_trainer
    monkeypatch.setattr(common.training.single_run, "build_trainer", lambda *a, **k: trainers.append(build(*a, **k)) or trainers[-1])
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


@pytest.mark.slow
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
