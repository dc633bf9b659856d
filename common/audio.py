"""Audio data for speech recognition: load, decode, check and filter clips; CTC vocabularies; text normalisation;
WER and CER.

Clips come from a Hub dataset, an `audiofolder` directory, or a csv/tsv/jsonl/parquet manifest whose audio
column holds file paths (relative ones are resolved against the manifest's folder). Every clip is decoded once
through the `datasets` Audio feature (torchcodec + FFmpeg), resampled to the feature extractor's rate and
downmixed to mono; the arrays are cached by `datasets`, keyed on the files' sizes and modification times so an
edited file is decoded again. Missing, unreadable and zero-length files and empty transcripts are collected over
the whole split, then reported together (or skipped and counted), before any model is trained.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import jiwer
import numpy as np
from datasets import Audio, DatasetDict
from transformers import EvalPrediction

from common.config import DataArguments
from common.data import SPLIT_ALIASES, BadRow, drop_bad_rows, load_splits, source
from common.errors import RecipeInputError, nearest
from common.trainer import FinetuneSeq2SeqTrainer, FinetuneTrainer

logger = logging.getLogger(__name__)

SPEECH = "speech"  # the decoded, resampled mono waveform (float32)
FILE = "audio_file"  # where each clip came from, for messages and predictions
DEFAULT_CHARS_TO_IGNORE = r"[^\w\s']"  # everything but letters, digits, whitespace and apostrophes
SHOWN = 20  # bad files listed per split in an error message


def normalize_text(text: str | None, chars_to_ignore: str | None = DEFAULT_CHARS_TO_IGNORE, lowercase: bool = True) -> str:
    """Lowercase, drop the `chars_to_ignore` regex matches, collapse whitespace."""
    text = (text or "").lower() if lowercase else text or ""
    if chars_to_ignore:
        text = re.sub(chars_to_ignore, "", text)
    return " ".join(text.split())


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus-level WER and CER (jiwer). Empty references count every hypothesis word as an insertion."""
    if not references:
        return {}
    return {"wer": float(jiwer.wer(list(references), list(hypotheses))),
            "cer": float(jiwer.cer(list(references), list(hypotheses)))}


# ---------------------------------------------------------------------------------------------- loading


def load_speech_splits(args: DataArguments) -> tuple[DatasetDict, dict[str, str], dict[str, Path | None]]:
    """Splits, where each came from, and the folder relative audio paths of each split resolve against.

    Sources: --audio_folder (an `audiofolder`), --dataset_name, or manifest files; a single manifest with
    --split_column is divided by that column's values (train / validation / test).
    """
    folder = getattr(args, "audio_folder", None)
    if folder:
        if not Path(folder).is_dir():
            raise RecipeInputError(f"--audio_folder {folder} is not a directory. Give the folder holding the audio "
                                   "files and their metadata.csv (a file_name column plus the transcript).")
        try:
            loaded = datasets.load_dataset("audiofolder", data_dir=folder)
        except Exception as err:  # noqa: BLE001 - any loader failure becomes one clear message
            raise RecipeInputError(f"--audio_folder {folder} could not be read as an audiofolder: {err}. It needs "
                                   "audio files plus a metadata.csv with a file_name column and the transcript.") from None
        splits = DatasetDict({SPLIT_ALIASES.get(k, k): v for k, v in loaded.items()})
        return splits, {k: f"{k} split of audiofolder {folder}" for k in splits}, dict.fromkeys(splits)
    splits = load_splits(args)
    sources = {split: source(args, split) for split in splits}
    bases = {split: None if args.dataset_name else Path(getattr(args, f"{split}_file")).resolve().parent
             for split in splits}
    split_column = getattr(args, "split_column", None)
    if split_column:
        splits, sources, bases = _split_by_column(splits, split_column, args.train_file, sources, bases)
    return splits, sources, bases


