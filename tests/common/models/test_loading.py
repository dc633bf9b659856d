"""Model loading: --dropout reaches every dropout field of each family's config, and nothing else."""

from __future__ import annotations

import pytest
from transformers import ViTConfig, Wav2Vec2Config, WhisperConfig

from common.core.errors import RecipeInputError
from common.models.loading import ModelArguments, set_dropout


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
