"""Speech recognition models: CTC vocabularies and tokenizers, the model families (CTC or seq2seq), their
collators and trainers, WER and CER, the predictions file and the worst utterances."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer, EvalPrediction, GenerationConfig, Wav2Vec2CTCTokenizer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CTC_MAPPING_NAMES,
    MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
)

from common.core.errors import RecipeInputError
from common.data.audio import SPEECH
from common.models.loading import load_model, load_processor, resolve_model_path
from common.training.error_analysis import ErrorAnalysis, check_inputs, worst
from common.training.metrics import first_output
from common.training.trainer import FinetuneSeq2SeqTrainer, FinetuneTrainer

logger = logging.getLogger(__name__)


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level WER and CER (jiwer). Empty references count every hypothesis word as an insertion."""
    if not references:
        return {}
    return {"wer": float(jiwer.wer(list(references), list(hypotheses))),
            "cer": float(jiwer.cer(list(references), list(hypotheses)))}


# ---------------------------------------------------------------------------------------------- CTC vocabulary


def build_ctc_vocab(texts: Sequence[str]) -> dict[str, int]:
    """Characters of the (normalised) transcripts, '|' for the space between words, then [UNK] and [PAD]."""
    chars = sorted(set("".join(texts)) - {" "})
    vocab = {char: i for i, char in enumerate(chars)}
    for token in ("|", "[UNK]", "[PAD]"):
        vocab[token] = len(vocab)
    return vocab


def ctc_tokenizer(vocab: dict[str, int]):
    """A Wav2Vec2CTCTokenizer over `vocab` (written to a temporary vocab.json, which it reads in full)."""

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "vocab.json"
        file.write_text(json.dumps(vocab, ensure_ascii=False))
        return Wav2Vec2CTCTokenizer(str(file), unk_token="[UNK]", pad_token="[PAD]", word_delimiter_token="|",
                                    bos_token=None, eos_token=None)


def missing_characters(texts: Sequence[str], vocab: dict[str, int]) -> list[str]:
    """Characters of `texts` (other than the space) that the CTC vocabulary lacks: they decode to [UNK]."""
    return sorted(set("".join(texts)) - set(vocab) - {" "})


# ---------------------------------------------------------------------------------------------- metrics


class SpeechMetrics:
    """`compute_metrics`: decode the predictions, score them against the split's transcripts.

    WER/CER compare normalised hypotheses with normalised references; wer_raw/cer_raw compare the text as
    decoded with the transcripts as given. The references come from the dataset rather than from the label
    ids, which hold only the normalised text; `split` (set by SpeechTrainerMixin) says which split is scored.
    """

    def __init__(self, decode: Callable[[np.ndarray], list[str]], references: dict[str, list[str]],
                 normalize: Callable[[str], str]):
        self.decode, self.references, self.normalize = decode, references, normalize
        self.split = "validation"

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        hypotheses = self.decode(first_output(prediction.predictions))
        references = self.references.get(self.split)
        if references is None:
            return {}
        if len(references) != len(hypotheses):
            raise RuntimeError(f"{len(hypotheses)} predictions for the {len(references)} {self.split} transcripts")
        normalized = error_rates([self.normalize(r) for r in references], [self.normalize(h) for h in hypotheses])
        raw = error_rates(references, hypotheses)
        return {**normalized, **{f"{k}_raw": v for k, v in raw.items()}}


class SpeechTrainerMixin:
    """Before each evaluation, tells SpeechMetrics which split it scores (from the metric key prefix)."""

    def evaluation_loop(self, *args, **kwargs):
        if isinstance(self.compute_metrics, SpeechMetrics):
            self.compute_metrics.split = "test" if kwargs.get("metric_key_prefix") == "test" else "validation"
        return super().evaluation_loop(*args, **kwargs)


def write_speech_predictions(path: str | Path, files: Sequence[str], references: Sequence[str] | None,
                             hypotheses: Sequence[str], normalize: Callable[[str], str]) -> None:
    """predictions.tsv: file, reference, hypothesis and the utterance's normalised WER, side by side."""

    table = pd.DataFrame({"audio_file": list(files)})
    if references is not None:
        table["reference"] = list(references)
    table["hypothesis"] = list(hypotheses)
    if references is not None:
        table["wer"] = utterance_wer(references, hypotheses, normalize)
    table.to_csv(path, sep="\t", index=False)