def _split_by_column(splits: DatasetDict, column: str, file: str | None, sources: dict, bases: dict):
    if list(splits) != ["train"]:
        raise RecipeInputError("--split_column divides one manifest: give it with --train_file only.")
    train = splits["train"]
    if column not in train.column_names:
        raise RecipeInputError(f"--split_column {column!r} not found in {sources['train']}"
                               f"{nearest(column, train.column_names)}; columns: {', '.join(train.column_names)}. "
                               "Set --split_column to the column that says train / validation / test.")
    names = [SPLIT_ALIASES.get(str(v).strip().lower(), str(v).strip().lower()) for v in train[column]]
    unknown = sorted(set(names) - {"train", "validation", "test"})
    if unknown:
        raise RecipeInputError(f"--split_column {column!r} in {sources['train']} has values {unknown}; use train, "
                               "validation (or dev) and test.")
    result = DatasetDict({name: train.select([i for i, n in enumerate(names) if n == name])
                          for name in ("train", "validation", "test") if name in names})
    if "train" not in result:
        raise RecipeInputError(f"--split_column {column!r}: no row is marked 'train' in {sources['train']}.")
    return result, {k: f"{k} rows of {file}" for k in result}, dict.fromkeys(result, bases["train"])


# ---------------------------------------------------------------------------------------------- decoding


def _resolve(path: str | None, base: Path | None) -> Path | None:
    if path is None or str(path).strip() == "":
        return None
    file = Path(str(path)).expanduser()
    return file if file.is_absolute() or base is None else base / file


def _stat(path: str | None, base: Path | None) -> tuple:
    file = _resolve(path, base)
    try:
        info = file.stat() if file is not None else None
    except OSError:
        info = None
    return (path, info.st_size, info.st_mtime_ns) if info else (path, None)


def _reason(err: Exception, file: str) -> str:
    """The decoder's reason, without its source location and the file name (listed already)."""
    lines = str(err).strip().splitlines()
    text = re.sub(r"^\w+, \S+:\d+, ", "", lines[0] if lines else type(err).__name__)
    return text.replace(f" {file}", "")[:160]


def decode_audio(value, base: Path | None, feature: Audio) -> dict:
    """One clip: its mono waveform at the feature's rate, channel count, and what is wrong with it (or '')."""
    empty = {SPEECH: np.zeros(0, np.float32), "channels": 0, "num_samples": 0}
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(value, dict) and value.get("bytes") is not None:
        where, shown = value, path or "<embedded bytes>"
    elif isinstance(path, str) and "://" in path:  # a remote file of a Hub dataset
        where, shown = {"path": path, "bytes": None}, path
    else:
        file = _resolve(path, base)
        shown = str(file) if file else "<no path>"
        if file is None:
            return {**empty, FILE: shown, "problem": "no audio path given"}
        if not file.is_file():
            return {**empty, FILE: shown, "problem": "file not found"}
        if file.stat().st_size == 0:
            return {**empty, FILE: shown, "problem": "zero-length file (0 bytes)"}
        where = {"path": str(file), "bytes": None}
    try:
        samples = feature.decode_example(where).get_all_samples()
    except Exception as err:  # noqa: BLE001 - FFmpeg's reasons vary; each becomes a 'could not decode' entry
        if "No audio frames were decoded" in str(err):  # torchcodec's words for a valid header with no samples
            return {**empty, FILE: shown, "problem": "zero-length audio (no samples)"}
        return {**empty, FILE: shown, "problem": f"could not decode: {_reason(err, shown)}"}
    data = samples.data.numpy()
    if data.size == 0:
        return {**empty, FILE: shown, "problem": "zero-length audio (no samples)"}
    # Mean of the channels, as `datasets` itself downmixes; the channel count is kept so it can be reported.
    return {SPEECH: data.mean(0).astype(np.float32), "channels": int(data.shape[0]), "num_samples": int(data.shape[1]),
            FILE: shown, "problem": ""}


def _decode_row(example: dict, column: str, base: Path | None, feature: Audio) -> dict:
    return decode_audio(example[column], base, feature)


