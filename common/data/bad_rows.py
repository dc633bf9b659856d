"""Bad rows (empty text, unparsable labels, unreadable files): one policy for every recipe.

Without --skip_bad_examples a bad row stops the run before training, listing the rows. With it, the rows are
dropped, counted per split (the counts go to all_results.json) and the first few named in the log, unless more
than --max_bad_fraction of a split is bad: that many usually means a wrong column, delimiter or path, not a
few broken rows, and training on what is left would hide it.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from common.core.errors import RecipeInputError
from common.data.arrow import column_chunks
from common.data.labels import bad_label_rows

logger = logging.getLogger(__name__)

SHOWN = 10  # bad rows named in a message


@dataclass
class BadRow:
    index: int  # position in the split as loaded
    where: str  # what a person looks for: "line 7", a file path
    problem: str

    def __str__(self) -> str:
        return f"{self.where} ({self.problem})"


def listing(rows: list[BadRow], shown: int = SHOWN) -> str:
    text = "; ".join(str(row) for row in rows[:shown])
    return text + (f"; and {len(rows) - shown} more" if len(rows) > shown else "")


def add_counts(*counts: dict[str, int]) -> dict[str, int]:
    """Counts from several checks, summed per key: two checks that each skip rows of a split (labels, then
    files) both count, where merging the dicts would keep only the last one's."""
    total: Counter[str] = Counter()
    for part in counts:
        total.update(part)  # update, unlike `+`, keeps zero counts (a results file says nothing was skipped)
    return dict(total)


def drop_bad_rows(
    splits: DatasetDict,
    bad: dict[str, list[BadRow]],
    sources: dict[str, str],
    skip: bool,
    max_fraction: float,
) -> tuple[DatasetDict, dict[str, int]]:
    """Fail naming the bad rows, or (skip) drop them; returns the splits and the skipped counts.

    The counts are `skipped_bad_examples_<split>` plus their total `skipped_bad_examples`, present whenever
    `skip` is set (zeros included), so a results file always says whether anything was dropped.
    """
    bad = {split: rows for split, rows in bad.items() if rows}
    for split, rows in bad.items():
        if len(rows) == len(splits[split]) and all(r.problem in ("no label", "empty label") for r in rows):
            raise RecipeInputError(f"{sources[split]}: the label column is empty in all {len(rows)} rows. Point "
                                   "--label_column at the column that holds the labels, or fill them in.")
    if bad and not skip:
        details = " ".join(f"{sources[split]}: {len(rows)} bad row{'s' if len(rows) > 1 else ''}: {listing(rows)}."
                           for split, rows in bad.items())
        raise RecipeInputError(f"{details} Fix or remove them, or pass --skip_bad_examples to train without them "
                               "(they are counted in all_results.json).")
    counts = {f"skipped_bad_examples_{split}": len(bad.get(split, [])) for split in splits} if skip else {}
    if skip:
        counts["skipped_bad_examples"] = sum(len(rows) for rows in bad.values())
    result = DatasetDict(splits)
    for split, rows in bad.items():
        total = len(splits[split])
        if len(rows) > max_fraction * total:
            raise RecipeInputError(
                f"{sources[split]}: {len(rows)} of {total} rows ({len(rows) / total:.1%}) are bad, more than "
                f"--max_bad_fraction {max_fraction:g} allows: {listing(rows)}. So many usually means a wrong "
                "column, delimiter or path rather than a few broken rows: check those first, or raise "
                "--max_bad_fraction if the data really is that noisy."
            )
        keep = np.ones(total, dtype=bool)
        keep[[row.index for row in rows]] = False
        result[split] = splits[split].select(np.flatnonzero(keep))
        logger.warning("--skip_bad_examples: skipped %d of %d rows of %s: %s", len(rows), total, sources[split],
                       listing(rows))
    return result, counts


def empty_text_rows(dataset: Dataset, columns: list[str]) -> dict[int, str]:
    """Rows whose text is missing or only whitespace in any of `columns`: {row: problem}."""
    bad: dict[int, str] = {}
    for column in columns:
        for start, values in column_chunks(dataset, column):
            if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
                values = values.cast(pa.string())
            blank = pc.equal(pc.utf8_trim_whitespace(values), "").fill_null(True)
            for i in np.flatnonzero(blank.to_numpy(zero_copy_only=False)):
                bad.setdefault(start + int(i), f"empty text in '{column}'")
    return bad


def find_bad_rows(dataset: Dataset, text_columns: list[str], label_column: str | None, where: str,
                  separator: str | None = None) -> list[BadRow]:
    """Empty texts and missing or unparsable labels of one split, in row order."""
    problems = empty_text_rows(dataset, text_columns)
    if label_column is not None and label_column in dataset.column_names:
        for row, problem in bad_label_rows(dataset, label_column, separator, where).items():
            problems[row] = f"{problems[row]}, {problem}" if row in problems else problem
    return [BadRow(row, f"row {row + 1}", problems[row]) for row in sorted(problems)]
