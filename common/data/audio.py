"""Audio data: load, decode, check and filter clips, and normalise transcripts.

Clips come from a Hub dataset, an `audiofolder` directory, or a csv/tsv/jsonl/parquet manifest whose audio
column holds file paths (relative ones are resolved against the manifest's folder). Every clip is decoded once
through the `datasets` Audio feature (torchcodec + FFmpeg), resampled to the feature extractor's rate and
downmixed to mono; the arrays are cached by `datasets`, keyed on the files' sizes and modification times so an
edited file is decoded again. Missing, unreadable and zero-length files and empty transcripts are collected over
the whole split, then reported together (or skipped and counted), before any model is trained.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Audio, DatasetDict
from transformers import ASTFeatureExtractor, WhisperFeatureExtractor

from common.core.config import LOCAL_DATA
from common.core.errors import RecipeInputError, nearest
from common.data import SPLIT_ALIASES, BadRow, drop_bad_rows, load_splits, source
from common.data.options import DataArguments

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


# ---------------------------------------------------------------------------------------------- loading


AUDIO_COLUMNS = ("audio", "path", "file", "audio_path", "audio_filepath", "file_name")  # tried in order


@dataclass
class AudioDataArguments(DataArguments):
    """Where the clips come from, for every audio recipe."""

    audio_folder: str | None = field(
        default=None, metadata={LOCAL_DATA: True, "help": "An audiofolder directory (audio files plus metadata.csv with file_name)."}
    )
    split_column: str | None = field(
        default=None, metadata={"help": "Column of --train_file that assigns each row to train / validation / test."}
    )
    audio_column: str | None = field(
        default=None, metadata={"help": "Audio column (file paths, relative to the manifest). Default: audio, path or file."}
    )
    audio_path_template: str | None = field(
        default=None, metadata={"help": "The audio column holds ids: each clip's path with the id in place of {}, "
                                        "relative to the manifest, e.g. 'wavs/{}.wav' (LJSpeech's metadata.csv)."}
    )
    min_duration_s: float | None = field(default=None, metadata={"help": "Drop clips shorter than this (counted)."})
    max_duration_s: float | None = field(default=None, metadata={"help": "Drop clips longer than this (counted)."})


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


def input_window(feature_extractor: Any) -> tuple[float, str] | None:
    """The longest clip, in seconds, that the feature extractor keeps whole, and what sets it; None: no limit.

    Whisper pads or cuts every clip to `chunk_length` seconds, AST to `max_length` filterbank frames (25 ms
    windows every 10 ms): a longer clip would be classified or transcribed on its first window alone.
    """
    name = type(feature_extractor).__name__
    if isinstance(feature_extractor, WhisperFeatureExtractor):
        seconds = feature_extractor.n_samples / feature_extractor.sampling_rate
        return seconds, f"{name} chunk_length {seconds:g} s"
    if isinstance(feature_extractor, ASTFeatureExtractor):
        frames = feature_extractor.max_length
        return round(0.025 + (frames - 1) * 0.010, 3), f"{name} max_length {frames} frames"
    return None


def window_problem(seconds: float, window: tuple[float, str] | None) -> str:
    """Why a clip of `seconds` would be cut by the model's input window, or '' when it fits."""
    if window is None or seconds <= window[0]:
        return ""
    return f"{seconds:.1f} s, longer than the model's {window[0]:g} s input limit ({window[1]})"


def filter_durations(splits: DatasetDict, sampling_rate: int, min_s: float | None, max_s: float | None,
                     window: tuple[float, str] | None, sources: dict[str, str]) -> tuple[DatasetDict, dict[str, int]]:
    """Drop clips outside [min_s, max_s] (counted per split); clips past the model's `input_window` are an error."""
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
        if window is not None and (durations > window[0]).any():
            files, limit = dataset[FILE], window[0]
            long = [(files[i], f"{durations[i]:.1f} s") for i in np.flatnonzero(durations > limit)]
            raise RecipeInputError(
                f"{sources[split]}: {len(long)} clip(s) are longer than the model's {limit:g} s input limit "
                f"({window[1]}) and would be cut to their first {limit:g} s: {_listing(long)}. Split them, or drop "
                f"them with --max_duration_s {limit:g}.")
        stereo = sum(1 for c in dataset["channels"] if c > 1)
        if stereo:
            counts[f"downmixed_to_mono_{split}"] = stereo
            logger.warning("%s: %d multi-channel clip(s) downmixed to mono (mean of the channels)", sources[split],
                           stereo)
        result[split] = dataset
    return result, counts
