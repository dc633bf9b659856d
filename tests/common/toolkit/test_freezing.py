"""Freezing, gradual unfreezing, layer-wise LR decay and the frozen-backbone feature cache.

Tiny config-built models of each family for the generic layout; the text-classification recipe with the
tiny BERT on a slice of the SMS spam/ham sentences in tests/data for the end-to-end claims.
"""

from __future__ import annotations

import re
from functools import partial

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fast_args
from helpers import SMALL, bert, convnext, marian, resnet, vit, wav2vec2, whisper
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    MarianConfig,
    MarianMTModel,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    Wav2Vec2ForSequenceClassification,
    WhisperForConditionalGeneration,
    pipeline,
    set_seed,
)

from common.core.errors import RecipeInputError
from common.dispatch import FinetuneArguments
from common.toolkit.feature_cache import CachedHeadModel, cached_task, find_head
from common.toolkit.finetuning import prepare_model
from common.toolkit.freezing import (
    FROZEN_ATTR,
    GradualUnfreezingCallback,
    apply_freezing,
    log_parameter_table,
    optimizer_groups,
    optimizer_param_groups,
    read_layout,
)
from common.training.task import Task
from common.training.trainer import FinetuneTrainer
from recipes import text_classification


def batch_for(model: nn.Module) -> dict:
    """A small random batch with labels, for any of the tiny models in helpers.py."""
    g = torch.Generator().manual_seed(0)
    if isinstance(model, (WhisperForConditionalGeneration, MarianMTModel)):
        labels = torch.randint(3, 64, (2, 5), generator=g)
        if isinstance(model, WhisperForConditionalGeneration):
            return {"input_features": torch.randn(2, 8, 16, generator=g), "labels": labels}
        return {"input_ids": torch.randint(3, 64, (2, 6), generator=g), "labels": labels}
    labels = torch.tensor([0, 1])
    if isinstance(model, Wav2Vec2ForSequenceClassification):
        return {"input_values": torch.randn(2, 400, generator=g), "labels": labels}
    if isinstance(model, BertForSequenceClassification):
        return {"input_ids": torch.randint(3, 64, (2, 7), generator=g), "labels": labels}
    size = model.config.image_size if hasattr(model.config, "image_size") else 16
    return {"pixel_values": torch.randn(2, 3, size, size, generator=g), "labels": labels}


def freeze(model: nn.Module, *entries: str, **options) -> nn.Module:
    apply_freezing(model, FinetuneArguments(freeze=list(entries), **options))
    return model


