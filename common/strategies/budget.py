"""`--time_budget 10m`: the best model the minutes allow, planned from measurements and held by a deadline.

1. A timed probe trains a few steps of each strategy on this machine and this data: a full fine-tune, LoRA, and
   (for a classification head) a frozen backbone with the feature cache, whose cost is one forward pass over the
   data. It measures seconds per optimizer step, evaluation rows per second, the model's load and save time and
   peak memory; on a GPU that runs out of memory the batch halves (and gradient accumulation doubles) until it fits.
2. The rules pick the strategy: the first of full, LoRA, cache that fits at least MIN_EPOCHS epochs in the time
   left, otherwise the one that fits the most (full fine-tuning learns most per epoch: bench/RESULTS.md). Then
   the training length (`max_steps`, so that the learning-rate schedule ends when the budget does) and the
   evaluation cadence (at most EVAL_SHARE of the training time, at most one per epoch), after a reserve for the
   work after training: the final evaluation, the test predictions, averaging, the save and the report. A greedy
   soup of SOUP_K checkpoints joins the plan where its evaluations cost at most SOUP_SHARE of the training. Where
   a full fine-tune fits at least 2 x RUN_EPOCHS epochs, the time goes to several shorter runs instead (up to
   MAX_RUNS, each of at least RUN_EPOCHS epochs, seeds seed, seed+1, ...), whose final weights are averaged
   (common.toolkit.averaging.SeedSoup): on SST-2 three 3-epoch runs averaged beat one run of 17 epochs
   (bench/RESULTS.md).
3. The plan is logged as a table, written to run_config.json (`time_budget`) and shown in report.html, with what
   happened beside it: planned and actual steps, and the wall time of each phase.
4. Every option the user set (in --config or on the command line) is kept; the plan fills in the rest.
5. `DeadlineCallback` (common.training.deadline) re-plans the length from the measured speed (Trainer loops for
   up to GROWTH times the plan) and stops training at a step boundary when the time runs short: the plan is a
   forecast, the deadline the guarantee.

With `--hpo_trials auto`, SEARCH_SHARE of the time goes to optuna trials of TRIAL_FRACTION of the planned length,
pruned by successive halving on their evaluations (common.strategies.hpo), and the best settings train for the
rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from accelerate.utils import broadcast_object_list
from transformers import TrainerCallback, TrainingArguments

from common.core.errors import RecipeInputError
from common.strategies.hpo import run_hpo
from common.toolkit.averaging import SeedSoup, averaging_choice
from common.toolkit.feature_cache import find_head
from common.training.deadline import Deadline, DeadlineCallback, parse_duration
from common.training.reliability import RUN_RECORD_ATTR
from common.training.single_run import build_trainer, fresh_model
from common.training.task import Task

logger = logging.getLogger(__name__)

# What each strategy sets in the toolkit's options; a user who sets any of them has chosen the strategy.
STRATEGIES: dict[str, dict[str, Any]] = {
    "full": {"peft": None, "freeze": ["none"], "cache_features": False},
    "lora": {"peft": "lora", "freeze": ["none"], "cache_features": False},
    "cache": {"peft": None, "freeze": ["backbone"], "cache_features": True},
}
STRATEGY_OPTIONS = ("peft", "freeze", "cache_features", "unfreeze_schedule", "unfreeze_patterns")
# Learning rates for the strategies whose weights differ from a full fine-tune's, where the user set none:
# recipes/configs/sentiment/sst2_minilm_lora.yaml's for LoRA, bench/freezing_results.md's for a head on the cache.
STRATEGY_LR = {"lora": 1e-3, "cache": 2e-3}
GROWTH = 2  # a run whose steps are faster than the probe's may grow to this many times its planned steps
MIN_EPOCHS = 1.0  # a strategy that cannot see every training row once is passed over for one that can
MAX_EPOCHS = 20  # no plan trains longer (AutoGluon's default preset plans 20 epochs too)
CACHE_EPOCHS = 20  # a head on cached features converges in a few epochs of near-free steps
CACHE_STEP_S = 0.01  # one optimizer step of a head on cached features (seconds): no backbone runs
EVAL_SHARE = 0.1  # evaluations inside training take at most this share of its time
SOUP_K, SOUP_SHARE = 5, 0.15  # a greedy soup of 5 checkpoints where its evaluations cost at most 15% of training
# Seeded runs averaged where a full fine-tune fits at least 2 x RUN_EPOCHS epochs: 3 is the shipped SST-2 config's
# length, and three such runs averaged scored 0.8635 against 0.8532 for one run of 17 epochs (bench/RESULTS.md).
RUN_EPOCHS, MAX_RUNS = 3.0, 5
PROBE_STEPS = 3  # timed optimizer steps per strategy, after one untimed warm-up step
REPORT_S = 3.0  # writing all_results.json, the plots and report.html, and the interpreter's exit
MARGIN_SHARE, MARGIN_MIN_S = 0.02, 2.0  # kept free beyond every forecast
SEARCH_SHARE = 0.5  # --hpo_trials auto: the share of the training time spent on trials
TRIAL_FRACTION = 0.25  # each trial trains this fraction of the final run's steps
TRIAL_RUNGS = 4  # evaluations per trial, where successive halving may prune it


@dataclass
class BudgetArguments:
    time_budget: str | None = field(
        default=None,
        metadata={"help": "Wall-clock budget for the whole run, counted from the process start: 90s, 10m, 2h. A timed "
                          "probe plans the strategy (full, LoRA or cached features), the training steps and the "
                          "evaluations; a deadline stops training in time to evaluate, predict and save. Options "
                          "you set are kept."},
    )

    def check(self) -> None:
        if self.time_budget:
            parse_duration(self.time_budget)
        if self.time_budget and (getattr(self, "cv_folds", 0) or getattr(self, "ensemble_models", None)):
            raise RecipeInputError("--time_budget plans one training run: leave out --cv_folds and --ensemble_models, "
                                   "or run them without a budget.")
        if getattr(self, "hpo_trials", 0) == "auto" and not self.time_budget:
            raise RecipeInputError("--hpo_trials auto sizes the search to a --time_budget: give one, or a number "
                                   "of trials.")


@dataclass
class Measured:
    """One strategy's probe: its speed, or why it does not apply."""

    name: str
    step_s: float | None = None
    eval_rows_per_s: float | None = None
    load_s: float = 0.0
    save_s: float = 0.0
    setup_s: float = 0.0  # one-off cost before its first step (the feature cache's forward pass)
    peak_memory_gb: float | None = None
    batch_size: int = 0
    accumulation: int = 1
    note: str = ""
    epochs_fit: float = 0.0

    def applies(self) -> bool:
        return self.step_s is not None


