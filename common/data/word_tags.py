"""Token-level data: one sentence per row, a list of tokens and a list of tags (named entities, say).

Sources: CoNLL files (`token<TAB>tag` or space-separated fields with the tag last, a blank line between
sentences, `-DOCSTART-` lines skipped), JSON lines or parquet rows holding a list of tokens and a list of tags,
and Hub datasets (`tokens` / `ner_tags`, whose ClassLabel names become the tags). Tags are read as given: a
sequence that breaks BIO (an `I-x` that follows neither `B-x` nor `I-x`) is counted and reported, never fixed.
Integer tag ids become names only through --tag_names; the tagging scheme (IO, IOB1, IOB2, IOBES) is read from the
tags, or named with --tag_scheme.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import datasets
from datasets import Dataset

from common.core.errors import RecipeInputError
from common.data.files import check_file, check_utf8, find_column, require_columns

logger = logging.getLogger(__name__)

TOKENS, TAGS = "tokens", "tags"
TOKEN_COLUMNS = ("tokens", "words")  # where a table's list of tokens is looked for
DOCUMENT = "document"  # CoNLL: the -DOCSTART- section a sentence is in (0 when the file has none): --cv_group_column
TABLE_FORMATS = (".json", ".jsonl", ".parquet")  # rows with list columns; any other file is read as CoNLL
DOCSTART = "-DOCSTART-"
SHOWN = 5  # line or row numbers quoted in an error


def read_conll(path: str, option: str, skip_bad: bool = False, tagged: bool = True) -> tuple[Dataset, int]:
    """Sentences of a CoNLL file as (tokens, tags) rows, and how many sentences with a tag-less line were
    skipped (--skip_bad_examples; otherwise such a line is an error naming it). Not `tagged`: tokens alone, the
    first field of each line."""
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
            if len(fields) < 2 and tagged:
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
    tags = {TAGS: [s[1] for s in sentences]} if tagged else {}
    return Dataset.from_dict({TOKENS: [s[0] for s in sentences], **tags, DOCUMENT: [s[2] for s in sentences]}), skipped


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


def named_tags(dataset: Dataset, names: list[str] | None, where: str) -> Dataset:
    """Tags that are all integer ids ('0', '3', ...) as their names from --tag_names, whose position is the id.
    Ids are never taken for names: without --tag_names they fail, naming both options."""
    values = {tag for row in dataset[TAGS] for tag in row}
    if not values or not all(tag.isdecimal() for tag in values):
        if names is not None:
            raise RecipeInputError(f"{where} holds tag names (such as {sorted(values)[0]!r}), not integer ids: leave "
                                   "out --tag_names/--tag_names_file, which name integer tag ids.")
        return dataset
    shown = ", ".join(sorted(values, key=int)[:SHOWN])
    if names is None:
        raise RecipeInputError(f"{where} holds integer tag ids ({shown}), not tag names. Give their names in id "
                               "order with --tag_names O,B-PER,I-PER,... or --tag_names_file tags.txt (one name per "
                               "line); a Hub dataset with a ClassLabel tag feature names them itself.")
    beyond = sorted((v for v in values if int(v) >= len(names)), key=int)
    if beyond:
        raise RecipeInputError(f"{where} holds tag ids {', '.join(beyond[:SHOWN])}, but --tag_names gives "
                               f"{len(names)} names (ids 0..{len(names) - 1}). Name every id.")
    return dataset.map(lambda row: {TAGS: [names[int(tag)] for tag in row[TAGS]]})


# Tagging schemes: IO tags are bare entity types (PER); IOB1 starts an entity with I- and uses B- only between two
# entities of one type; IOB2 (BIO) starts every entity with B-; IOBES adds E- (last word) and S- (single word).
IO, IOB1, IOB2, IOBES = "IO", "IOB1", "IOB2", "IOBES"
SCHEMES = {"IO": IO, "IOB1": IOB1, "IOB2": IOB2, "BIO": IOB2, "IOBES": IOBES, "BIOES": IOBES}
PREFIXED = re.compile(r"^([BIES])-(.+)$")


def entity_type(tag: str) -> str:
    """The entity type of a tag: B-PER and PER (IO) -> PER; O -> ''."""
    match = PREFIXED.match(tag)
    return match.group(2) if match else "" if tag == "O" else tag


def tag_scheme(sentences: Sequence[Sequence[str]], given: str | None = None, where: str = "the tags") -> str:
    """The tagging scheme of tag sequences, or --tag_scheme `given` once the tags are checked to fit it. A tag
    set that fits no scheme fails, listing the tags."""
    entities = sorted({tag for row in sentences for tag in row} - {"O"})
    prefixed = [tag for tag in entities if PREFIXED.match(tag)]
    if not entities:
        fits = [IOB2, IOB1, IOBES, IO]
    elif not prefixed:
        fits = [IO]
    elif len(prefixed) < len(entities):  # bare and prefixed tags mixed
        fits = []
    elif {tag[0] for tag in prefixed} <= {"B", "I"}:
        iob1 = _starts_entity(sentences, "I-") and not _starts_entity(sentences, "B-")
        fits = [IOB1, IOB2] if iob1 else [IOB2, IOB1]
    else:
        fits = [IOBES]
    listed = ", ".join(entities[:30]) + (" ..." if len(entities) > 30 else "")
    if not fits:
        raise RecipeInputError(
            f"{where} fit no tag scheme: {listed}. Tags other than O must all be bare entity types (IO: PER, ORG) "
            "or all carry a prefix: B-/I- (IOB1, IOB2/BIO) or B-/I-/E-/S- (IOBES), as in B-PER.")
    if given is None:
        return fits[0]
    scheme = SCHEMES.get(given.upper())
    if scheme not in fits:
        reason = f"{where} ({listed}) fit {' or '.join(fits)}" if scheme else f"use one of {', '.join(SCHEMES)}"
        raise RecipeInputError(f"--tag_scheme {given}: {reason}. Leave it out to detect the scheme from the tags.")
    return scheme


def _starts_entity(sentences: Sequence[Sequence[str]], prefix: str) -> bool:
    """Whether a tag with this prefix starts an entity (follows O or another type): B- in IOB2, I- in IOB1."""
    return any(tag.startswith(prefix) and entity_type(before) != entity_type(tag)
               for row in sentences for before, tag in zip(["O", *row], row))