def trainable_groups(model: nn.Module) -> set[str]:
    layout = read_layout(model)
    return {layout.group[name] for name, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed_groups(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    layout = read_layout(model)
    return {layout.group[name] for name, p in model.named_parameters() if not torch.equal(p, before[name])}


# ---- the layout, read generically --------------------------------------------------------------------------

LAYOUTS = {  # builder: (stacks, a parameter of the embeddings, of the top, of the head)
    bert: ({"bert.encoder.layer": 2}, "bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight",
           "classifier.weight"),
    vit: ({"vit.layers": 2}, "vit.embeddings.cls_token", "vit.layernorm.weight", "classifier.weight"),
    convnext: ({"convnext.encoder.stages": 2}, "convnext.embeddings.patch_embeddings.weight",
               "convnext.layernorm.weight", "classifier.weight"),
    resnet: ({"resnet.encoder.stages": 2}, "resnet.embedder.embedder.convolution.weight", None, "classifier.1.weight"),
    wav2vec2: ({"wav2vec2.encoder.layers": 2}, "wav2vec2.feature_extractor.conv_layers.0.conv.weight", None,
               "projector.weight"),
    whisper: ({"model.encoder.layers": 2, "model.decoder.layers": 2}, "model.encoder.conv1.weight",
              "model.encoder.layer_norm.weight", None),
    marian: ({"model.encoder.layers": 2, "model.decoder.layers": 2}, "model.shared.weight", None, None),
}


@pytest.mark.parametrize("build", LAYOUTS, ids=lambda b: b.__name__)
def test_layout_is_read_from_structure(build):
    model = build()
    layout = read_layout(model)
    stacks, embedding, top, head = LAYOUTS[build]
    assert layout.stacks == stacks
    assert layout.group[embedding] == "embeddings"
    if top:
        assert layout.group[top] == "top"
    if head:
        assert layout.group[head] == "head" and layout.depth[head] == 0
    blocks = sorted({g for g in layout.group.values() if "block" in g})
    if len(stacks) == 1:
        assert blocks == ["block 0", "block 1"]
        assert layout.depth[embedding] == 3
    else:  # parallel stacks: each block of the encoder has the depth of the decoder's block with its index
        assert blocks == ["decoder block 0", "decoder block 1", "encoder block 0", "encoder block 1"]
        names = {g: [n for n, label in layout.group.items() if label == g][0] for g in blocks}
        assert layout.depth[names["encoder block 0"]] == layout.depth[names["decoder block 0"]] == 2


def test_parameter_table_counts(caplog):
    model = freeze(bert(), "bottom:1")
    with caplog.at_level("INFO", logger="common.toolkit.freezing"):
        rows = log_parameter_table(model)
    assert [r["group"] for r in rows] == ["embeddings", "block 0", "block 1", "top", "head"]
    assert sum(r["parameters"] for r in rows) == sum(p.numel() for p in model.parameters())
    by_group = {r["group"]: r for r in rows}
    assert by_group["block 0"]["trainable"] == 0 and by_group["block 1"]["frozen"] == 0
    assert re.search(r"embeddings\s+[\d,]+\s+0\s+[\d,]+", caplog.text)


# ---- strategies ---------------------------------------------------------------------------------------------

def test_strategies_on_encoder_models():
    assert trainable_groups(freeze(bert(), "backbone")) == {"head"}
    assert trainable_groups(freeze(bert(), "embeddings")) == {"block 0", "block 1", "top", "head"}
    assert trainable_groups(freeze(vit(), "bottom:1")) == {"block 1", "top", "head"}
    model = freeze(convnext(), "backbone", train_norm_layers=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "convnext.layernorm.weight" in trainable and "convnext.embeddings.patch_embeddings.weight" not in trainable
    model = freeze(bert(), r"attention\.", unfreeze_patterns=[r"layer\.1\."])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all("attention." in n and "layer.0." in n for n in frozen)


def test_strategies_on_speech_and_encoder_decoder_models():
    model = freeze(wav2vec2(), "feature_encoder")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if ".feature_extractor." in n}
    assert model.wav2vec2.feature_extractor._requires_grad is False  # no gradient into the CNN's input either

    model = freeze(marian(), "bottom:1")  # embeddings plus block 0 of both stacks
    assert trainable_groups(model) == {"encoder block 1", "decoder block 1"}
    model = freeze(whisper(), "encoder")
    encoder = {id(p) for p in model.get_encoder().parameters()}
    assert all(p.requires_grad is False for p in model.parameters() if id(p) in encoder)
    assert any(p.requires_grad for p in model.model.decoder.parameters())


@pytest.mark.parametrize("build, entry", [(vit, "bottom:1"), (wav2vec2, "backbone"), (whisper, "encoder"),
                                          (marian, "bottom:1")], ids=lambda x: getattr(x, "__name__", x))
def test_frozen_parameters_stay_bit_identical(build, entry):
    torch.manual_seed(0)
    model = freeze(build(), entry)
    before = snapshot(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # Every parameter is in the optimizer, with weight decay: frozen ones must still not move.
    groups = optimizer_param_groups(model, 1e-2, 0.1, {n for n, _ in model.named_parameters()}, 0.8)
    optimizer = torch.optim.AdamW(groups)
    model.train()
    for _ in range(2):
        model(**batch_for(model)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, before[name]), name
    moved = [n for n, p in model.named_parameters() if n not in frozen and p.requires_grad and not torch.equal(p, before[n])]
    assert moved


def test_frozen_batchnorm_keeps_its_running_statistics():
    model = freeze(resnet(), "backbone")
    bn = model.resnet.embedder.embedder.normalization
    mean = bn.running_mean.clone()
    model.train()  # what Trainer does every step
    model(**batch_for(model))
    assert torch.equal(bn.running_mean, mean) and bn.num_batches_tracked == 0
    for p in bn.parameters():  # thawed (gradual unfreezing): statistics update again
        p.requires_grad_(True)
    model.train()
    model(**batch_for(model))
    assert not torch.equal(bn.running_mean, mean)

    model = freeze(resnet(), "backbone", train_norm_layers=True)
    bn = model.resnet.embedder.embedder.normalization
    mean = bn.running_mean.clone()
    model.train()
    model(**batch_for(model))
    assert not torch.equal(bn.running_mean, mean)


# ---- layer-wise LR decay ------------------------------------------------------------------------------------

def test_llrd_group_lrs_and_weight_decay(tmp_path):
    model = bert()
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.01, report_to="none")
    trainer = FinetuneTrainer(model=model, args=args,
                              optimizer_groups=optimizer_groups(FinetuneArguments(layer_lr_decay=0.8)))
    optimizer = trainer.create_optimizer()
    depth = {"embeddings": 3, "block 0": 2, "block 1": 1, "top": 1, "head": 0}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)
    for group in optimizer.param_groups:
        label = group["name"].removesuffix(" (no decay)")
        assert group["lr"] == pytest.approx(1e-3 * 0.8 ** depth[label]), group["name"]
        for p in group["params"]:
            no_decay = names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), names[id(p)]
    assert {g["name"] for g in optimizer.param_groups} >= {"embeddings", "block 0 (no decay)", "head"}


