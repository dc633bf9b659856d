"""Data for every recipe: readers (tables, JSON, text and class folders), sampling, labels and bad rows."""

from common.data.files import (
    FORMATS,
    SPLIT_ALIASES,
    add_validation_split,
    cap_splits,
    check_file,
    check_utf8,
    load_file,
    load_splits,
    require_columns,
    source,
)

__all__ = ["FORMATS", "SPLIT_ALIASES", "add_validation_split", "cap_splits", "check_file", "check_utf8", "load_file",
           "load_splits", "require_columns", "source"]
