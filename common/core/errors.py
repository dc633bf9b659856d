"""The exception types a recipe ends with on purpose: bad input (before training) and a stopped training."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable


class RecipeInputError(ValueError):
    """Bad input (file, column, value or option). The message says what is wrong and how to fix it."""


class UnknownOption(RecipeInputError):
    """A --config file names an option the recipe does not have (`key`)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class TrainingStopped(RuntimeError):
    """Training stopped before its end on purpose; the message says why and how to go on."""

    exit_code = 1


class NonFiniteLossError(TrainingStopped):
    """A NaN or inf training loss (or gradient) under --nan_policy stop, caught before the optimizer step."""


class Preempted(TrainingStopped):
    """SIGTERM (a scheduler's preemption): a checkpoint was saved at a step boundary and training stopped."""

    # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM: wrappers and schedulers see the
    # run as preempted rather than finished, and can requeue it.
    exit_code = 143


def nearest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean --x?)' for the closest valid spelling, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def run_main(main: Callable[[list[str] | None], object]) -> None:
    """Run a recipe's main() as a script: bad input becomes one clear line and exit code 2, a stopped
    training one line and its own exit code, without a traceback."""
    try:
        main(None)
    except RecipeInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as err:
        print(f"stopped: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