def decode_splits(splits: DatasetDict, audio_column: str, sampling_rate: int, bases: dict[str, Path | None],
                  num_proc: int | None = None) -> DatasetDict:
    """Replace the audio column with SPEECH (the waveform), FILE, channels, num_samples and problem ('' if fine)."""
    result = DatasetDict()
    feature = Audio(sampling_rate=sampling_rate)
    for split, dataset in splits.items():
        base = bases.get(split)
        if isinstance(dataset.features[audio_column], Audio):
            dataset = dataset.cast_column(audio_column, Audio(decode=False))
            stats = None
        else:  # paths: the cache must notice an edited file, so its size and mtime enter the fingerprint
            stats = [_stat(p, base) for p in dataset[audio_column]]
        fingerprint = datasets.fingerprint.Hasher.hash(  # this module's source too: a code change decodes anew
            (dataset._fingerprint, audio_column, sampling_rate, str(base), stats, Path(__file__).read_bytes()))
        features = dataset.features.copy()
        del features[audio_column]
        features.update({SPEECH: datasets.Sequence(datasets.Value("float32")), FILE: datasets.Value("string"),
                         "channels": datasets.Value("int32"), "num_samples": datasets.Value("int64"),
                         "problem": datasets.Value("string")})
        decoded = dataset.map(
            _decode_row, fn_kwargs={"column": audio_column, "base": base, "feature": feature},
            remove_columns=[audio_column], features=features, num_proc=num_proc,
            new_fingerprint=fingerprint, desc=f"decode {split} audio",
        )
        result[split] = decoded
    return result


# ---------------------------------------------------------------------------------------------- checks


