"""The one exception type for bad input, raised before training starts."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable


class RecipeInputError(ValueError):
    """Bad input (file, column, value or option). The message says what is wrong and how to fix it."""


def nearest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean --x?)' for the closest valid spelling, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def run_main(main: Callable[[list[str] | None], object]) -> None:
    """Run a recipe's main() as a script: bad input becomes one clear line and exit code 2."""
    try:
        main(None)
    except RecipeInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
