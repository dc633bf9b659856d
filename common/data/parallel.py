"""Parallel text: every input shape becomes a Dataset with a `source` and a `target` column (test splits may
lack the target): a pair of line-aligned plain-text files, a `translation` dict column (Hub datasets, jsonl), or
two text columns of a csv/tsv/jsonl/parquet table.

Empty text: a pair empty on both sides carries nothing and is dropped, with a report. A pair empty on one side
only is an error naming the file (or column) and the line (or row) numbers: it is a missing translation or a
sign of misalignment, and training on it teaches the model to emit nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from common.core.errors import RecipeInputError
from common.data import BadRow, check_utf8, drop_bad_rows, require_columns

logger = logging.getLogger(__name__)

SOURCE, TARGET = "source", "target"
TRANSLATION_COLUMN = "translation"
SHOWN = 5  # line numbers quoted in an error message


def read_lines(path: str, option: str) -> list[str]:
    """The lines of a UTF-8 text file; a final newline does not start another line."""
    file = Path(path)
    if not file.is_file():
        raise RecipeInputError(f"{option} {path} does not exist or is not a file (relative to {Path.cwd()}).")
    check_utf8(file)
    text = file.read_text(encoding="utf-8")
    if not text:
        raise RecipeInputError(f"{option} {path} is empty. Give a UTF-8 text file with one sentence per line.")
    # Split on newlines only: str.splitlines() also breaks at U+2028, form feeds and other separators that
    # occur inside sentences, which would shift every later line against the other language's file.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def load_parallel_files(source_file: str, target_file: str | None, split: str) -> Dataset:
    """One split from line-aligned files: line i of the source file translates to line i of the target."""
    sources = read_lines(source_file, f"--{split}_source_file")
    if target_file is None:
        return Dataset.from_dict({SOURCE: sources})
    targets = read_lines(target_file, f"--{split}_target_file")
    if len(sources) != len(targets):
        (short, n_short), (long, n_long) = sorted([(source_file, len(sources)), (target_file, len(targets))],
                                                  key=lambda item: item[1])
        raise RecipeInputError(
            f"--{split}_source_file {source_file} has {len(sources)} lines but --{split}_target_file {target_file} "
            f"has {len(targets)}: line-aligned files need exactly one line per sentence pair. They stop aligning "
            f"at line {n_short + 1}, the first line of {long} with no counterpart in {short} ({n_long - n_short} "
            f"extra line{'s' if n_long - n_short > 1 else ''}). Look for a sentence split over two lines or a missing translation; the content "
            "may already drift before that line."
        )
    return Dataset.from_dict({SOURCE: sources, TARGET: targets})


def _keys(feature) -> list[str]:
    """Language keys of a `translation` column: a datasets Translation feature or a struct (dict) feature."""
    languages = getattr(feature, "languages", None)
    if languages is not None:
        return list(languages)
    return list(feature) if isinstance(feature, dict) else []


def pairs_from_table(dataset: Dataset, source_key: str, target_key: str, where: str, split: str) -> Dataset:
    """`source`/`target` columns from a `translation` dict column or from two text columns."""
    need_target = split != "test"
    if TRANSLATION_COLUMN in dataset.column_names:
        keys = _keys(dataset.features[TRANSLATION_COLUMN])
        missing = [k for k in (source_key, target_key) if k not in keys and (need_target or k == source_key)]
        if missing:
            raise RecipeInputError(
                f"language{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} not in the "
                f"'{TRANSLATION_COLUMN}' column of {where}, which holds: {', '.join(sorted(keys))}. Set --source_lang/"
                "--target_lang to those keys, or --source_column/--target_column when the model's language codes "
                "differ from the data's keys (e.g. NLLB's eng_Latn for 'en')."
            )
        has_target = target_key in keys

        def flatten(batch: dict) -> dict:
            pairs = batch[TRANSLATION_COLUMN]
            out = {SOURCE: [p.get(source_key) for p in pairs]}
            if has_target:
                out[TARGET] = [p.get(target_key) for p in pairs]
            return out

        return dataset.map(flatten, batched=True, remove_columns=dataset.column_names)
    columns = [source_key] + ([target_key] if need_target or target_key in dataset.column_names else [])
    option = "--source_column/--target_column (or --source_lang/--target_lang)"
    require_columns(dataset, columns, where, option)
    dataset = dataset.select_columns(columns)
    if len(columns) == 2 and source_key == target_key:
        raise RecipeInputError(f"source and target are the same column '{source_key}' in {where}: set {option}.")
    return dataset.rename_columns(dict(zip(columns, (SOURCE, TARGET))))


def _blank(values: Sequence) -> np.ndarray:
    return np.array([v is None or not str(v).strip() for v in values], dtype=bool)


def _numbers(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask) + 1
    shown = ", ".join(str(r) for r in rows[:SHOWN])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > SHOWN else "")


def drop_empty_pairs(dataset: Dataset, names: dict[str, str], unit: str, split: str, skip: bool = False,
                     max_fraction: float = 0.05) -> tuple[Dataset, int]:
    """Drop pairs empty on both sides (reported). A side empty alone is an error naming its line numbers, or
    with `skip` a bad row, dropped and counted; returns the dataset and that count.

    `names` says where each column came from (file or column name), `unit` is "line" or "row".
    """
    source = _blank(dataset[SOURCE])
    target = _blank(dataset[TARGET]) if TARGET in dataset.column_names else np.zeros_like(source)
    both = source & target
    if both.any():
        logger.warning("dropped %d pair(s) empty on both sides of %s and %s, at %ss %s", both.sum(), names[SOURCE],
                       names[TARGET], unit, _numbers(both))
        if both.all():
            raise RecipeInputError(f"{names[SOURCE]} and {names[TARGET]} hold no non-empty pair: every {unit} is "
                                   "blank on both sides. Check that these are the right files (or columns).")
    alone = {SOURCE: source & ~target, TARGET: target & ~source}
    if skip:
        bad = [BadRow(int(i), f"{unit} {i + 1}", f"empty {column}") for column, mask in alone.items()
               for i in np.flatnonzero(mask)]
        where = f"{names[SOURCE]} / {names[TARGET]}" if TARGET in dataset.column_names else names[SOURCE]
        # For its --max_bad_fraction check and log; the rows it keeps still hold the pairs empty on both sides.
        drop_bad_rows(DatasetDict({split: dataset}), {split: sorted(bad, key=lambda r: r.index)}, {split: where},
                      True, max_fraction)
        return dataset.select(np.flatnonzero(~(source | target))), len(bad)  # no side empty
    if TARGET not in dataset.column_names and source.any():
        raise RecipeInputError(f"{names[SOURCE]} has empty text at {unit}s {_numbers(source)}. Remove them, or pass "
                               "--skip_bad_examples to leave them out.")
    for column, mask in alone.items():
        if mask.any():
            other = names[TARGET if column == SOURCE else SOURCE]
            raise RecipeInputError(
                f"{names[column]} is empty at {unit}s {_numbers(mask)}, where {other} has text: a missing "
                f"translation or a misalignment. Remove those {unit}s from both sides, or fill in the missing text; "
                "or pass --skip_bad_examples to leave them out (counted in all_results.json)."
            )
    return (dataset.select(np.flatnonzero(~both)) if both.any() else dataset), 0
