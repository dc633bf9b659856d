"""Data for every recipe: readers (tables, JSON, text and class folders), sampling, labels and bad rows."""

from common.data.bad_rows import BadRow, drop_bad_rows, find_bad_rows
from common.data.files import (
    FORMATS,
    SPLIT_ALIASES,
    check_file,
    check_utf8,
    load_file,
    load_splits,
    load_text_folder,
    require_columns,
    source,
)
from common.data.sampling import add_validation_split, cap_splits, check_class_balance, drop_unused_splits

__all__ = ["FORMATS", "SPLIT_ALIASES", "BadRow", "add_validation_split", "cap_splits", "check_class_balance",
           "check_file", "check_utf8", "drop_bad_rows", "drop_unused_splits", "find_bad_rows", "load_file", "load_splits", "load_text_folder",
           "require_columns", "source"]