# ---- gradual unfreezing -------------------------------------------------------------------------------------

class EpochChanges(TrainerCallback):
    """Which layout groups changed during each epoch, and the learning rates at the end."""

    def __init__(self):
        self.changed: list[set[str]] = []

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self.before = snapshot(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.changed.append(changed_groups(model, self.before))


def _token_dataset(n: int = 16) -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    return datasets.Dataset.from_dict({"input_ids": torch.randint(3, 64, (n, 6), generator=g).tolist(),
                                       "labels": [i % 2 for i in range(n)]})


@pytest.mark.parametrize("schedule, expected", [
    ("epoch", [{"head"}, {"head", "top", "block 1"}, {"head", "top", "block 1", "block 0"},
               {"head", "top", "block 1", "block 0", "embeddings"}]),
    ("2", [{"head"}, {"head"}, {"head", "top", "block 1"}, {"head", "top", "block 1"}]),
])
def test_gradual_unfreezing_thaws_top_down_and_lr_reaches_zero(tmp_path, schedule, expected):
    finetune_args = FinetuneArguments(unfreeze_schedule=schedule, layer_lr_decay=0.9)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=4, per_device_train_batch_size=8,
                             learning_rate=1e-2, weight_decay=0.01, lr_scheduler_type="linear", save_strategy="no",
                             report_to="none", disable_tqdm=True, use_cpu=True, seed=0)
    recorder = EpochChanges()
    trainer = FinetuneTrainer(model_init=partial(prepare_model, bert, finetune_args), args=args,
                              train_dataset=_token_dataset(), optimizer_groups=optimizer_groups(finetune_args),
                              callbacks=[GradualUnfreezingCallback(finetune_args), recorder])
    trainer.train()
    assert recorder.changed == expected
    total = sum(1 for _ in trainer.model.parameters())
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == total  # all there from the start
    assert trainer.lr_scheduler.get_last_lr() == [0.0] * len(trainer.optimizer.param_groups)


# ---- the recipe end to end ----------------------------------------------------------------------------------

def _sms(test_data, out, model, **extra) -> list[str]:
    return ["--model_name_or_path", model, "--train_file", str(test_data / "sms_spam/train.tsv"),
            "--validation_file", str(test_data / "sms_spam/dev.tsv"), "--max_train_samples", "48",
            "--max_eval_samples", "24", *fast_args(out, per_device_train_batch_size=16, **extra)]