def utterance_wer(references: Sequence[str], hypotheses: Sequence[str], normalize: Callable[[str], str]) -> np.ndarray:
    """Each utterance's WER on normalised text; NaN where the normalised reference is empty (no words to miss)."""
    return np.array([jiwer.wer(normalize(r), normalize(h)) if normalize(r) else float("nan")
                     for r, h in zip(references, hypotheses)])


def speech_errors(files: Sequence[str], references: Sequence[str], hypotheses: Sequence[str],
                  durations: Sequence[float], normalize: Callable[[str], str], n: int) -> ErrorAnalysis:
    """The n validation utterances with the highest WER: file, reference, hypothesis, WER and duration."""
    check_inputs({"audio_file": files, "reference": references, "duration_s": durations}, len(hypotheses))
    wer = utterance_wer(references, hypotheses, normalize)
    rows = worst(np.nan_to_num(wer, nan=-1.0), n)  # an utterance with nothing to recognise ranks last
    table = pd.DataFrame({"audio_file": [files[i] for i in rows], "reference": [references[i] for i in rows],
                          "hypothesis": [hypotheses[i] for i in rows], "wer": wer[rows],
                          "duration_s": np.round(np.asarray(durations, dtype=float)[rows], 3)})
    return ErrorAnalysis(f"the {len(rows)} validation utterances with the highest WER", table)


# ---------------------------------------------------------------------------------------------- model side

CTC, SEQ2SEQ = "ctc", "seq2seq"


def model_family(config) -> str:
    """CTC (wav2vec2, HuBERT, WavLM, Data2VecAudio, ...) or seq2seq (Whisper, Speech2Text, ...), from the config."""

    if config.model_type in MODEL_FOR_CTC_MAPPING_NAMES:
        return CTC
    if config.model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        return SEQ2SEQ
    raise RecipeInputError(
        f"model type '{config.model_type}' is not a speech recognition architecture. Use a CTC model "
        f"({', '.join(sorted(MODEL_FOR_CTC_MAPPING_NAMES))}) or a speech seq2seq model "
        f"({', '.join(sorted(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES))})."
    )


class AudioInputs:
    """Lazy model inputs for `Dataset.set_transform`: the feature extractor over each batch of waveforms.

    Every split reads through it (a CV fold's held-out rows too). Augmented training rows read through
    `raw_view` instead (`TrainAugmentation.raw_view`): the stored waveform as a numpy array (far cheaper than
    the Python lists a transform receives), which the augmentation changes and then `encode`s, so features are
    computed once, after augmentation.
    """

    def __init__(self, feature_extractor):
        self.feature_extractor = feature_extractor
        self.input_name = feature_extractor.model_input_names[0]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {"labels": batch["labels"]} if "labels" in batch else {}
        return {**out, **self.encode(batch)}

    @staticmethod
    def raw_view(dataset: Any) -> Any:
        return dataset.with_format("numpy")

    def encode(self, raw: dict[str, list]) -> dict[str, list]:
        waveforms = [np.asarray(x, dtype=np.float32) for x in raw[SPEECH]]
        features = self.feature_extractor(waveforms, sampling_rate=self.feature_extractor.sampling_rate)
        return {self.input_name: list(features[self.input_name])}


