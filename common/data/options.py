"""Reader options (--delimiter, --column_names, --quoting), normalised and checked when arguments are parsed."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from typing import Any

from common.core.config import LOCAL_DATA
from common.core.errors import RecipeInputError, nearest

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
    for option, template in vars(args).items():  # --audio_path_template, --image_path_template, ...
        if option.endswith("_path_template") and template is not None and "{}" not in template:
            raise RecipeInputError(f"--{option} {template!r} has no {{}} for the row's id: write where each id's "
                                   f"file is, relative to the manifest, e.g. --{option} 'files/{{}}.wav'.")
    if getattr(args, "class_names", None) is not None:
        args.class_names = split_names(args.class_names)


@dataclass
class DataArguments:
    """Data options every recipe shares; each recipe subclasses this with its own columns."""

    _argument_group_name = "data"

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name (instead of local files)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Training data: csv, tsv, json, jsonl or parquet."})
    validation_file: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Validation data, same formats."})
    test_file: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Test data, same formats; labels optional."})
    validation_split: float = field(
        default=0.1,
        metadata={"help": "Fraction of train held out (stratified) when there is no validation split. In (0, 1)."},
    )
    delimiter: str | None = field(
        default=None,
        metadata={"help": "Field delimiter of csv/tsv/txt (or extension-less) tables: any single character, '\\t' for "
                          "tab. Default: tab for .tsv, comma for .csv, sniffed for .txt and files without extension."},
    )
    column_names: list[str] | None = field(
        default=None,
        metadata={"help": "Column names, in order, for header-less csv/tsv/txt files (e.g. label,title,body); "
                          "the first line is then read as data."},
    )
    quoting: str | None = field(
        default=None,
        metadata={"help": "Quote handling of delimited tables, as the csv module: minimal | all | nonnumeric | none. "
                          "Default: none for tab-delimited files (quotes are text), minimal otherwise."},
    )
    data_field: str | None = field(
        default=None,
        metadata={"help": "JSON/JSONL: the field holding the records (a list in a .json document, or a nested "
                          "object per line whose keys become the columns)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows: a seeded random sample, stratified "
                                        "by class for single-label classification."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many validation rows (sampled as above)."})
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many test rows (sampled as above)."})
    dedupe: bool = field(
        default=False,
        metadata={"help": "Drop validation rows that repeat a train row verbatim, and test rows that repeat train or "
                          "validation (they are counted and logged either way)."},
    )
    skip_bad_examples: bool = field(
        default=False,
        metadata={"help": "Drop bad rows (empty text, unparsable labels, unreadable or empty files) instead of "
                          "failing; they are counted per split in all_results.json."},
    )
    max_bad_fraction: float = field(
        default=0.05,
        metadata={"help": "With --skip_bad_examples, fail anyway when more than this fraction of a split is bad."},
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for dataset .map()."})

    def __post_init__(self) -> None:
        if not 0.0 < self.validation_split < 1.0:
            raise RecipeInputError(
                f"--validation_split {self.validation_split} is outside (0, 1): give the fraction of train to hold "
                "out, e.g. --validation_split 0.1."
            )
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise RecipeInputError(f"--max_bad_fraction {self.max_bad_fraction} is outside [0, 1]: give a fraction "
                                   "of a split, e.g. 0.05.")
        check_reader_options(self)
