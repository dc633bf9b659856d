"""Tokenize with truncation and count what was cut, for every text recipe (classification and translation).

Each row is tokenized once without truncation, which gives its full length in tokens; only the rows over the
limit are tokenized again with truncation (so special tokens such as EOS or language codes stay in place).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import transformers
from datasets import DatasetDict

from common.data.arrow import column_array

logger = logging.getLogger(__name__)

LENGTH_COLUMN = "untruncated_tokens"  # per-row length column, removed again by `count_truncated`


def tokenize_truncated(tokenizer, texts: Sequence[list[str]], max_length: int, target: bool = False,
                       **kwargs) -> tuple[dict[str, list], list[int]]:
    """`tokenizer(*texts, truncation=True, max_length=max_length, **kwargs)`, and each row's untruncated length
    in tokens (special tokens included; a sentence pair counts both sides). `texts` holds one list per column:
    one for single texts, two for sentence pairs; `target` encodes one column as `text_target`."""

    def encode(columns: Sequence[list[str]], **options) -> dict[str, list]:
        if target:
            return dict(tokenizer(text_target=columns[0], **kwargs, **options))
        return dict(tokenizer(*columns, **kwargs, **options))

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "longer than the model's maximum length" is measured, then cut
    try:
        encoded = encode(texts, truncation=False, max_length=max_length)  # max_length: padding="max_length"
    finally:
        transformers.logging.set_verbosity(verbosity)
    encoded = {key: list(rows) for key, rows in encoded.items()}
    mask = encoded.get("attention_mask")  # padding to max_length: count the real tokens only
    lengths = [int(sum(row)) for row in mask] if mask is not None else [len(row) for row in encoded["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > max_length]
    if long:
        cut = encode([[column[i] for i in long] for column in texts], truncation=True, max_length=max_length)
        for key, rows in cut.items():
            for i, row in zip(long, rows):
                encoded[key][i] = row
    return encoded, lengths


def report_truncation(split: str, lengths: Sequence[int], limit: int, what: str, option: str,
                      warn_above: float = 0.01) -> int:
    """Log how many of a split's rows were longer than `limit` tokens and return that count; a WARNING when more
    than `warn_above` of the split was cut, INFO otherwise."""
    lengths = np.asarray(lengths)
    over = int((lengths > limit).sum())
    if over:
        level = logging.WARNING if over > warn_above * len(lengths) else logging.INFO
        logger.log(level, "%s: %d of %d %s were longer than %s %d tokens and were truncated (longest: %d tokens)",
                   split, over, len(lengths), what, option, limit, lengths.max())
    return over


def count_truncated(splits: DatasetDict, limit: int, what: str, option: str) -> tuple[DatasetDict, dict[str, int]]:
    """Per split: report the rows whose LENGTH_COLUMN exceeds `limit`, and drop that column. Returns the splits and
    `{"truncated_<split>": count}` for all_results.json."""
    counts = {}
    for split, dataset in splits.items():
        if LENGTH_COLUMN in dataset.column_names:
            lengths = column_array(dataset, LENGTH_COLUMN).to_numpy()
            counts[f"truncated_{split}"] = report_truncation(split, lengths, limit, what, option)
            splits[split] = dataset.remove_columns(LENGTH_COLUMN)
    return splits, counts