@dataclass
class Plan:
    budget_s: float
    strategy: str
    why: str
    candidates: list[Measured]
    steps_per_epoch: int
    batch_size: int
    accumulation: int
    max_steps: int = 0
    epochs: float = 0.0
    evaluations: int = 0
    eval_steps: int | None = None
    learning_rate: float | None = None
    reserve_s: float = 0.0
    train_s: float = 0.0
    kept: list[str] = field(default_factory=list)
    averaging: list[str] | None = None  # --average_checkpoints, as set or as the plan chose it
    search: dict[str, Any] | None = None
    runs: int = 1  # seeded runs of max_steps each, their final weights averaged (SeedSoup)

    def soup(self) -> list[str] | None:
        """The averaging after training, as --average_checkpoints spells it: the seeded runs' soup (whose uniform
        average, and greedy pass where that fails, cost what a greedy soup of as many costs) or the plan's."""
        return ["greedy", str(self.runs)] if self.runs > 1 else self.averaging

    def table(self) -> str:
        lines = [f"{'strategy':<8} {'s/step':>7} {'batch':>6} {'eval rows/s':>11} {'memory GB':>9} {'epochs fit':>10}  note"]
        for c in self.candidates:
            speed = f"{c.step_s:.3f}" if c.step_s is not None else "-"
            rows = f"{c.eval_rows_per_s:.0f}" if c.eval_rows_per_s else "-"
            memory = f"{c.peak_memory_gb:.2f}" if c.peak_memory_gb is not None else "-"
            mark = "  <- picked" if c.name == self.strategy else ""
            lines.append(f"{c.name:<8} {speed:>7} {c.batch_size * c.accumulation:>6} {rows:>11} {memory:>9} "
                         f"{c.epochs_fit:>10.1f}  {c.note}{mark}")
        return "\n".join(lines)


def strategy_of(finetune_args) -> str:
    """The strategy the toolkit options amount to: one of STRATEGIES, or 'as set' (another freezing)."""
    settings = {name: getattr(finetune_args, name) for name in STRATEGIES["full"]}
    settings["peft"] = settings["peft"].lower() if settings["peft"] else None
    return next((name for name, wanted in STRATEGIES.items() if settings == wanted), "as set")


