"""Reader options (--delimiter, --column_names, --quoting), normalised and checked when arguments are parsed."""

from __future__ import annotations

import csv
from typing import Any

from common.errors import RecipeInputError, nearest

QUOTING = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "nonnumeric": csv.QUOTE_NONNUMERIC,
           "none": csv.QUOTE_NONE}
# Spellings of a tab that survive YAML and shells, where a literal tab is awkward to type.
TAB_SPELLINGS = {"\\t", "tab", "\t", "TAB"}


def split_names(values: list[str] | str | None) -> list[str] | None:
    """'a,b,c' or ['a,b,c'] -> ['a', 'b', 'c']: names given as one comma list. Several values (a YAML list, or
    separate values on the command line) are names as they stand, commas included ('Business, Finance')."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    if len(values) == 1:
        return [part.strip() for part in str(values[0]).split(",") if part.strip()]
    return [str(value).strip() for value in values]


def check_reader_options(args: Any) -> None:
    """Normalise the reader options of a DataArguments in place; a bad value fails naming the option."""
    if args.delimiter is not None:
        delimiter = "\t" if args.delimiter in TAB_SPELLINGS else args.delimiter
        if len(delimiter) != 1:
            raise RecipeInputError(f"--delimiter {args.delimiter!r} must be a single character, e.g. ',' or '|' "
                                   "(write '\\t' for a tab).")
        args.delimiter = delimiter
    if args.quoting is not None:
        args.quoting = args.quoting.lower()
        if args.quoting not in QUOTING:
            raise RecipeInputError(f"--quoting {args.quoting}: use one of {', '.join(QUOTING)}"
                                   f"{nearest(args.quoting, QUOTING)}.")
    args.column_names = split_names(args.column_names)
    if args.column_names is not None:
        repeated = sorted({n for n in args.column_names if args.column_names.count(n) > 1})
        if repeated or not args.column_names:
            raise RecipeInputError(f"--column_names {','.join(args.column_names)}: give each column a distinct "
                                   f"name (repeated: {', '.join(repeated)}).")
    if getattr(args, "class_names", None) is not None:
        args.class_names = split_names(args.class_names)
