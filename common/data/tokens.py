"""Token-level data: one sentence per row, a list of tokens and a list of tags (named entities, say).

Sources: CoNLL files (`token<TAB>tag` or space-separated fields with the tag last, a blank line between
sentences, `-DOCSTART-` lines skipped), JSON lines or parquet rows holding a list of tokens and a list of tags,
and Hub datasets (`tokens` / `ner_tags`, whose ClassLabel names become the tags). Tags are read as given: a
sequence that breaks BIO (an `I-x` that follows neither `B-x` nor `I-x`) is counted and reported, never fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import datasets
from datasets import Dataset

from common.core.errors import RecipeInputError
from common.data.files import check_file, check_utf8, find_column, require_columns

logger = logging.getLogger(__name__)

TOKENS, TAGS = "tokens", "tags"
DOCUMENT = "document"  # CoNLL: the -DOCSTART- section a sentence is in (0 when the file has none): --cv_group_column
TABLE_FORMATS = (".json", ".jsonl", ".parquet")  # rows with list columns; any other file is read as CoNLL
DOCSTART = "-DOCSTART-"
SHOWN = 5  # line or row numbers quoted in an error


def read_conll(path: str, option: str, skip_bad: bool = False) -> tuple[Dataset, int]:
    """Sentences of a CoNLL file as (tokens, tags) rows, and how many sentences with a tag-less line were
    skipped (--skip_bad_examples; otherwise such a line is an error naming it)."""
    file = check_file(path, option, formats=None)  # CoNLL files come as .conll, .txt, .iob, .annotated, ...
    check_utf8(file)
    sentences: list[tuple[list[str], list[str], int]] = []
    tokens: list[str] = []
    tags: list[str] = []
    bad: list[tuple[int, str]] = []
    broken = False
    skipped = document = 0

    def end_sentence() -> None:
        nonlocal tokens, tags, broken, skipped
        if tokens:
            if broken:
                skipped += 1
            else:
                sentences.append((tokens, tags, document))
        tokens, tags, broken = [], [], False

    with open(file, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                end_sentence()
                continue
            if fields[0] == DOCSTART:
                end_sentence()
                document += 1 if sentences else 0
                continue
            if len(fields) < 2:
                bad.append((number, line.rstrip("\n")))
                broken = True
                continue
            tokens.append(fields[0])
            tags.append(fields[-1])
    end_sentence()
    if bad and not skip_bad:
        listed = "; ".join(f"line {n}: {text!r}" for n, text in bad[:SHOWN])
        raise RecipeInputError(
            f"{option} {path}: {len(bad)} lines hold a token but no tag ({listed}{' ...' if len(bad) > SHOWN else ''}). "
            "Each line needs `token<TAB>tag` (a blank line between sentences): fix them, or pass "
            "--skip_bad_examples true to drop their sentences.")
    if skipped:
        logger.warning("%s %s: skipped %d sentences with a tag-less line (--skip_bad_examples)", option, path, skipped)
    if not sentences:
        raise RecipeInputError(f"{option} {path} holds no sentences: expected `token<TAB>tag` lines.")
    return Dataset.from_dict({TOKENS: [s[0] for s in sentences], TAGS: [s[1] for s in sentences],
                              DOCUMENT: [s[2] for s in sentences]}), skipped


def list_column(dataset: Dataset, requested: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    """The column holding a list per row (tokens or tags): --<what>_column, else the first candidate present."""
    name = find_column(dataset.column_names, requested, candidates, what, where)
    require_columns(dataset, [name], where, f"--{what}_column")
    if not isinstance(dataset.features[name], (datasets.Sequence, datasets.List)):
        example = dataset[0][name]
        raise RecipeInputError(f"column '{name}' of {where} holds {type(example).__name__} values such as "
                               f"{str(example)[:60]!r}, not a list of {what} per sentence. Give one list per row, "
                               f"or name the right column with --{what}_column.")
    return name


def tag_names(dataset: Dataset, column: str) -> list[str] | None:
    """The tag names of a ClassLabel tag column (Hub datasets), else None (the tags are their own names)."""
    inner = getattr(dataset.features[column], "feature", None)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def bio_violations(tags: Sequence[Sequence[str]]) -> int:
    """Tags `I-x` that follow neither `B-x` nor `I-x`: counted, never repaired."""
    count = 0
    for sentence in tags:
        previous = "O"
        for tag in sentence:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                count += 1
            previous = tag if tag[:2] in ("B-", "I-") else "O"
    return count
