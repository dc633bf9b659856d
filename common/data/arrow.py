"""Whole columns of a Dataset as Arrow arrays, the input of every vectorised data step."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset


def column_array(dataset: Dataset, column: str) -> pa.Array:
    """One column, in the dataset's row order, as one Arrow array.

    After `select` a Dataset is its original table plus an indices mapping, and reading a column through its
    formatter gathers row by row (one slice per row: seconds for a few hundred thousand rows). Taking the
    mapped rows from the column itself is one vectorised `take`.
    """
    values = dataset.data.column(column)
    indices = dataset._indices  # datasets exposes no public accessor for the mapping
    if indices is not None:
        values = values.take(indices.column(0))
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def column_chunks(dataset: Dataset, column: str, rows: int = 1 << 16) -> Iterator[tuple[int, pa.Array]]:
    """(first row, values) for consecutive slices of a column: text columns of millions of rows are scanned
    without a copy of the whole column in memory."""
    for start in range(0, len(dataset), rows):
        yield start, column_array(dataset.select(range(start, min(start + rows, len(dataset)))), column)


def list_lengths(dataset: Dataset, column: str) -> list[int]:
    """The length of each row's list in `column` (token ids, say), measured on the whole Arrow column at once."""
    return pc.list_value_length(column_array(dataset, column)).to_pylist()