def _listing(rows: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{file} ({problem})" for file, problem in rows[:SHOWN])
    return shown + (f"; and {len(rows) - SHOWN} more" if len(rows) > SHOWN else "")


def check_examples(splits: DatasetDict, text_column: str | None, sources: dict[str, str], args: DataArguments,
                   normalize: Callable[[str], str]) -> tuple[DatasetDict, dict[str, int]]:
    """Fail listing every bad clip and empty transcript, or (--skip_bad_examples) drop them; returns the counts."""
    bad: dict[str, list[BadRow]] = {}
    for split, dataset in splits.items():
        has_text = text_column in dataset.column_names
        texts = dataset[text_column] if has_text else [None] * len(dataset)
        rows = []
        for i, (file, problem, text) in enumerate(zip(dataset[FILE], dataset["problem"], texts)):
            if not problem and has_text and not normalize(text):
                problem = "empty transcript" if not (text or "").strip() else f"transcript {text!r} is empty once normalised"
            if problem:
                rows.append(BadRow(i, file, problem))
        bad[split] = rows
    return drop_bad_rows(splits, bad, sources, args.skip_bad_examples, args.max_bad_fraction)


def filter_durations(splits: DatasetDict, sampling_rate: int, min_s: float | None, max_s: float | None,
                     model_limit_s: float | None, sources: dict[str, str]) -> tuple[DatasetDict, dict[str, int]]:
    """Drop clips outside [min_s, max_s] (counted per split); clips past the model's limit are an error."""
    result, counts = DatasetDict(), {}
    for split, dataset in splits.items():
        durations = np.asarray(dataset["num_samples"]) / sampling_rate
        keep = np.ones(len(durations), bool)
        if min_s is not None:
            keep &= durations >= min_s
        if max_s is not None:
            keep &= durations <= max_s
        if not keep.all():
            counts[f"duration_filtered_{split}"] = int((~keep).sum())
            logger.info("%s: dropped %d of %d clips outside [%s, %s] s", sources[split], (~keep).sum(), len(keep),
                        min_s, max_s)
            dataset = dataset.select(np.flatnonzero(keep))
            durations = durations[keep]
            if len(dataset) == 0:
                raise RecipeInputError(f"{sources[split]}: no clip is left within --min_duration_s {min_s} / "
                                       f"--max_duration_s {max_s}. Widen or drop those limits.")
        if model_limit_s is not None and (durations > model_limit_s).any():
            files = dataset[FILE]
            long = [(files[i], f"{durations[i]:.1f} s") for i in np.flatnonzero(durations > model_limit_s)]
            raise RecipeInputError(
                f"{sources[split]}: {len(long)} clip(s) are longer than the model's {model_limit_s:g} s input limit "
                f"and would be cut: {_listing(long)}. Split them, or drop them with --max_duration_s {model_limit_s:g}.")
        stereo = sum(1 for c in dataset["channels"] if c > 1)
        if stereo:
            counts[f"downmixed_to_mono_{split}"] = stereo
            logger.warning("%s: %d multi-channel clip(s) downmixed to mono (mean of the channels)", sources[split],
                           stereo)
        result[split] = dataset
    return result, counts


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
    from transformers import Wav2Vec2CTCTokenizer

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
        predictions = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        hypotheses = self.decode(np.asarray(predictions))
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
    import pandas as pd

    table = pd.DataFrame({"audio_file": list(files)})
    if references is not None:
        table["reference"] = list(references)
    table["hypothesis"] = list(hypotheses)
    if references is not None:
        table["wer"] = [jiwer.wer(normalize(r), normalize(h)) if normalize(r) else float("nan")
                        for r, h in zip(references, hypotheses)]
    table.to_csv(path, sep="\t", index=False)


# ---------------------------------------------------------------------------------------------- model side

CTC, SEQ2SEQ = "ctc", "seq2seq"


def model_family(config) -> str:
    """CTC (wav2vec2, HuBERT, WavLM, Data2VecAudio, ...) or seq2seq (Whisper, Speech2Text, ...), from the config."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CTC_MAPPING_NAMES,
        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    )

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

    With `keep_raw` (the augmented train split) the waveform passes through untouched: `TrainAugmentation`
    augments it and then calls `encode`, so the features are computed once, after augmentation.
    """

    def __init__(self, feature_extractor, keep_raw: bool = False):
        self.feature_extractor, self.keep_raw = feature_extractor, keep_raw
        self.input_name = feature_extractor.model_input_names[0]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {"labels": batch["labels"]} if "labels" in batch else {}
        return {**out, SPEECH: batch[SPEECH]} if self.keep_raw else {**out, **self.encode(batch)}

    def encode(self, raw: dict[str, list]) -> dict[str, list]:
        waveforms = [np.asarray(x, dtype=np.float32) for x in raw[SPEECH]]
        features = self.feature_extractor(waveforms, sampling_rate=self.feature_extractor.sampling_rate)
        return {self.input_name: list(features[self.input_name])}


class SpeechCollator:
    """Pads the model inputs with the feature extractor and the labels with -100.

    For seq2seq models the decoder start token, when the tokenizer put it first, is dropped: the model
    prepends it itself when it shifts the labels right.
    """

    def __init__(self, feature_extractor, decoder_start_token_id: int | None = None):
        self.feature_extractor, self.decoder_start_token_id = feature_extractor, decoder_start_token_id
        self.input_name = feature_extractor.model_input_names[0]

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        batch = self.feature_extractor.pad([{self.input_name: row[self.input_name]} for row in rows], return_tensors="pt")
        if "labels" in rows[0]:
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


def find_column(columns: Sequence[str], requested: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    """--<what>_column when given, else the first of `candidates` present."""
    if requested:
        return requested
    for name in candidates:
        if name in columns:
            return name
    raise RecipeInputError(f"no {what} column found in {where}: looked for {', '.join(candidates)}. Columns present: "
                           f"{', '.join(columns)}. Set --{what}_column.")


def checkpoint_tokenizer(model_args):
    """The checkpoint's tokenizer, or None when it ships none (a pretraining checkpoint such as wav2vec2-base)."""
    from transformers import AutoTokenizer

    from common.models import load_processor

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


def _whisper_multilingual(model_args) -> bool:
    from transformers import GenerationConfig

    from common.models import resolve_model_path

    try:
        generation = GenerationConfig.from_pretrained(resolve_model_path(model_args.model_name_or_path),
                                                      cache_dir=model_args.cache_dir, revision=model_args.model_revision)
    except OSError:
        return True
    return bool(getattr(generation, "is_multilingual", True))


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
    from common.models import load_model

    model = load_model(auto_class, model_args, config)
    if config.model_type == "whisper":
        generation = model.generation_config
        multilingual = getattr(generation, "is_multilingual", True)
        generation.language = model_args.language if multilingual else None
        generation.task = model_args.task if multilingual else None
        generation.forced_decoder_ids = None
    return model