def _compare_backbones(saved: str, original: str) -> dict[str, bool]:
    """Per parameter of the saved model's backbone: is it bit-identical to the pretrained checkpoint?"""
    after = AutoModelForSequenceClassification.from_pretrained(saved)
    before = AutoModelForSequenceClassification.from_pretrained(original, num_labels=2)
    reference = dict(before.named_parameters())
    return {name: torch.equal(p, reference[name]) for name, p in after.named_parameters() if name.startswith("bert.")}


@pytest.mark.slow
def test_recipe_bottom_llrd_and_schedule(tiny_bert, test_data, tmp_path):
    out = tmp_path / "bottom"
    # Frozen: embeddings + block 0. Block 0 thaws after epoch 1; the embeddings have no slot in the schedule.
    results = text_classification.main(_sms(test_data, out, tiny_bert, num_train_epochs=2, learning_rate=1e-3,
                                             freeze="bottom:1", layer_lr_decay=0.8, unfreeze_schedule="1"))
    assert results["epoch"] == 2
    identical = _compare_backbones(str(out), tiny_bert)
    layout = read_layout(AutoModelForSequenceClassification.from_pretrained(str(out)))
    unchanged = {group: all(same for name, same in identical.items() if layout.group[name] == group)
                 for group in ("embeddings", "block 0", "block 1", "top")}
    assert unchanged == {"embeddings": True, "block 0": False, "block 1": False, "top": False}


@pytest.mark.slow
def test_feature_cache_predicts_like_the_full_model(tiny_bert, test_data, tmp_path):
    out = tmp_path / "cached"
    text_classification.main([*_sms(test_data, out, tiny_bert, num_train_epochs=2, learning_rate=1e-2,
                                     freeze="backbone", cache_features=True),
                              "--test_file", str(test_data / "sms_spam/test.tsv"), "--max_predict_samples", "16"])
    assert len(list((out / "feature_cache").glob("*/data-*.arrow"))) == 3
    assert all(_compare_backbones(str(out), tiny_bert).values())  # only the head trained
    # Predictions made from the cached test features equal the saved full model's, run by pipeline().
    cached = pd.read_csv(out / "predictions.csv")
    classify = pipeline("text-classification", model=str(out), device="cpu", top_k=None)
    full = [{s["label"]: s["score"] for s in scores} for scores in classify(cached["sentence"].tolist())]
    for label in ("0", "1"):
        assert np.abs(cached[f"score_{label}"].to_numpy() - [s[label] for s in full]).max() < 1e-5


@pytest.mark.parametrize("build", [vit, convnext, resnet], ids=lambda b: b.__name__)
def test_feature_cache_on_vision_heads(build, tmp_path):
    g = torch.Generator().manual_seed(0)
    size = 16 if build is vit else 32
    data = datasets.Dataset.from_dict({"pixel_values": torch.randn(12, 3, size, size, generator=g).tolist(),
                                       "labels": [i % 2 for i in range(12)]}).with_format("torch")
    finetune_args = FinetuneArguments(freeze=["backbone"], cache_features=True)
    torch.manual_seed(0)
    init = partial(prepare_model, partial(build), finetune_args)
    task = Task(name="vision", model_init=init, train_dataset=data, eval_dataset=data, test_dataset=None,
                data_collator=None, compute_metrics=None, processing_class=None, main_metric="accuracy",
                pipeline_task="image-classification")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=5, report_to="none", use_cpu=True)
    cached = cached_task(task, args)
    with pytest.raises(RecipeInputError, match="different backbone"):
        cached.model_init()  # another random backbone: the cache does not hold for it
    set_seed(args.seed)  # as Trainer does before model_init
    head_model = cached.model_init()
    assert isinstance(head_model, CachedHeadModel)
    from_cache = Trainer(model=head_model, args=args).predict(cached.eval_dataset).predictions
    full = Trainer(model=head_model.full_model, args=args).predict(data).predictions
    assert np.abs(from_cache - full).max() < 1e-5


# ---- bad input ----------------------------------------------------------------------------------------------

class Flat(PreTrainedModel):
    """A model with no list of blocks: its layout cannot be read."""

    config_class = PretrainedConfig
    base_model_prefix = "body"

    def __init__(self, config):
        super().__init__(config)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)


