"""Decisions for several processes, tested in one: DDP's find_unused_parameters, and what is refused or made safe.

Nothing here launches processes; several are simulated with WORLD_SIZE or a patched world_size. The
two-process run itself is in test_distributed.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from test_freezing import SMALL, bert, marian
from torch import nn
from transformers import TrainingArguments, Wav2Vec2Config, Wav2Vec2ForSequenceClassification

from common.core.config import RunArguments, parse_args
from common.core.errors import RecipeInputError
from common.dispatch import FinetuneArguments
from common.toolkit.adapters import apply_peft
from common.toolkit.feature_cache import CachedHeadModel, _cached_split
from common.toolkit.freezing import GradualUnfreezingCallback, apply_freezing
from common.training.trainer import FinetuneTrainer, choose_find_unused_parameters
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
