"""--peft lora / ia3: the head trains and is saved with the adapter, reloads predict the same, merged loads in pipeline()."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import fast_args
from peft import PeftModel
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
    WhisperConfig,
    WhisperForConditionalGeneration,
    pipeline,
)

from common.core.errors import RecipeInputError
from common.dispatch import FinetuneArguments
from common.toolkit.adapters import apply_peft, head_module_names
from recipes import text_classification

QUESTION_KINDS = ["how many", "what", "when", "where", "who", "why"]


def _questions_run(tiny_bert, test_data, out, *extra: str) -> dict:
    return text_classification.main([
        "--model_name_or_path", tiny_bert,
        "--train_file", str(test_data / "squad_questions/train.tsv"),
        "--test_file", str(test_data / "squad_questions/test.tsv"),
        "--label_column", "kind", "--max_train_samples", "64", "--max_eval_samples", "40", "--max_predict_samples", "40",
        *fast_args(out, learning_rate=5e-3, per_device_train_batch_size=16), *extra,
    ])


def _logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapter_reload_predicts_the_same(method, tiny_bert, test_data, tmp_path):
    out = tmp_path / method
    _questions_run(tiny_bert, test_data, out, "--peft", method)

    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == method.upper()
    assert "classifier" in adapter_config["modules_to_save"]

    # The predictions written by the trained in-memory model, for the first 40 test questions.
    written = pd.read_csv(out / "predictions.csv")
    texts = written["text"].tolist()
    written_scores = torch.tensor(written[[f"score_{name}" for name in QUESTION_KINDS]].to_numpy(), dtype=torch.float32)
    assert written_scores.shape == (40, 6)

    # The adapter on a fresh base model: labels from the saved config, head and adapter from adapter/.
    config = AutoConfig.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, config=config)
    reloaded = PeftModel.from_pretrained(base, out / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapter_scores = _logits(reloaded, tokenizer, texts).softmax(-1)
    torch.testing.assert_close(adapter_scores, written_scores, atol=1e-4, rtol=0)

    # The merged model in output_dir predicts the same and names the labels.
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(_logits(merged, tokenizer, texts).softmax(-1), adapter_scores, atol=1e-4, rtol=0)
    assert sorted(merged.config.id2label.values()) == QUESTION_KINDS

    # The base weights under the adapter are the checkpoint's, untouched by training.
    original = BertModel.from_pretrained(tiny_bert)
    query = reloaded.base_model.model.bert.encoder.layer[0].attention.self.query
    adapted = getattr(query, "base_layer", query)
    assert torch.equal(adapted.weight, original.encoder.layer[0].attention.self.query.weight)


@pytest.mark.slow
def test_merge_adapter_saves_a_pipeline_model(tiny_bert, test_data, tmp_path):
    out = tmp_path / "merged"
    _questions_run(tiny_bert, test_data, out, "--peft", "lora", "--merge_adapter", "--lora_r", "4",
                   "--lora_target_modules", "query", "key", "value")
    assert not (out / "adapter").exists()
    assert not (out / "adapter_config.json").exists()
    classify = pipeline("text-classification", model=str(out), device="cpu")
    assert type(classify.model).__name__ == "BertForSequenceClassification"
    predictions = classify(["What is the capital of Peru ?", "Who wrote Hamlet ?"])
    assert {p["label"] for p in predictions} <= set(QUESTION_KINDS)


def test_new_modules_outside_the_head_are_trained_and_saved(tmp_path):
    # A checkpoint without a pooler: BertForSequenceClassification initialises one at random, so the
    # adapter must carry it or a reload would start from different random values.
    from common.models.tiny import minilm_dir

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "no-pooler")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "no-pooler", num_labels=3)
    assert head_module_names(model) == ["classifier", "bert.pooler.dense"]
    peft_model = apply_peft(model, FinetuneArguments(peft="lora"))
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("pooler.dense" in name for name in trainable)
    # A checkpoint that has every base weight: only the head is trained in full.
    full = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    assert head_module_names(full) == ["classifier"]


@pytest.mark.parametrize(
    ("build", "head", "targets"),
    [
        (lambda: ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=32, image_size=32, patch_size=16,
                                                     num_labels=3)), ["classifier"], {"q_proj", "v_proj"}),
        (lambda: Wav2Vec2ForSequenceClassification(Wav2Vec2Config(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
            conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_labels=3)),
         ["projector", "classifier"], {"q_proj", "v_proj"}),
        # Whisper's output projection is tied to its embeddings: pretrained, so not part of the head.
        (lambda: WhisperForConditionalGeneration(WhisperConfig(
            d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32)), [], {"q_proj", "v_proj"}),
    ],
    ids=["vit", "wav2vec2", "whisper"],
)
def test_other_model_families(build, head, targets):
    model = build()
    assert head_module_names(model) == head
    peft_model = apply_peft(model, FinetuneArguments(peft="lora", lora_r=2))
    adapted = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == targets
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or any(f"{h}." in name for h in head) for name in trainable)


def test_bad_peft_options_raise():
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=2))
    with pytest.raises(RecipeInputError, match="--lora_target_modules"):
        apply_peft(resnet, FinetuneArguments(peft="lora"))
    with pytest.raises(RecipeInputError, match="lorra is not supported"):
        apply_peft(resnet, FinetuneArguments(peft="lorra"))
    with pytest.raises(RecipeInputError, match="drop --freeze"):
        apply_peft(resnet, FinetuneArguments(peft="lora", freeze=["backbone"]))
