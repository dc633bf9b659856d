"""One entry point for data: a Hub dataset by name, or local files per split, checked before training."""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from common.core.errors import RecipeInputError, nearest
from common.data.bad_rows import BadRow, drop_bad_rows
from common.data.options import QUOTING, DataArguments

logger = logging.getLogger(__name__)

# File extension -> datasets builder. Delimited tables take --delimiter/--column_names/--quoting; files without
# an extension (or .txt) are delimited tables whose delimiter is sniffed unless --delimiter gives it.
FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "csv", ".txt": "csv", "": "csv", ".psv": "csv",
                           ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
DEFAULT_DELIMITERS = {".csv": ",", ".tsv": "\t", ".psv": "|"}
SNIFFED = "\t,|;"  # delimiters tried on a file whose extension does not say
TEXT_FORMATS = {".csv", ".tsv", ".json", ".jsonl", ".txt", "", ".psv"}
SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "val": "validation", "eval": "validation"}
SPLITS = ("train", "validation", "test")
LONG_HEADER = 40  # a header name longer than this is almost surely a data value
HEAD_ROWS = 1000  # rows checked against the header's field count before the real read


def check_utf8(path: str | Path) -> int:
    """Fail with the file name and byte offset of the first byte that is not UTF-8; else return its number of
    lines (a last line without a newline counts), counted in the same pass."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
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
    return lines + (last != b"\n")


def check_file(path: str, option: str, formats: Sequence[str] | None = tuple(FORMATS)) -> Path:
    """An existing file with a supported extension (any, for formats None), or a clear error naming the option
    that gave it."""
    file = Path(path)
    if not file.exists():
        raise RecipeInputError(f"{option} {path} does not exist. Check the path (relative to {Path.cwd()}).")
    if not file.is_file():
        raise RecipeInputError(f"{option} {path} is not a file.")
    if formats is not None and file.suffix.lower() not in formats:
        shown = ", ".join(f or "no extension" for f in formats)
        raise RecipeInputError(f"{option} {path}: unsupported extension '{file.suffix}'. Use one of: {shown}.")
    return file


def _delimiter(file: Path, option: str, args: Any) -> str:
    given = getattr(args, "delimiter", None)
    if given:
        return given
    suffix = file.suffix.lower()
    if suffix in DEFAULT_DELIMITERS:
        return DEFAULT_DELIMITERS[suffix]
    with open(file, encoding="utf-8", newline="") as handle:
        sample = handle.read(1 << 16)
    try:
        found = csv.Sniffer().sniff(sample, delimiters=SNIFFED).delimiter
    except csv.Error:
        raise RecipeInputError(
            f"{option} {file}: cannot tell how its columns are separated (it has no .csv/.tsv extension and no "
            "consistent delimiter). Give --delimiter, e.g. --delimiter '\\t' or --delimiter '|'."
        ) from None
    logger.info("%s %s: columns separated by %r (sniffed; set --delimiter to override)", option, file, found)
    return found


def _check_header(file: Path, option: str, delimiter: str, quoting: int, names: list[str] | None) -> None:
    """The first lines, read as the table will be: a header that looks like data would silently lose a row and
    name the columns after it, and rows whose field count differs from the header mean a wrong delimiter."""
    with open(file, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        first = next(reader, [])
        rows = [row for _, row in zip(range(HEAD_ROWS), reader)]
    width = len(names) if names is not None else len(first)
    others = [c for c in SNIFFED if c != delimiter and c in "".join(first)]
    if names is None and len(first) == 1 and others:
        raise RecipeInputError(
            f"{option} {file}: its header {first[0]!r} is a single column when split on {delimiter!r}, and it contains "
            f"{others[0]!r}. Set --delimiter {others[0]!r} (or --delimiter to the file's real separator)."
        )
    if names is not None and first and len(first) != width:
        raise RecipeInputError(
            f"{option} {file}: --column_names gives {width} names ({', '.join(names)}) but its first line "
            f"has {len(first)} fields separated by {delimiter!r}. Give one name per column, or fix --delimiter."
        )
    ragged = next(((i, row) for i, row in enumerate(rows, start=2) if row and len(row) != width), None)
    if ragged is not None:
        hint = f" Its first line contains {others[0]!r}: try --delimiter {others[0]!r}." if others else ""
        raise RecipeInputError(
            f"{option} {file}: line {ragged[0]} has {len(ragged[1])} fields but line 1 has {width}, reading fields "
            f"separated by {delimiter!r}.{hint} Set --delimiter to the file's separator, or --quoting none if quote "
            "characters are part of the text."
        )
    if names is not None:
        return
    suspicious = [name for name in first if _is_number(name) or len(name.strip()) > LONG_HEADER or not name.strip()]
    if suspicious:
        shown = suspicious[0] if len(suspicious[0]) <= 60 else suspicious[0][:57] + "..."
        raise RecipeInputError(
            f"{option} {file}: its first line looks like data, not a header: {shown!r} is not a column name. If "
            f"the file has no header row, name its {len(first)} columns with --column_names, e.g. --column_names "
            f"{','.join(f'col{i}' for i in range(1, len(first) + 1))}."
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_kwargs(file: Path, option: str, args: Any) -> dict[str, Any]:
    """datasets builder kwargs for one file: delimiter, header and quoting for tables; the JSON field."""
    builder = FORMATS[file.suffix.lower()]
    if builder == "csv":
        delimiter = _delimiter(file, option, args)
        quoting = QUOTING[getattr(args, "quoting", None) or ("none" if delimiter == "\t" else "minimal")]
        names = getattr(args, "column_names", None)
        _check_header(file, option, delimiter, quoting, names)
        # Only empty fields are missing: pandas' default also turns texts like "NA", "null" or "None" into nulls.
        kwargs = {"delimiter": delimiter, "quoting": quoting, "keep_default_na": False, "na_values": [""]}
        return {**kwargs, "column_names": names} if names else kwargs
    field = getattr(args, "data_field", None)
    if builder == "json" and field and _is_json_document(file, field):
        return {"field": field}
    return {}


def _is_json_document(file: Path, field: str) -> bool:
    """True for one JSON document holding its records as a list under `field` (read with datasets' `field=`),
    False for JSON lines whose `field` holds one nested record per line."""
    with open(file, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return True  # a document spread over several lines
    return isinstance(record, dict) and isinstance(record.get(field), list)


def _unnest(dataset: Dataset, field: str, option: str, path: str) -> Dataset:
    """JSON lines whose records sit under `field`: its keys become the columns (other top-level keys stay)."""
    if field not in dataset.column_names:
        raise RecipeInputError(f"{option} {path}: --data_field {field!r} is not a field of its records"
                               f"{nearest(field, dataset.column_names)}. Fields: {', '.join(dataset.column_names)}.")
    feature = dataset.features[field]
    if not isinstance(feature, dict):
        raise RecipeInputError(f"{option} {path}: --data_field {field!r} holds {type(feature).__name__} values, "
                               "not nested records. Leave out --data_field, or name the field holding the records.")
    clash = sorted(set(feature) & (set(dataset.column_names) - {field}))
    if clash:
        raise RecipeInputError(f"{option} {path}: --data_field {field!r} holds {', '.join(clash)}, which also exist "
                               "outside it. Rename one of them.")
    flat = dataset.flatten()
    return flat.rename_columns({f"{field}.{key}": key for key in feature})


def load_file(path: str, option: str, split: str = "train", args: Any = None) -> Dataset:
    """Load one local data file as a Dataset, turning reader failures into errors naming the file."""
    file = check_file(path, option)
    lines = check_utf8(file) if file.suffix.lower() in TEXT_FORMATS else None
    builder = FORMATS[file.suffix.lower()]
    fix = "Give a file with a header and data rows" + ("." if split == "train" else f", or leave out {option}.")
    empty = RecipeInputError(f"{option} {path} has no rows: the {split} split is empty. {fix}")
    if file.stat().st_size == 0:
        raise empty
    kwargs = _read_kwargs(file, option, args)
    try:
        dataset = datasets.load_dataset(builder, data_files={split: str(file)}, split=split, **kwargs)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one clear message
        if "corresponds to no data" in str(err):  # a header and no rows
            raise empty from None
        cause = err.__cause__ or err.__context__ or err
        hint = ("fix the file, or set --delimiter/--quoting/--column_names to match it" if builder == "csv"
                else "fix the file, or rename it to the extension of its real format")
        raise RecipeInputError(f"{option} {path} could not be read as {builder}: {cause}. {hint.capitalize()}.") from None
    if len(dataset) == 0:
        raise empty
    if builder == "csv" and kwargs["quoting"] != csv.QUOTE_NONE:
        rows = len(dataset) + (0 if kwargs.get("column_names") else 1)  # the header is a line too
        if lines > rows:  # quoted fields may hold line breaks, but so does text that an unbalanced quote swallowed
            logger.warning("%s %s: %d lines became %d rows, so %d line breaks sit inside quoted fields. If quote "
                           "characters are part of your text, read it with --quoting none.", option, file, lines,
                           rows, lines - rows)
    field = getattr(args, "data_field", None)
    if builder == "json" and field and "field" not in kwargs:
        dataset = _unnest(dataset, field, option, path)
    return dataset


def load_text_folder(directory: str, option: str, split: str) -> Dataset:
    """One sub-folder per class holding .txt files (the text twin of imagefolder): columns text, label, file."""
    root = Path(directory)
    if not root.is_dir():
        raise RecipeInputError(f"{option} {directory} is not a directory. Give a folder with one sub-folder per "
                               "class holding .txt files, e.g. train/pos/1.txt, train/neg/2.txt.")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    loose = sorted(entry.name for entry in os.scandir(root) if entry.is_file() and entry.name.endswith(".txt"))
    if loose or not classes:
        raise RecipeInputError(f"{option} {directory}: put the .txt files in one sub-folder per class (found "
                               f"{'loose files such as ' + loose[0] if loose else 'no class sub-folders'}).")
    texts, labels, files = [], [], []
    for name in classes:
        paths = sorted((root / name).rglob("*.txt"))
        if not paths and split == "train":
            raise RecipeInputError(f"{option} {directory}: class folder {name} has no .txt files, so the model "
                                   "could never predict it. Add files or remove the folder.")
        for path in paths:
            try:
                texts.append(path.read_bytes().decode("utf-8").strip())
            except UnicodeDecodeError:
                check_utf8(path)  # raises, naming the byte offset
                raise
            labels.append(name)
            files.append(str(path))
    return Dataset.from_dict({"text": texts, "label": labels, "file": files})


def load_splits(args: DataArguments, folder_loader: Callable[[str, str, str], Dataset] | None = None) -> DatasetDict:
    """Train/validation/test splits from a Hub dataset, --train_file/--validation_file/--test_file, or (with a
    `folder_loader`) class folders given as --train_dir/--validation_dir/--test_dir."""
    dirs = {split: getattr(args, f"{split}_dir", None) for split in SPLITS}
    files = {split: getattr(args, f"{split}_file", None) for split in SPLITS}
    if any(dirs.values()) and folder_loader is not None:
        others = [f"--{s}_file" for s, f in files.items() if f] + (["--dataset_name"] if args.dataset_name else [])
        if others:
            raise RecipeInputError(f"give class folders (--train_dir ...) or {', '.join(others)}, not both.")
        return DatasetDict({s: folder_loader(d, f"--{s}_dir", s) for s, d in dirs.items() if d})
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
    if not any(files.values()):
        raise RecipeInputError("no data given: pass --dataset_name, or --train_file (plus --validation_file/--test_file).")
    return DatasetDict({split: load_file(path, f"--{split}_file", split, args) for split, path in files.items() if path})


def fill_path_template(splits: DatasetDict, column: str, template: str | None, option: str,
                       bases: dict[str, Path | None], sources: dict[str, str],
                       args: DataArguments) -> tuple[DatasetDict, dict[str, int]]:
    """A `column` of bare ids (LJSpeech's LJ001-0001) made file paths: `template` with the id in place of {}
    ('wavs/{}.wav'), relative to the split's manifest folder in `bases`. A row without its file is a bad row naming
    its id and path: an error, or dropped and counted with --skip_bad_examples (the counts are returned)."""
    if not template:
        return splits, {}
    result, bad = DatasetDict(), {}
    for split, dataset in splits.items():
        feature = dataset.features[column]
        if not isinstance(feature, datasets.Value):
            raise RecipeInputError(f"{option}: column '{column}' of {sources[split]} holds {type(feature).__name__} "
                                   "values, not ids to put in the template. Leave out the option for this data.")
        base, paths, rows = bases.get(split), [], []
        for i, value in enumerate(dataset[column]):
            key = "" if value is None else str(value).strip()
            path = base / template.replace("{}", key) if base else Path(template.replace("{}", key))
            paths.append(str(path))
            if not key:
                rows.append(BadRow(i, f"row {i + 1}", "no id"))
            elif not path.is_file():
                rows.append(BadRow(i, f"row {i + 1}", f"id {key!r}: no file {path}"))
        result[split], bad[split] = dataset.remove_columns(column).add_column(column, paths), rows
    return drop_bad_rows(result, bad, sources, args.skip_bad_examples, args.max_bad_fraction)


def source(args: DataArguments, split: str) -> str:
    """Where a split came from, for error messages."""
    path = getattr(args, f"{split}_dir", None) or getattr(args, f"{split}_file", None)
    if args.dataset_name and not path:
        return f"split '{split}' of {args.dataset_name}"
    return f"{split} split ({path})" if path else f"{split} split"


def require_columns(dataset: Dataset, columns: Sequence[str], where: str, option: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        hints = "".join(nearest(c, dataset.column_names) for c in missing)
        raise RecipeInputError(
            f"column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} not found in {where}{hints}. "
            f"Columns present: {', '.join(dataset.column_names)}. Set {option} to the right name."
        )


def find_column(columns: Sequence[str], requested: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    """--<what>_column when given, else the first of `candidates` present."""
    if requested:
        return requested
    for name in candidates:
        if name in columns:
            return name
    raise RecipeInputError(f"no {what} column found in {where}: looked for {', '.join(candidates)}. Columns present: "
                           f"{', '.join(columns)}. Set --{what}_column.")
