"""Helpers shared by test modules: tiny config-built models of each family, the same-run check, and small
two-class text and image data.

Test modules import these from here (`from helpers import ...`, as from conftest), never from each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from conftest import fast_args
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    MarianConfig,
    MarianMTModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

# ---- tiny config-built models of each family -------------------------------------------------------------

SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
SEQ2SEQ = dict(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, pad_token_id=0,
               decoder_start_token_id=1)


def bert() -> BertForSequenceClassification:
    return BertForSequenceClassification(BertConfig(vocab_size=64, max_position_embeddings=32, **SMALL))


def vit() -> ViTForImageClassification:
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, **SMALL))


def convnext() -> ConvNextForImageClassification:
    return ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))


def resnet() -> ResNetForImageClassification:
    return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))


def wav2vec2() -> Wav2Vec2ForSequenceClassification:
    return Wav2Vec2ForSequenceClassification(Wav2Vec2Config(
        vocab_size=16, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, classifier_proj_size=8, **SMALL))


def whisper() -> WhisperForConditionalGeneration:
    return WhisperForConditionalGeneration(WhisperConfig(
        num_mel_bins=8, max_source_positions=8, max_target_positions=16, bos_token_id=1, eos_token_id=2,
        begin_suppress_tokens=None, suppress_tokens=None, **SEQ2SEQ))


def marian() -> MarianMTModel:
    return MarianMTModel(MarianConfig(max_position_embeddings=32, **SEQ2SEQ))


# ---- runs that must end the same ---------------------------------------------------------------------------

# Metrics that time the run. train_* metrics are not compared either: a resumed run's mean loss covers only the
# steps it ran.
NOT_COMPARED = ("_runtime", "_per_second", "_preparation_time")


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Bit-identical final weights, and identical before/eval/test metrics (timings and train_* aside)."""
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:5]}"
    ra, rb = (json.loads((d / "all_results.json").read_text()) for d in (reference, resumed))
    compared = [k for k in ra if not k.startswith("train_") and not k.endswith(NOT_COMPARED) and k != "epoch"]
    assert any(k.startswith("eval_") for k in compared)
    assert {k: ra[k] for k in compared} == {k: rb.get(k) for k in compared}


# ---- small two-class data: texts whose labels are not periodic in 2, one-colour images ---------------------

POLARITY = ["neg", "pos"]  # class names, in id order
POLARITY_WORDS = {"neg": "bad poor awful", "pos": "good fine great"}


def polarity(i: int) -> str:
    return "pos" if i % 3 == 0 or i % 5 == 0 else "neg"  # not periodic in 2: a row off by one shows


def coloured_images(folder: Path, count: int, blue_every: int, label: str = "label",
                    unreadable: int | None = None) -> Path:
    """A csv of `count` one-colour PNGs (blue every `blue_every`-th row, red otherwise); row `unreadable` is empty."""
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    records = []
    for i in range(count):
        kind = "red" if i % blue_every else "blue"
        path = folder / f"img{i}.png"
        if i == unreadable:
            path.write_bytes(b"")
        else:
            Image.new("RGB", (16, 16), colours[kind]).save(path)
        records.append({"image": path.name, label: kind})
    table = folder / "data.csv"
    pd.DataFrame(records).to_csv(table, index=False)
    return table


def assert_class_folders_named_by_digits_are_classes(recipe: str, argv: list[str], out: Path, capsys) -> None:
    """`argv` points the recipe at a folder whose class sub-folders are 0, 1, 2 and 10: `inspect` lists four classes
    in numeric order (not 0, 1, 10, 2), and a one-step run saves them as its labels in that order."""
    import importlib

    from common.cli import main as cli

    try:
        cli(["inspect", recipe, *argv, "--output_dir", str(out / "inspected")])
    except SystemExit as done:
        assert done.code in (0, None)
    report = capsys.readouterr().out
    counts = report[report.index("label counts"):].splitlines()[1:5]
    assert [line.split()[0] for line in counts] == ["0", "1", "2", "10"]
    importlib.import_module(f"recipes.{recipe}").main([*argv, *fast_args(out / "run", max_steps=1,
                                                                           eval_before_training="false")])
    assert json.loads((out / "run" / "config.json").read_text())["id2label"] == {"0": "0", "1": "1", "2": "2",
                                                                                  "3": "10"}
