"""Exact duplicates across splits: a validation or test row that also sits in train measures memory, not skill.

Public datasets often repeat rows (TREC holds the same question several times), so a validation split held out
of such a file shares some rows with train. The rows are compared on their input columns as whole Arrow
columns; the count is always logged, and --dedupe drops the duplicates from the evaluated side.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from common.core.errors import RecipeInputError
from common.data.arrow import column_array

logger = logging.getLogger(__name__)

EVALUATED = ("validation", "test")


def _keys(dataset: Dataset, columns: list[str]) -> pa.Array:
    parts = [column_array(dataset, c).cast(pa.string()).fill_null("") for c in columns]
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x1f")


def find_duplicates(splits: DatasetDict, columns: list[str], sources: dict[str, str], drop: bool
                    ) -> tuple[DatasetDict, dict[str, int]]:
    """Count the validation rows found in train, and the test rows found in train or validation; with `drop`
    remove them. Returns the splits and the counts (`duplicates_<split>`)."""
    if "train" not in splits or not all(c in splits["train"].column_names for c in columns):
        return splits, {}
    result, counts = DatasetDict(splits), {}
    seen = _keys(splits["train"], columns)
    for split in EVALUATED:
        if split not in splits or not all(c in splits[split].column_names for c in columns):
            continue
        keys = _keys(splits[split], columns)
        repeated = pc.is_in(keys, value_set=pc.unique(seen)).to_numpy(zero_copy_only=False)
        count = int(repeated.sum())
        counts[f"duplicates_{split}"] = count
        if count:
            earlier = "train" if split == "validation" else "train or validation"
            action = "dropped (--dedupe)" if drop else "kept; --dedupe drops them"
            logger.warning("%d of %d rows of %s also appear verbatim in %s: %s", count, len(keys), sources[split],
                           earlier, action)
            if drop and count == len(keys):
                raise RecipeInputError(f"--dedupe would drop every row of {sources[split]}: each one repeats "
                                       f"{earlier}. Check that the files differ.")
            if drop:
                result[split] = splits[split].select(np.flatnonzero(~repeated))
        seen = pa.concat_arrays([seen, keys])
    return result, counts