class SpeechCollator:
    """Pads the model inputs with the feature extractor and the label sequences with -100 (a class id per clip
    passes as it is).

    For seq2seq models the decoder start token, when the tokenizer put it first, is dropped: the model
    prepends it itself when it shifts the labels right.
    """

    def __init__(self, feature_extractor, decoder_start_token_id: int | None = None):
        self.feature_extractor, self.decoder_start_token_id = feature_extractor, decoder_start_token_id
        self.input_name = feature_extractor.model_input_names[0]

    def __call__(self, rows: list[dict]) -> dict:

        batch = self.feature_extractor.pad([{self.input_name: row[self.input_name]} for row in rows], return_tensors="pt")
        if "labels" in rows[0] and np.ndim(rows[0]["labels"]) == 0:  # a class per clip (audio classification)
            batch["labels"] = torch.tensor([row["labels"] for row in rows], dtype=torch.long)
        elif "labels" in rows[0]:
            labels = [list(row["labels"]) for row in rows]
            padded = torch.full((len(labels), max(map(len, labels))), -100, dtype=torch.long)
            for i, ids in enumerate(labels):
                padded[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            start = self.decoder_start_token_id
            if start is not None and padded.shape[1] and bool((padded[:, 0] == start).all()):
                padded = padded[:, 1:]
            batch["labels"] = padded
        return batch


def decode_predictions(predictions: np.ndarray, tokenizer, family: str) -> list[str]:
    """Token ids (CTC: frame-wise argmax ids; seq2seq: generated ids), padded with -100, to texts."""
    ids = np.where(predictions == -100, tokenizer.pad_token_id, predictions)
    if family == CTC:
        return [text.strip() for text in tokenizer.batch_decode(ids)]
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


class CTCTrainer(SpeechTrainerMixin, FinetuneTrainer):
    """Reduces the CTC logits to frame-wise ids batch by batch, so evaluation never holds all the logits."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("preprocess_logits_for_metrics", lambda logits, labels: logits.argmax(-1))
        super().__init__(*args, **kwargs)


class SpeechSeq2SeqTrainer(SpeechTrainerMixin, FinetuneSeq2SeqTrainer):
    """Generates the transcripts at evaluation (with --predict_with_generate)."""


def checkpoint_tokenizer(model_args):
    """The checkpoint's tokenizer, or None when it ships none (a pretraining checkpoint such as wav2vec2-base)."""

    try:
        return load_processor(AutoTokenizer, model_args)
    except (RecipeInputError, TypeError):  # no vocabulary file: Wav2Vec2CTCTokenizer fails on a None path
        return None


def ctc_vocabulary(tokenizer, targets: dict[str, list[str]], sources: dict[str, str]):
    """The checkpoint's CTC tokenizer, or one over the characters of the train targets; warns about characters of
    the other splits that it lacks (they become the unknown token)."""
    if tokenizer is None:
        vocab = build_ctc_vocab(targets["train"])
        tokenizer = ctc_tokenizer(vocab)
        logger.info("CTC vocabulary of %d tokens built from the training transcripts: %s", len(vocab), " ".join(vocab))
    for split in sorted(set(targets) - {"train"}):
        unknown = missing_characters(targets[split], tokenizer.get_vocab())
        if unknown:
            logger.warning("%s: characters missing from the CTC vocabulary (they become %s): %s", sources[split],
                           tokenizer.unk_token, " ".join(repr(c) for c in unknown))
    return tokenizer


def checkpoint_generation(model_args) -> GenerationConfig | None:
    """The checkpoint's generation_config.json, or None when it has none (the model builds one from its config)."""
    try:
        return GenerationConfig.from_pretrained(resolve_model_path(model_args.model_name_or_path),
                                                cache_dir=model_args.cache_dir, revision=model_args.model_revision)
    except OSError:
        return None


def _whisper_multilingual(model_args) -> bool:
    generation = checkpoint_generation(model_args)
    return generation is None or bool(getattr(generation, "is_multilingual", True))


def set_whisper_prefix(tokenizer, model_args) -> None:
    """Labels start <|startoftranscript|><|lang|><|task|><|notimestamps|>, the prompt generation will use."""
    multilingual = _whisper_multilingual(model_args)
    if multilingual and not model_args.language:
        raise RecipeInputError("multilingual Whisper needs the speech's language: set --language, e.g. english or en.")
    if model_args.language and not multilingual:
        raise RecipeInputError(f"--language {model_args.language}: this Whisper checkpoint is English-only; drop it.")
    try:
        tokenizer.set_prefix_tokens(language=model_args.language, task=model_args.task if multilingual else None,
                                    predict_timestamps=False)
    except ValueError as err:
        raise RecipeInputError(f"--language {model_args.language} / --task {model_args.task}: {err}") from None


def load_speech_model(auto_class: type, model_args, config):
    """The model; Whisper's generation config gets --language and --task (which replace forced decoder ids)."""

    model = load_model(auto_class, model_args, config)
    if config.model_type == "whisper":
        generation = model.generation_config
        multilingual = getattr(generation, "is_multilingual", True)
        generation.language = model_args.language if multilingual else None
        generation.task = model_args.task if multilingual else None
        generation.forced_decoder_ids = None
    return model