def test_unreadable_layout_fails_clearly_but_regex_still_works():
    with pytest.raises(RecipeInputError, match=r"cannot read the layout of Flat.*no list of blocks.*regex"):
        freeze(Flat(PretrainedConfig()), "bottom:1")
    model = freeze(Flat(PretrainedConfig()), r"^body\.")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    assert {r["group"] for r in log_parameter_table(model)} == {"body", "head"}  # the table still logs


@pytest.mark.parametrize("build, options, message", [
    (bert, {"freeze": ["backbon"]}, "matches no parameter name.*did you mean 'backbone'"),
    (bert, {"freeze": ["bottom:x"]}, "give a number of blocks"),
    (bert, {"freeze": ["bottom:9"]}, "has 2 blocks per stack"),
    (bert, {"freeze": ["encoder"]}, "applies to encoder-decoder models"),
    (bert, {"freeze": ["feature_encoder"]}, "has no feature encoder"),
    (bert, {"freeze": ["("]}, "not a valid regular expression"),
    (bert, {"freeze": ["backbone"], "unfreeze_patterns": ["nothing_like_this"]}, "--unfreeze_patterns"),
    (bert, {"layer_lr_decay": 1.5}, r"must be in \(0, 1\]"),
    (bert, {"unfreeze_schedule": "3,1"}, "increasing epoch counts"),
    (bert, {"freeze": ["bottom:1"], "cache_features": True}, "needs --freeze backbone alone"),
    (marian, {"freeze": ["backbone"]}, "leaves no trainable parameter"),
], ids=lambda x: x.__name__ if callable(x) else None)
def test_bad_options_raise(build, options, message):
    with pytest.raises(RecipeInputError, match=message):
        apply_freezing(build(), FinetuneArguments(**options))


def test_feature_cache_refuses_heads_it_cannot_run_alone(tmp_path):
    with pytest.raises(RecipeInputError, match="projector, classifier"):
        find_head(wav2vec2())
    # RoBERTa's head reads the whole token sequence, whose length changes from batch to batch.
    finetune_args = FinetuneArguments(freeze=["backbone"], cache_features=True)
    config = RobertaConfig(vocab_size=64, max_position_embeddings=40, pad_token_id=1, **SMALL)
    rows = datasets.Dataset.from_dict({"input_ids": [[0, 5, 6, 2], [0, 5, 6, 7, 8, 2]], "labels": [0, 1]})
    task = Task(name="text", model_init=partial(prepare_model, partial(RobertaForSequenceClassification, config),
                                                finetune_args),
                train_dataset=rows, eval_dataset=None, test_dataset=None, data_collator=None, compute_metrics=None,
                processing_class=None, main_metric="accuracy", pipeline_task="text-classification")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=1, report_to="none", use_cpu=True)
    with pytest.raises(RecipeInputError, match="changes shape between batches.*token sequence"):
        cached_task(task, args)


@pytest.mark.parametrize("freeze", [[], ["embeddings"]])
def test_parameters_that_the_saved_model_leaves_out_never_train(tmp_path, freeze):
    """Marian's sinusoidal positions are left out of every save (`_keys_to_ignore_on_save`) and rebuilt on load,
    yet transformers 5 loads them trainable: trained, the saved model and each checkpoint would differ from the
    model that was trained and scored. prepare_model freezes them for good (gradual unfreezing leaves them out)."""
    config = MarianConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                          max_position_embeddings=32, pad_token_id=0, decoder_start_token_id=0)
    MarianMTModel(config).save_pretrained(tmp_path)
    finetune_args = FinetuneArguments(freeze=freeze, unfreeze_schedule="epoch" if freeze else None)
    model = prepare_model(partial(MarianMTModel.from_pretrained, str(tmp_path)), finetune_args)
    unsaved = set(model._keys_to_ignore_on_save)
    trainable = [n for n, p in model.named_parameters() if n in unsaved and p.requires_grad]
    assert len(unsaved) == 2 and not trainable
    assert not unsaved & set(getattr(model, FROZEN_ATTR, ()))  # not among what gradual unfreezing thaws
