"""A wall-clock budget for a whole run (`--time_budget 10m`), counted from the process start, and the callback that
keeps it: `DeadlineCallback` stops training at a step boundary while there is still time for the work after
training (the final evaluation, the test predictions, the save and the report).

The plan (common.strategies.budget) forecasts how many steps fit; the callback is the guarantee. It measures the
time of each optimizer step and of each evaluation as they happen, and before every further step asks whether
one more step (plus the evaluation due at this step) still leaves the reserve. Every process of a DDP run takes
the same decision (any process short of time stops them all), so none waits on a collective the others left.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psutil
from transformers import TrainerCallback

from common.core.errors import RecipeInputError
from common.training.reliability import agreed_max, any_process

logger = logging.getLogger(__name__)

UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|min|m|sec|s)?", re.IGNORECASE)


def parse_duration(text: str | float) -> float:
    """Seconds in '90s', '10m', '2h', '1h30m' or a bare number of seconds."""
    value = str(text).strip().lower()
    parts = list(DURATION.finditer(value))
    if not parts or "".join(p.group(0) for p in parts).replace(" ", "") != value.replace(" ", ""):
        raise RecipeInputError(f"--time_budget {text!r}: give a duration such as 90s, 10m, 2h or 1h30m.")
    seconds = sum(float(p.group(1)) * UNITS[p.group(2) or "s"] for p in parts)
    if seconds <= 0:
        raise RecipeInputError(f"--time_budget {text!r}: give a duration longer than zero, such as 90s, 10m, 2h.")
    return seconds


def process_start() -> float:
    """When this process started (epoch seconds): the budget covers imports and data preparation too."""
    return psutil.Process().create_time()


@dataclass
class Deadline:
    """The budget, its start, and the clock that reads it (time.time; tests pass a fake one)."""

    budget_s: float
    start: float = field(default_factory=process_start)
    clock: Callable[[], float] = time.time

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()


# Step times the forecast of the next step is taken from: recent ones, so a slower stretch (longer batches, a
# throttled machine) counts at once, and the largest of the last few, so one slow step is not averaged away.
RECENT_STEPS = 20
SLOWEST_OF = 3
# Every REPLAN_EVERY steps the planned length is checked against the measured speed; where the steps that fit differ
# from it by more than REPLAN_SLACK, the run's length changes, and its learning-rate schedule with it: shorter at
# any time, longer (up to the first plan, which bounds the epochs Trainer loops over) until REPLAN_UNTIL of the way,
# so the rate never climbs back up near the end.
REPLAN_EVERY = 10
REPLAN_SLACK = 0.05
REPLAN_UNTIL = 0.8
GROW_AFTER = 30  # timed steps before a run may grow: the mean of fewer varies with their batch lengths


def set_schedule_length(lr_scheduler, steps: int, args) -> bool:
    """Make a transformers learning-rate schedule (linear, cosine, polynomial, ...: a LambdaLR over a partial that
    takes num_training_steps) end at `steps`, warm-up recomputed for it; False for a schedule of another kind."""
    schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
    lambdas = getattr(schedule, "lr_lambdas", [])
    if not lambdas or not all(isinstance(f, partial) and "num_training_steps" in f.keywords for f in lambdas):
        return False
    length = {"num_training_steps": steps}
    schedule.lr_lambdas = [partial(f.func, *f.args, **{**f.keywords, **length, **(
        {"num_warmup_steps": args.get_warmup_steps(steps)} if "num_warmup_steps" in f.keywords else {})})
        for f in lambdas]
    return True


class DeadlineCallback(TrainerCallback):
    """Stop training while the deadline still leaves `reserve()` seconds for what follows it.

    `step_s` and `eval_s` are the plan's forecasts, used until the run has measured its own. With `planned_steps`,
    Trainer's max_steps is the most the run may grow to, and training starts planned to end at `planned_steps`
    (its schedule with it). `reserve` is called with the measured (or forecast) seconds of one evaluation pass and
    returns the seconds the work after training needs. With `skip_final_eval`, the evaluation Trainer adds at the
    last step is dropped: the run evaluates the final model right after training anyway. `run_config_entries`
    returns what the run's run_config.json records of the budget.
    """

    def __init__(self, deadline: Deadline, reserve: Callable[[float], float], step_s: float, eval_s: float,
                 skip_final_eval: bool = False, planned_steps: int | None = None,
                 run_config_entries: Callable[[], dict[str, Any]] | None = None) -> None:
        self.deadline = deadline
        if run_config_entries is not None:  # read by single_run.write_report
            self.run_config_entries = run_config_entries
        self.planned_steps = planned_steps
        self.reserve = reserve
        self.steps: deque[float] = deque(maxlen=RECENT_STEPS)
        self.step_forecast, self.eval_forecast = step_s, eval_s
        self.evals: list[float] = []
        self.skip_final_eval = skip_final_eval
        self.last = 0.0
        self.stopped_at: int | None = None
        self.replanned: list[tuple[int, int]] = []  # (at step, new last step) each time the length changed
        self.loop_steps = 0  # the length Trainer planned its epochs for: a run never grows past it
        self.train_start = self.train_end = None
        self.timed_from: tuple[float, int] | None = None  # (time, step) at the end of the first step
        self.saving = 0.0
        self.state = None  # the trainer's state at the end of training: the steps it took

    def step_s(self) -> float:
        if not self.steps:
            return self.step_forecast
        recent = list(self.steps)
        return max(statistics.median(recent), max(recent[-SLOWEST_OF:]))

    def eval_s(self) -> float:
        return max(self.evals[-SLOWEST_OF:]) if self.evals else self.eval_forecast

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.train_start = self.last = self.deadline.clock()
        self.timed_from, self.loop_steps = None, state.max_steps
        # Trainer loops over the epochs of the longest run the budget might hold; the plan's length is set here.
        if self.planned_steps and self.planned_steps < state.max_steps and set_schedule_length(
                lr_scheduler, self.planned_steps, args):
            state.max_steps = self.planned_steps

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        now = self.deadline.clock()
        self.steps.append(now - self.last)
        self.last = now
        if self.timed_from is None:
            self.timed_from = (now, state.global_step)
        elif state.global_step % REPLAN_EVERY == 0 and state.global_step < state.max_steps:
            self.replan(args, state, lr_scheduler)
        if state.global_step >= state.max_steps:
            if self.skip_final_eval:
                control.should_evaluate = False
            return
        evaluating = control.should_evaluate
        needed = self.step_s() + (self.eval_s() if evaluating else 0.0) + self.reserve(self.eval_s())
        if any_process(self.deadline.remaining() < needed, args):
            control.should_training_stop = True
            # The evaluation due now runs only where the run needs it (the best model, averaging) and it fits.
            control.should_evaluate = (evaluating and not self.skip_final_eval and
                                       not any_process(self.deadline.remaining() < needed - self.step_s(), args))
            control.should_save = args.save_strategy != "no"  # checkpoints were asked for: keep the last one
            self.stopped_at = state.global_step
            logger.warning("time budget: stopping at step %d of %d, %.0f s before the deadline, leaving %.0f s for "
                           "evaluation, prediction and saving (one step takes %.2f s, one evaluation %.1f s)",
                           state.global_step, state.max_steps, self.deadline.remaining(), needed - self.step_s(),
                           self.step_s(), self.eval_s())

    def mean_step_s(self, state) -> float:
        """The average step since the first (which also sets up the data loader and warms up), evaluations and
        saves left out: what the steps still to come take together. The single next step is forecast from
        `step_s`, the slowest of the recent ones."""
        if self.timed_from is None or state.global_step <= self.timed_from[1]:
            return self.step_s()
        start, step = self.timed_from
        return (self.last - start - sum(self.evals) - self.saving) / (state.global_step - step)

    def steps_that_fit(self, args, state) -> int:
        """The last step the time left reaches, with the evaluations due on the way and the reserve after it."""
        left = self.deadline.remaining() - self.reserve(self.eval_s())
        step_s = self.mean_step_s(state)
        if args.eval_strategy == "steps" and state.eval_steps:
            step_s += self.eval_s() / state.eval_steps  # each step's share of the evaluations
        return state.global_step + max(int(left / step_s), 1)

    def replan(self, args, state, lr_scheduler) -> None:
        """End the run where the measured speed says the budget ends, so the schedule decays to its end there."""
        fit = int(-agreed_max(-self.steps_that_fit(args, state), args))  # the smallest over the processes
        fit = min(fit, self.loop_steps)
        shorter = fit < state.max_steps * (1 - REPLAN_SLACK)
        longer = (fit > state.max_steps * (1 + REPLAN_SLACK) and state.global_step < REPLAN_UNTIL * state.max_steps
                  and state.global_step - self.timed_from[1] >= GROW_AFTER)
        if not (shorter or longer):
            return
        if not set_schedule_length(lr_scheduler, fit, args):
            return  # a schedule whose length is not known here: the deadline alone stops it
        logger.info("time budget: steps take %.3f s (forecast %.3f s); the run now ends at step %d, not %d, "
                    "its learning-rate schedule with it", self.mean_step_s(state), self.step_forecast, fit,
                    state.max_steps)
        self.replanned.append((state.global_step, fit))
        state.max_steps = fit

    def on_evaluate(self, args, state, control, **kwargs):
        now = self.deadline.clock()
        if self.train_start is not None and self.train_end is None:  # evaluations inside the training loop
            self.evals.append(now - self.last)
            self.last = now  # the next step's time leaves the evaluation out

    def on_save(self, args, state, control, **kwargs):
        now = self.deadline.clock()
        self.saving += now - self.last
        self.last = now

    def on_train_end(self, args, state, control, **kwargs):
        self.train_end, self.state = self.deadline.clock(), state