@contextlib.contextmanager
def toolkit_settings(finetune_args, settings: dict[str, Any]):
    """The toolkit options set to `settings` for the block (the task's model_init reads them), then restored."""
    saved = {name: getattr(finetune_args, name) for name in settings}
    for name, value in settings.items():
        setattr(finetune_args, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(finetune_args, name, value)


class StepTimes(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return psutil.Process().memory_info().rss / 1e9  # on the CPU: the process's resident memory after the steps


def scratch_args(args: TrainingArguments, scratch: str, **changes: Any) -> TrainingArguments:
    """`args` for a training run the plan makes on the side (a probe, a seeded run before the last): it evaluates,
    saves, reports and resumes nothing, and writes only into `scratch`."""
    return dataclasses.replace(args, output_dir=scratch, eval_strategy="no", save_strategy="no", report_to=[],
                               resume_from_checkpoint=None, load_best_model_at_end=False, **changes)


def probe(task: Task, args: TrainingArguments, finetune_args, name: str, settings: dict[str, Any]) -> Measured:
    """Train PROBE_STEPS timed steps of one strategy (halving the batch on a GPU out-of-memory error), then time
    an evaluation pass over a slice and a save."""
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    with toolkit_settings(finetune_args, settings), tempfile.TemporaryDirectory() as scratch:
        while True:
            measured = Measured(name, batch_size=batch, accumulation=accumulation)
            try:
                return _probe_once(task, args, finetune_args, measured, scratch)
            except torch.cuda.OutOfMemoryError:
                gc.collect()
                torch.cuda.empty_cache()
                if batch == 1:
                    return Measured(name, note="out of memory at batch 1")
                batch, accumulation = batch // 2, accumulation * 2
                logger.info("time budget probe: %s ran out of memory; batch %d x %d accumulation", name, batch,
                            accumulation)
            except RecipeInputError as err:  # the strategy does not fit this model or data
                return Measured(name, note=f"not applicable: {err}")


def _probe_once(task: Task, args: TrainingArguments, finetune_args, measured: Measured, scratch: str) -> Measured:
    device = args.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    model = task.model_init()
    measured.load_s = time.perf_counter() - start
    probe_args = scratch_args(args, scratch, max_steps=PROBE_STEPS + 1, logging_strategy="no",
                              per_device_train_batch_size=measured.batch_size,
                              gradient_accumulation_steps=measured.accumulation, warmup_steps=0)
    timer = StepTimes()
    trainer = build_trainer(dataclasses.replace(task, callbacks=[]), probe_args, finetune_args, model=model,
                            model_init=None, callbacks=[timer])
    trainer.train()
    steps = [b - a for a, b in zip(timer.times, timer.times[1:])]
    measured.step_s = sorted(steps)[len(steps) // 2] if steps else None
    measured.peak_memory_gb = peak_memory_gb(device)
    rows = task.eval_dataset if task.eval_dataset is not None else task.train_dataset
    sample = rows.select(range(min(len(rows), 2 * args.per_device_eval_batch_size)))
    start = time.perf_counter()
    trainer.predict(sample, metric_key_prefix="probe")
    measured.eval_rows_per_s = len(sample) / (time.perf_counter() - start)
    start = time.perf_counter()
    trainer.save_model(str(Path(scratch) / "model"))
    measured.save_s = time.perf_counter() - start
    del trainer, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return measured


def probe_cache(task: Task, full: Measured, finetune_args, eval_batch: int) -> Measured:
    """The cache's cost, from the full model's measured forward speed: one pass over every split, then head
    steps that cost CACHE_STEP_S."""
    measured = Measured("cache", batch_size=full.batch_size, accumulation=full.accumulation, load_s=full.load_s,
                        save_s=full.save_s)
    if not full.applies():
        measured.note = "not applicable: the full model's probe failed"
        return measured
    if task.augmentation is not None:
        measured.note = "not applicable: augmented inputs change every epoch, cached features cannot"
        return measured
    with toolkit_settings(finetune_args, STRATEGIES["cache"]):
        try:
            find_head(task.model_init())
        except RecipeInputError as err:
            measured.note = f"not applicable: {err}"
            return measured
    rows = sum(len(d) for d in (task.train_dataset, task.eval_dataset, task.test_dataset) if d is not None)
    measured.setup_s = rows / full.eval_rows_per_s
    # Evaluating the head on cached features is one of its steps per eval batch.
    measured.step_s, measured.eval_rows_per_s = CACHE_STEP_S, eval_batch / CACHE_STEP_S
    measured.peak_memory_gb = full.peak_memory_gb
    measured.note = f"one forward pass over {rows} rows first ({measured.setup_s:.0f} s)"
    return measured


class TimeBudget:
    """Plans a run to its budget, applies the plan to the options, and records what happened."""

    def __init__(self, finetune_args, args: TrainingArguments, deadline: Deadline | None = None) -> None:
        self.deadline = deadline or Deadline(parse_duration(finetune_args.time_budget))
        record = getattr(args, RUN_RECORD_ATTR, None)
        self.given: frozenset[str] = record.given if record is not None else frozenset()
        self.phases: dict[str, float] = {}
        self.plan: Plan | None = None
        self.callback: DeadlineCallback | None = None
        self.written: dict[str, Any] | None = None  # the record run_config.json holds
        self.seed_soup: SeedSoup | None = None
        self.seeded_runs: list[dict[str, Any]] = []  # the runs trained before the last one

    # -- the plan ------------------------------------------------------------------------------------------------

    def make_plan(self, task: Task, args: TrainingArguments, finetune_args) -> Task:
        """Probe, plan, apply the plan to `args` and `finetune_args` (options the user set stay), and return the task
        with the deadline callback."""
        if task.train_dataset is None or not args.do_train:
            raise RecipeInputError("--time_budget plans training: it needs a train split and do_train.")
        self.phases["before_plan_s"] = self.deadline.elapsed()
        chosen = [name for name in STRATEGY_OPTIONS if name in self.given]
        if chosen:  # the user picked the strategy: measure that one alone
            name = strategy_of(finetune_args)
            measured = probe(task, args, finetune_args, name, {})
            # The cache is built after the plan: its steps are the head's, priced from the backbone's forward speed.
            candidates = [probe_cache(task, measured, finetune_args, args.per_device_eval_batch_size)
                          if name == "cache" else measured]
        else:
            full = probe(task, args, finetune_args, "full", STRATEGIES["full"])
            candidates = [full, probe(task, args, finetune_args, "lora", STRATEGIES["lora"]),
                          probe_cache(task, full, finetune_args, args.per_device_eval_batch_size)]
        self.phases["probe_s"] = self.deadline.elapsed() - self.phases["before_plan_s"]
        self.plan = plan = agreed(self.choose(task, args, finetune_args, candidates, chosen), args)
        self.apply(plan, args, finetune_args)
        logger.info("time budget %.0f s: plan after %.0f s (probe %.0f s)\n%s\n%s", plan.budget_s,
                    self.deadline.elapsed(), self.phases["probe_s"], plan.table(), self.describe(plan))
        picked = next(c for c in plan.candidates if c.applies() and c.name == plan.strategy)
        self.callback = DeadlineCallback(
            self.deadline, self.reserve_fn(task, plan.soup(), picked), picked.step_s,
            self.eval_seconds(task, picked),
            skip_final_eval=not (args.load_best_model_at_end or finetune_args.average_checkpoints),
            planned_steps=None if self.given & {"max_steps", "num_train_epochs"} else plan.max_steps,
            run_config_entries=self.run_config_entries)
        if plan.runs > 1:
            self.seed_soup = SeedSoup(plan.runs, task.main_metric, task.greater_is_better)
        added = [c for c in (self.callback, self.seed_soup) if c is not None]
        return dataclasses.replace(task, callbacks=[*task.callbacks, *added])

    def choose(self, task: Task, args: TrainingArguments, finetune_args, candidates: list[Measured],
               chosen: list[str]) -> Plan:
        def steps_per_epoch(c: Measured) -> int:
            return math.ceil(len(task.train_dataset) / (c.batch_size * c.accumulation * max(1, args.world_size)))

        for c in candidates:
            if c.applies():
                c.epochs_fit = (self.train_seconds(task, finetune_args.average_checkpoints, c)
                                / (c.step_s * steps_per_epoch(c)))
        usable = [c for c in candidates if c.applies()]
        if not usable:
            raise RecipeInputError("--time_budget: no strategy could be measured: "
                                   + "; ".join(f"{c.name}: {c.note}" for c in candidates))
        if chosen:
            pick, why = usable[0], f"the strategy set by --{' --'.join(chosen)}"
        else:
            fits = [c for c in usable if c.epochs_fit >= MIN_EPOCHS]
            if fits:
                pick = fits[0]
                why = (f"fits {pick.epochs_fit:.1f} epochs (>= {MIN_EPOCHS:g})" if pick is usable[0] else
                       f"{', '.join(c.name for c in usable[:usable.index(pick)])} fit fewer than {MIN_EPOCHS:g} "
                       f"epoch; {pick.name} fits {pick.epochs_fit:.1f}")
            else:
                pick = max(usable, key=lambda c: c.epochs_fit)
                why = f"no strategy fits {MIN_EPOCHS:g} epoch; {pick.name} fits the most ({pick.epochs_fit:.2f})"
        plan = Plan(self.deadline.budget_s, pick.name, why, candidates, steps_per_epoch(pick), pick.batch_size,
                    pick.accumulation,
                    kept=sorted(self.given & PLANNED_OPTIONS), averaging=finetune_args.average_checkpoints)
        if plan.averaging is None and "average_checkpoints" not in self.given and not args.load_best_model_at_end:
            plan.averaging = self.soup_if_affordable(task, pick)
        self.fit_length(plan, task, pick, self.train_seconds(task, plan.averaging, pick))
        plan = self.plan_seeded_runs(plan, task, args, finetune_args, pick)
        if "learning_rate" not in self.given and pick.name in STRATEGY_LR:
            plan.learning_rate = STRATEGY_LR[pick.name]
        return plan

    def soup_if_affordable(self, task: Task, pick: Measured) -> list[str] | None:
        """A greedy soup of SOUP_K checkpoints (bench/RESULTS.md: +0.7 points of mean test accuracy over 3 seeds on
        SST-2 at 180 s) where its evaluations, SOUP_K inside training and up to SOUP_K + 1 after, cost at most
        SOUP_SHARE of the training."""
        eval_s = self.eval_seconds(task, pick)
        if eval_s <= 0:
            return None
        soup = ["greedy", str(SOUP_K)]
        return soup if (2 * SOUP_K + 1) * eval_s <= SOUP_SHARE * self.train_seconds(task, soup, pick) else None

    def plan_seeded_runs(self, plan: Plan, task: Task, args: TrainingArguments, finetune_args,
                         pick: Measured) -> Plan:
        """The plan of several seeded runs of at least RUN_EPOCHS epochs, averaged, in place of `plan`'s one long
        run, where a full fine-tune fits 2 x RUN_EPOCHS epochs and the user set neither the length nor the averaging. A run's
        checkpoints then go unevaluated: the soup's candidates are the runs' final weights. Not for LoRA: adapters
        from different random starts are different factorizations, and their averages are not an average update."""
        eligible = (pick.name == "full" and self.eval_seconds(task, pick) > 0 and not args.load_best_model_at_end
                    and not args.resume_from_checkpoint  # the runs before the last are not in its checkpoint
                    and not self.given & {"max_steps", "num_train_epochs", "average_checkpoints"}
                    and not getattr(finetune_args, "hpo_trials", None))
        return (self.runs_that_fit(plan, task, pick, MAX_RUNS) if eligible else None) or plan

    def runs_that_fit(self, plan: Plan, task: Task, speed: Measured, most: int, done: int = 0) -> Plan | None:
        """The most seeded runs, 2 to `most`, that each train at least RUN_EPOCHS epochs in the time left at
        `speed`, after `done` runs trained (the soup's evaluations of them all reserved): the plan of each, its
        `runs` the runs left; None where two do not fit."""
        for runs in range(most, 1, -1):
            trial = dataclasses.replace(plan, runs=runs, averaging=None)
            soup = ["greedy", str(done + runs)]
            self.fit_length(trial, task, speed, self.train_seconds(task, soup, speed))
            if trial.epochs >= RUN_EPOCHS:
                return trial
        return None

    def fit_length(self, plan: Plan, task: Task, pick: Measured, train_s: float, runs: int | None = None) -> None:
        """max_steps and the evaluation cadence that fit `train_s` seconds of training, shared by `runs` seeded
        runs (plan.runs unless given), each after the first loading its model and scoring its weights."""
        eval_s = self.eval_seconds(task, pick)
        run_s = self.run_seconds(task, pick, train_s, plan.runs if runs is None else runs)
        max_epochs = CACHE_EPOCHS if pick.name == "cache" else MAX_EPOCHS
        steps = max(1, min(int(run_s / pick.step_s), max_epochs * plan.steps_per_epoch))
        epochs = steps / plan.steps_per_epoch
        averaging = averaging_choice(plan.averaging)[1] if plan.averaging else 0
        evaluations = 0
        if task.eval_dataset is not None and eval_s > 0 and plan.runs == 1:
            evaluations = min(int(EVAL_SHARE * steps * pick.step_s / eval_s), math.ceil(epochs))
            if averaging and evaluations < averaging:  # averaging needs its K evaluated checkpoints
                evaluations = min(averaging, steps)
            steps = max(1, min(steps, int((run_s - evaluations * eval_s) / pick.step_s)))  # their time is the steps'
        plan.max_steps, plan.epochs, plan.evaluations, plan.train_s = steps, steps / plan.steps_per_epoch, evaluations, train_s
        # Evaluations at every eval_steps, the last one before the end (the run evaluates the final model anyway).
        plan.eval_steps = max(1, steps // (evaluations + 1)) if evaluations else None
        plan.reserve_s = self.reserve_fn(task, plan.soup(), pick)(eval_s)

    def run_seconds(self, task: Task, measured: Measured, train_s: float, runs: int) -> float:
        """Each of `runs` seeded runs' share of `train_s` seconds, once each run after the first has loaded its
        model and scored its weights."""
        return (train_s - (runs - 1) * (measured.load_s + self.eval_seconds(task, measured))) / runs

    def train_seconds(self, task: Task, averaging: list[str] | None, measured: Measured) -> float:
        """The seconds left for training steps once the model is loaded, the cache built, and the work after
        training reserved."""
        left = self.deadline.remaining() - measured.load_s - measured.setup_s
        return left - self.reserve_fn(task, averaging, measured)(self.eval_seconds(task, measured))

    @staticmethod
    def eval_seconds(task: Task, measured: Measured) -> float:
        if task.eval_dataset is None or not measured.eval_rows_per_s:
            return 0.0
        return len(task.eval_dataset) / measured.eval_rows_per_s

    def reserve_fn(self, task: Task, averaging: list[str] | None, measured: Measured):
        """eval seconds -> seconds the work after training needs: the final evaluation, the test predictions,
        a greedy soup's evaluations, the save, the report, and a margin."""
        rows_eval = len(task.eval_dataset) if task.eval_dataset is not None else 0
        rows_test = len(task.test_dataset) if task.test_dataset is not None else 0
        passes = 1.0 + (rows_test / rows_eval if rows_eval else 0.0)
        if averaging:
            method, k = averaging_choice(averaging)
            passes += k + 1 if method == "greedy" else 0
        test_only = rows_test / measured.eval_rows_per_s if not rows_eval and measured.eval_rows_per_s else 0.0
        margin = max(MARGIN_MIN_S, MARGIN_SHARE * self.deadline.budget_s)
        fixed = measured.save_s + REPORT_S + margin + test_only
        return lambda eval_s: passes * eval_s + fixed

    def apply(self, plan: Plan, args: TrainingArguments, finetune_args) -> None:
        """Set what the plan chose, leaving every option the user set."""
        if plan.strategy in STRATEGIES:
            for name, value in STRATEGIES[plan.strategy].items():
                setattr(finetune_args, name, value)
        self.set_length(plan, args)
        finetune_args.average_checkpoints = plan.averaging
        if "per_device_train_batch_size" not in self.given:
            args.per_device_train_batch_size = plan.batch_size
            args.gradient_accumulation_steps = plan.accumulation
        if plan.learning_rate is not None:
            args.learning_rate = plan.learning_rate
        if not self.given & {"eval_strategy", "eval_steps"} and not args.load_best_model_at_end:
            args.eval_strategy = "steps" if plan.eval_steps else "no"
            args.eval_steps = plan.eval_steps
        if "eval_before_training" not in self.given:
            finetune_args.eval_before_training = False  # the untrained model's scores cost an evaluation pass
        if plan.strategy == "cache" and args.train_sampling_strategy == "group_by_length":
            args.train_sampling_strategy = "random"

    def set_length(self, plan: Plan, args: TrainingArguments) -> None:
        """Trainer loops for up to GROWTH times the planned steps (within the epoch cap), so that a run whose steps
        turn out faster than the probe's can grow; the deadline callback starts it planned to plan.max_steps."""
        if self.given & {"max_steps", "num_train_epochs"}:
            return
        cap = (CACHE_EPOCHS if plan.strategy == "cache" else MAX_EPOCHS) * plan.steps_per_epoch
        args.max_steps = max(plan.max_steps, min(cap, GROWTH * plan.max_steps))
        if self.callback is not None:
            self.callback.planned_steps = plan.max_steps

    @staticmethod
    def describe(plan: Plan) -> str:
        evals = f"{plan.evaluations} evaluations (every {plan.eval_steps} steps)" if plan.evaluations else "no evaluation"
        lr = f", learning rate {plan.learning_rate:g}" if plan.learning_rate is not None else ""
        lr += f", --average_checkpoints {' '.join(plan.averaging)}" if plan.averaging else ""
        kept = f"; kept as set: {', '.join(plan.kept)}" if plan.kept else ""
        runs = f"{plan.runs} seeded runs averaged, each " if plan.runs > 1 else ""
        return (f"plan: {plan.strategy} ({plan.why}); {runs}{plan.max_steps} steps = {plan.epochs:.2f} epochs at batch "
                f"{plan.batch_size} x {plan.accumulation}{lr}, {evals} during training; {plan.train_s:.0f} s of "
                f"training, {plan.reserve_s:.0f} s reserved after it{kept}")

    # -- seeded runs ------------------------------------------------------------------------------------------------

    def train_seeded_runs(self, task: Task, args: TrainingArguments, finetune_args) -> None:
        """The plan's seeded runs but the last (seeds seed+1, seed+2, ...), each scored and kept by the soup; the
        last run, with the run's own seed, is the run itself, planned again here for the time left. Each run's own
        deadline leaves the time of the runs after it, and its measured speed plans them: on a machine slower than
        the probe's forecast fewer runs follow, each still of at least RUN_EPOCHS epochs."""
        plan = self.plan
        if plan.runs < 2:
            return
        speed = next(c for c in plan.candidates if c.name == plan.strategy)
        eval_s = self.eval_seconds(task, speed)
        others = [c for c in task.callbacks if c is not self.callback and c is not self.seed_soup]
        began = self.deadline.elapsed()
        while fitted := agreed(self.runs_that_fit(plan, task, speed, plan.runs - len(self.seeded_runs),
                                                  done=len(self.seeded_runs)), args):
            started = self.deadline.elapsed()
            run_s = self.run_seconds(task, speed, fitted.train_s, fitted.runs)
            run_end = Deadline(started + speed.load_s + run_s + eval_s, self.deadline.start, self.deadline.clock)
            stop = DeadlineCallback(run_end, lambda scoring_s: scoring_s, speed.step_s, eval_s,
                                    planned_steps=fitted.max_steps)  # its reserve: the pass that scores it
            seed = args.seed + len(self.seeded_runs) + 1
            with tempfile.TemporaryDirectory() as scratch:
                run_args = scratch_args(args, scratch, seed=seed, max_steps=fitted.max_steps)
                trainer = build_trainer(dataclasses.replace(task, callbacks=[*others, stop]), run_args, finetune_args,
                                        model=fresh_model(task, run_args), model_init=None)
                trainer.train()
                score = self.seed_soup.add_run(seed, trainer)
            self.seeded_runs.append({"seed": seed, "steps": trainer.state.global_step, "score": score,
                                     "stopped_by_deadline": stop.stopped_at is not None,
                                     "step_s": round(stop.mean_step_s(trainer.state), 4),
                                     "seconds": round(self.deadline.elapsed() - started, 1)})
            speed = dataclasses.replace(speed, step_s=stop.mean_step_s(trainer.state))
            del trainer
            gc.collect()
        self.phases["seeded_runs_s"] = self.deadline.elapsed() - began
        self.fit_length(plan, task, speed, self.train_seconds(task, plan.soup(), speed), runs=1)
        self.plan = plan = agreed(plan, args)
        self.set_length(plan, args)
        if self.callback is not None:
            self.callback.step_forecast = speed.step_s
        logger.info("seeded runs %s; the last run (seed %d) plans %d steps", self.seeded_runs, args.seed,
                    plan.max_steps)

    # -- search inside the budget ----------------------------------------------------------------------------------

    def search(self, task: Task, args: TrainingArguments, finetune_args) -> dict[str, Any]:
        """--hpo_trials auto: trials for SEARCH_SHARE of the training time, pruned by successive halving on
        TRIAL_RUNGS evaluations each; the final run's length is then planned again for the time left."""
        import optuna

        plan = self.plan
        pick = next(c for c in plan.candidates if c.name == plan.strategy)
        search_s = SEARCH_SHARE * plan.train_s
        trial_steps = max(TRIAL_RUNGS, int(TRIAL_FRACTION * plan.max_steps))
        trial_args = dataclasses.replace(args, max_steps=trial_steps, eval_strategy="steps",
                                         eval_steps=max(1, trial_steps // TRIAL_RUNGS))
        search_end = Deadline(self.deadline.elapsed() + search_s, self.deadline.start, self.deadline.clock)
        stop = DeadlineCallback(search_end, lambda eval_s: 0.0, pick.step_s, self.eval_seconds(task, pick))
        space = None if finetune_args.hpo_space else budget_space(args.learning_rate)
        started = self.deadline.elapsed()
        trial_callbacks = [*(c for c in task.callbacks if c is not self.callback), stop]
        trials = finetune_args.hpo_trials if finetune_args.hpo_trials != "auto" else None
        best = run_hpo(dataclasses.replace(task, callbacks=trial_callbacks), trial_args, finetune_args,
                       n_trials=trials, timeout=search_s, space=space,
                       pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=trial_args.eval_steps))
        self.phases["search_s"] = self.deadline.elapsed() - started
        self.fit_length(plan, task, pick, self.train_seconds(task, plan.averaging, pick))
        self.plan = plan = agreed(plan, args)
        self.set_length(plan, args)
        if plan.eval_steps and args.eval_strategy == "steps":
            args.eval_steps = plan.eval_steps
        plan.search = {"seconds": round(self.phases["search_s"], 1), "trial_steps": trial_steps, "best": best}
        logger.info("search inside the budget: %.0f s, best %s; final run %d steps", self.phases["search_s"], best,
                    plan.max_steps)
        return best

    # -- the record ----------------------------------------------------------------------------------------------

    def record(self, state) -> dict[str, Any]:
        plan, callback = self.plan, self.callback
        phases = dict(self.phases)
        if callback is not None and callback.train_start is not None:
            start = self.deadline.start
            phases["before_training_s"] = callback.train_start - start
            phases["training_s"] = (callback.train_end or callback.train_start) - callback.train_start
            phases["after_training_s"] = self.deadline.elapsed() - ((callback.train_end or callback.train_start) - start)
        phases["total_s"] = self.deadline.elapsed()
        return {
            "budget_s": plan.budget_s, "strategy": plan.strategy, "why": plan.why,
            "candidates": [dataclasses.asdict(c) for c in plan.candidates],
            "planned": {"max_steps": plan.max_steps, "epochs": round(plan.epochs, 3), "batch_size": plan.batch_size,
                        "gradient_accumulation_steps": plan.accumulation, "evaluations": plan.evaluations,
                        "eval_steps": plan.eval_steps, "learning_rate": plan.learning_rate,
                        "training_s": round(plan.train_s, 1), "reserve_s": round(plan.reserve_s, 1),
                        "average_checkpoints": " ".join(plan.averaging) if plan.averaging else None,
                        "seeded_runs": plan.runs},
            "actual": {"steps": state.global_step if state is not None else 0,
                       "stopped_by_deadline": callback.stopped_at is not None if callback else False,
                       "replanned": [{"at_step": at, "to_steps": to} for at, to in callback.replanned] if callback else [],
                       "evaluations_in_training": len(callback.evals) if callback else 0,
                       "seeded_runs_before_the_last": self.seeded_runs},
            "phases": {k: round(v, 1) for k, v in phases.items()},
            "kept_as_set": plan.kept, "search": plan.search,
        }

    def run_config_entries(self) -> dict[str, Any]:
        """run_config.json's `time_budget`, taken when the run writes its summary (and report.html shows it)."""
        self.written = self.record(self.callback.state)
        return {"time_budget": self.written}

    def finish(self) -> dict[str, Any]:
        """The record as run_config.json holds it (taken now where the run wrote none), logged."""
        record = self.written or self.record(self.callback.state)
        logger.info("time budget %.0f s: %d of %d planned steps; phases %s", record["budget_s"],
                    record["actual"]["steps"], record["planned"]["max_steps"], record["phases"])
        return record


def agreed(plan: Plan | None, args: TrainingArguments) -> Plan | None:
    """The main process's plan on every process of a DDP run: each process measures and plans from its own clock,
    and a run whose processes planned different lengths would leave one waiting on a collective at the end."""
    return broadcast_object_list([plan])[0] if args.world_size > 1 else plan


# Options the plan sets when the user did not: listed in the record as kept when the user did.
PLANNED_OPTIONS = frozenset({"max_steps", "num_train_epochs", "per_device_train_batch_size", "learning_rate",
                             "eval_strategy", "eval_steps", "eval_before_training", *STRATEGY_OPTIONS})


def budget_space(learning_rate: float) -> dict[str, dict[str, Any]]:
    """The space searched inside a budget: the plan fixes the length and the batch, so the learning rate (a
    factor of 5 either side of the configured one), warm-up and weight decay."""
    return {"learning_rate": {"type": "loguniform", "low": learning_rate / 5, "high": learning_rate * 5},
            "warmup_steps": {"type": "uniform", "low": 0.0, "high": 0.2},
            "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}}
