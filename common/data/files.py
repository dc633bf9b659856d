"""One entry point for data: a Hub dataset by name, or local files per split, checked before training."""

from __future__ import annotations

import codecs
import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, DatasetDict

from typing import TYPE_CHECKING
from common.errors import RecipeInputError, nearest

if TYPE_CHECKING:
    from common.config import DataArguments

logger = logging.getLogger(__name__)

# File extension -> (datasets builder, builder kwargs).
FORMATS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
TEXT_FORMATS = {".csv", ".tsv", ".json", ".jsonl", ".txt"}
SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation", "eval": "validation"}


def check_utf8(path: str | Path) -> None:
    """Fail with the file name and byte offset of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise RecipeInputError(
                    f"{path} is not valid UTF-8: byte 0x{err.object[err.start]:02x} at byte offset "
                    f"{offset - pending + err.start} cannot be decoded. Re-encode the file as UTF-8, "
                    "e.g. `iconv -f latin1 -t utf-8 IN > OUT`."
                ) from None
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise RecipeInputError(
            f"{path} is not valid UTF-8: it ends inside a multi-byte character (byte offset {offset}). "
            "Re-encode the file as UTF-8."
        ) from None


def check_file(path: str, option: str, formats: Sequence[str] = tuple(FORMATS)) -> Path:
    """A readable file with a supported extension, or a clear error naming the option that gave it."""
    file = Path(path)
    if not file.exists():
        raise RecipeInputError(f"{option} {path} does not exist. Check the path (relative to {Path.cwd()}).")
    if not file.is_file():
        raise RecipeInputError(f"{option} {path} is not a file.")
    if file.suffix.lower() not in formats:
        raise RecipeInputError(
            f"{option} {path}: unsupported extension '{file.suffix}'. Use one of: {', '.join(formats)}."
        )
    if file.suffix.lower() in TEXT_FORMATS:
        check_utf8(file)
    return file


def load_file(path: str, option: str, split: str = "train") -> Dataset:
    """Load one local data file as a Dataset, turning reader failures into errors naming the file."""
    file = check_file(path, option)
    builder, kwargs = FORMATS[file.suffix.lower()]
    fix = "Give a file with a header and data rows" + ("." if split == "train" else f", or leave out {option}.")
    empty = RecipeInputError(f"{option} {path} has no rows: the {split} split is empty. {fix}")
    if file.stat().st_size == 0:
        raise empty
    try:
        dataset = datasets.load_dataset(builder, data_files={split: str(file)}, split=split, **kwargs)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear message
        if "corresponds to no data" in str(err):  # a header and no rows
            raise empty from None
        cause = err.__cause__ or err.__context__ or err
        raise RecipeInputError(
            f"{option} {path} could not be read as {builder}: {cause}. Its extension '{file.suffix}' chose the "
            f"{builder} reader: fix the file, or rename it to the extension of its real format."
        ) from None
    if len(dataset) == 0:
        raise empty
    return dataset


def load_splits(args: DataArguments) -> DatasetDict:
    """Train/validation/test splits from a Hub dataset or from --train_file/--validation_file/--test_file."""
    if args.dataset_name:
        try:
            loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as err:  # noqa: BLE001
            raise RecipeInputError(
                f"could not load Hub dataset '{args.dataset_name}'"
                f"{f' ({args.dataset_config_name})' if args.dataset_config_name else ''}: {err}. "
                "Check the name, or pass local files with --train_file/--validation_file."
            ) from None
        splits = DatasetDict({SPLIT_ALIASES.get(name, name): ds for name, ds in loaded.items()})
        for name, ds in splits.items():
            if len(ds) == 0:
                raise RecipeInputError(f"split '{name}' of Hub dataset '{args.dataset_name}' is empty.")
        return splits
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    if not any(files.values()):
        raise RecipeInputError("no data given: pass --dataset_name, or --train_file (plus --validation_file/--test_file).")
    return DatasetDict(
        {split: load_file(path, f"--{split}_file", split) for split, path in files.items() if path}
    )


def source(args: DataArguments, split: str) -> str:
    """Where a split came from, for error messages."""
    if args.dataset_name:
        return f"split '{split}' of {args.dataset_name}"
    path = getattr(args, f"{split}_file", None)
    return f"{split} split ({path})" if path else f"{split} split"


def require_columns(dataset: Dataset, columns: Sequence[str], where: str, option: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        hints = "".join(nearest(c, dataset.column_names) for c in missing)
        raise RecipeInputError(
            f"column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} not found in {where}{hints}. "
            f"Columns present: {', '.join(dataset.column_names)}. Set {option} to the right name."
        )


def add_validation_split(
    splits: DatasetDict, fraction: float, seed: int, stratify: Sequence | None = None
) -> DatasetDict:
    """Hold out `fraction` of train as validation (stratified by `stratify` when every class has 2+ rows)."""
    if "validation" in splits or "train" not in splits:
        return splits
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(splits["train"]))
    labels = None
    if stratify is not None:
        values, counts = np.unique(np.asarray([str(v) for v in stratify]), return_counts=True)
        n_eval = int(round(fraction * len(indices)))
        if counts.min() >= 2 and n_eval >= len(values):
            labels = [str(v) for v in stratify]
        else:
            logger.warning("validation split is not stratified: some class has fewer than 2 rows")
    try:
        train_idx, eval_idx = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as err:
        raise RecipeInputError(f"cannot hold out {fraction} of {len(indices)} training rows: {err}") from None
    logger.info("no validation split given: held out %d of %d training rows (seed %d)", len(eval_idx), len(indices), seed)
    result = DatasetDict(splits)
    result["train"] = splits["train"].select(sorted(train_idx))
    result["validation"] = splits["train"].select(sorted(eval_idx))
    return result


def cap_splits(splits: DatasetDict, args: DataArguments, seed: int | None = None) -> DatasetDict:
    """Apply --max_train_samples / --max_eval_samples / --max_predict_samples: the first N rows, as HF examples do,
    or with `seed` a seeded random sample (for data files sorted by label)."""
    caps = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_predict_samples}
    result = DatasetDict(splits)
    for split, cap in caps.items():
        if cap is not None and split in result and len(result[split]) > cap:
            dataset = result[split] if seed is None else result[split].shuffle(seed=seed)
            result[split] = dataset.select(range(cap))
    return result
