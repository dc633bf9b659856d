"""--time_budget: the plan's rules on measured speeds (a fake clock, no timing), and a budgeted run that records its
plan beside what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn
from transformers import TrainerControl, TrainerState, TrainingArguments

from common.strategies import budget
from common.strategies.budget import MAX_EPOCHS, STRATEGY_LR, Measured, TimeBudget
from common.toolkit.averaging import SeedSoup
from common.training import deadline as deadline_module
from common.training.deadline import Deadline
from common.training.reliability import RUN_RECORD_ATTR, RunRecord
from common.training.task import Task
from tests.conftest import ROOT, fast_args, subprocess_env
from tests.recipes.invariants.cases import read_table


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def task(train_rows: int = 1000, eval_rows: int = 200, test_rows: int = 100) -> Task:
    return Task("demo", model_init=None, train_dataset=list(range(train_rows)), eval_dataset=list(range(eval_rows)),
                test_dataset=list(range(test_rows)) if test_rows else None, data_collator=None, compute_metrics=None,
                processing_class=None, main_metric="accuracy", pipeline_task="text-classification")


def planner(tmp_path, budget_s: float, given: set[str] = frozenset(), elapsed: float = 0.0):
    clock = FakeClock()
    clock.now = elapsed
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=10, learning_rate=5e-5, report_to=[])
    setattr(args, RUN_RECORD_ATTR, RunRecord({}, given=frozenset(given)))
    finetune_args = SimpleNamespace(average_checkpoints=None, peft=None, freeze=["none"], cache_features=False,
                                    eval_before_training=True)
    return TimeBudget(finetune_args, args, Deadline(budget_s, start=0.0, clock=clock)), args, finetune_args


def measured(name: str, step_s: float | None, rows_per_s: float = 100.0, setup_s: float = 0.0) -> Measured:
    return Measured(name, step_s=step_s, eval_rows_per_s=rows_per_s, batch_size=10, setup_s=setup_s,
                    note="" if step_s else "not applicable: no head")


def test_a_full_fine_tune_that_fits_an_epoch_is_picked_and_its_schedule_ends_with_the_budget(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=300.0)
    candidates = [measured("full", 0.5), measured("lora", 0.3), measured("cache", 0.01, setup_s=20)]
    plan = plan_budget.choose(task(), args, finetune_args, candidates, chosen=[])
    assert plan.strategy == "full" and plan.learning_rate is None  # the configured rate stays
    # A greedy soup's 11 evaluations of 2 s cost less than 15% of the training: it is on. Reserve: 2 s validation,
    # 1 s test, six 2 s soups, 3 s report, 6 s margin (2% of 300) = 24 s; 276 s / 0.5 s, less the evaluations.
    assert plan.averaging == ["greedy", "5"] and plan.evaluations >= 5
    assert plan.runs == 1  # 5.5 epochs: two runs of 3 do not fit
    assert plan.reserve_s == pytest.approx(24.0)
    assert plan.max_steps == int((276.0 - plan.evaluations * 2.0) / 0.5) and plan.steps_per_epoch == 100
    assert plan.eval_steps == plan.max_steps // (plan.evaluations + 1)
    plan_budget.apply(plan, args, finetune_args)
    assert finetune_args.average_checkpoints == ["greedy", "5"]
    # Trainer loops long enough for the run to grow to twice its plan (within 20 epochs); it starts planned.
    assert args.max_steps == 2 * plan.max_steps and args.eval_strategy == "steps" and args.eval_steps == plan.eval_steps
    assert finetune_args.eval_before_training is False


def test_lora_is_picked_when_a_full_fine_tune_cannot_see_every_row_once(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=100.0)
    candidates = [measured("full", 2.0), measured("lora", 0.5), measured("cache", 0.01, setup_s=20)]
    plan = plan_budget.choose(task(), args, finetune_args, candidates, chosen=[])
    assert candidates[0].epochs_fit < 1 <= candidates[1].epochs_fit
    assert plan.strategy == "lora" and plan.learning_rate == STRATEGY_LR["lora"]
    assert "full fit fewer than 1 epoch" in plan.why
    plan_budget.apply(plan, args, finetune_args)
    assert finetune_args.peft == "lora" and args.learning_rate == STRATEGY_LR["lora"]


def test_the_cache_is_picked_when_no_strategy_fits_an_epoch(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=60.0, elapsed=10.0)
    candidates = [measured("full", 3.0), measured("lora", 2.0), measured("cache", 0.01, setup_s=10)]
    plan = plan_budget.choose(task(), args, finetune_args, candidates, chosen=[])
    assert plan.strategy == "cache" and plan.why.startswith("full, lora fit fewer than 1 epoch; cache fits")
    plan_budget.apply(plan, args, finetune_args)
    assert finetune_args.cache_features is True and finetune_args.freeze == ["backbone"]


def test_a_strategy_that_does_not_apply_is_passed_over(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=100.0)
    candidates = [measured("full", 2.0), measured("lora", 1.5), measured("cache", None)]
    plan = plan_budget.choose(task(), args, finetune_args, candidates, chosen=[])
    assert plan.strategy == "lora" and "lora fits the most" in plan.why  # of those that apply, neither fits an epoch
    assert "not applicable" in plan.table().splitlines()[3]


def test_options_the_user_set_are_kept_and_the_plan_fills_the_rest(tmp_path):
    given = {"learning_rate", "num_train_epochs", "eval_strategy", "eval_before_training"}
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=100.0, given=given)
    args.num_train_epochs, args.eval_strategy = 2, "epoch"
    candidates = [measured("full", 2.0), measured("lora", 0.5), measured("cache", 0.01)]
    plan = plan_budget.choose(task(), args, finetune_args, candidates, chosen=[])
    plan_budget.apply(plan, args, finetune_args)
    assert plan.strategy == "lora" and plan.learning_rate is None and args.learning_rate == 5e-5
    assert args.max_steps == -1 and args.num_train_epochs == 2 and args.eval_strategy == "epoch"
    assert finetune_args.eval_before_training is True
    assert plan.kept == sorted(given)


def test_a_strategy_the_user_chose_is_the_only_one_measured(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=100.0, given={"peft"})
    finetune_args.peft = "lora"
    assert budget.strategy_of(finetune_args) == "lora"
    plan = plan_budget.choose(task(), args, finetune_args, [measured("lora", 0.5)], chosen=["peft"])
    assert plan.strategy == "lora" and plan.why == "the strategy set by --peft"
    assert plan.learning_rate == STRATEGY_LR["lora"]  # the rate was not set: LoRA's
    finetune_args.freeze = ["bottom:2"]
    assert budget.strategy_of(finetune_args) == "as set"


def test_no_plan_trains_past_the_epoch_cap(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=7200.0)
    plan = plan_budget.choose(task(), args, finetune_args, [measured("full", 0.1)], chosen=[])
    assert plan.max_steps == MAX_EPOCHS * plan.steps_per_epoch


def test_a_budget_that_fits_several_short_runs_trains_seeded_runs_and_averages_them(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=300.0)
    plan = plan_budget.choose(task(), args, finetune_args, [measured("full", 0.25)], chosen=[])
    # 5 or 4 runs would train fewer than 3 epochs each. 3 runs: reserve 2 s validation, 1 s test, a soup's four 2 s
    # passes, 3 s report, 6 s margin = 20 s; the two runs before the last each score once (2 s); (280 - 4) / 3 s
    # per run = 368 steps of 0.25 s, with no evaluation inside: the candidates are the runs' final weights.
    assert plan.runs == 3 and plan.soup() == ["greedy", "3"] and plan.averaging is None
    assert plan.reserve_s == pytest.approx(20.0)
    assert plan.max_steps == 368 and plan.epochs >= budget.RUN_EPOCHS
    assert plan.evaluations == 0 and plan.eval_steps is None
    plan_budget.apply(plan, args, finetune_args)
    assert args.eval_strategy == "no" and finetune_args.average_checkpoints is None


class SimulatedTrainer:
    """Steps of `step_s` seconds on the planner's fake clock, run through the callbacks as Trainer runs them;
    evaluations of `eval_s` seconds."""

    def __init__(self, clock, step_s: float, eval_s: float, task: Task, args: TrainingArguments, model) -> None:
        self.clock, self.step_s, self.eval_s, self.args, self.model = clock, step_s, eval_s, args, model
        self.callbacks = task.callbacks
        self.state = TrainerState(max_steps=args.max_steps)

    def train(self) -> None:
        control = TrainerControl()
        for callback in self.callbacks:
            callback.on_train_begin(self.args, self.state, control, lr_scheduler=None)
        while self.state.global_step < self.state.max_steps and not control.should_training_stop:
            self.clock.now += self.step_s
            self.state.global_step += 1
            for callback in self.callbacks:
                callback.on_step_end(self.args, self.state, control, lr_scheduler=None)
        for callback in self.callbacks:
            callback.on_train_end(self.args, self.state, control)

    def evaluate(self, metric_key_prefix: str) -> dict[str, float]:
        self.clock.now += self.eval_s
        return {f"{metric_key_prefix}_accuracy": 0.8}


@pytest.mark.parametrize("step_s, trained", [(0.25, [43, 44]), (0.5, [43])])
def test_each_seeded_run_keeps_its_share_and_its_measured_speed_plans_the_runs_after_it(tmp_path, monkeypatch, step_s,
                                                                                        trained):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=300.0)
    the_task = task()
    plan_budget.plan = plan = plan_budget.choose(the_task, args, finetune_args, [measured("full", 0.25)], chosen=[])
    assert plan.runs == 3 and plan.max_steps == 368
    plan_budget.seed_soup = SeedSoup(plan.runs, "accuracy")
    clock = plan_budget.deadline.clock
    monkeypatch.setattr(budget, "fresh_model", lambda task, args: nn.Linear(1, 1))
    monkeypatch.setattr(budget, "build_trainer", lambda task, args, finetune_args, model, model_init: SimulatedTrainer(
        clock, step_s, 2.0, task, args, model))
    plan_budget.train_seeded_runs(the_task, args, finetune_args)
    runs = plan_budget.seeded_runs
    assert [run["seed"] for run in runs] == trained and len(plan_budget.seed_soup.runs) == len(trained)
    # The first run's share: 368 steps of the forecast 0.25 s and its 2 s score, 94 s. At twice the forecast
    # speed it stops by its own deadline inside its share; then 2 runs of 3 epochs at 0.5 s no longer fit in the
    # time left, and the last run (the run's own seed) gets all of it.
    first = runs[0]
    assert first["seconds"] <= 94.0 and first["stopped_by_deadline"] == (step_s > 0.25)
    assert first["step_s"] == pytest.approx(step_s)
    assert plan.max_steps * step_s <= plan_budget.deadline.remaining() - plan.reserve_s
    assert plan.max_steps >= 3 * plan.steps_per_epoch and args.max_steps >= plan.max_steps


@pytest.mark.parametrize("given, strategy", [({"num_train_epochs"}, "full"), ({"average_checkpoints"}, "full"),
                                             (set(), "lora")])
def test_seeded_runs_are_planned_only_for_a_full_fine_tune_whose_length_and_averaging_are_free(tmp_path, given, strategy):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=300.0, given=given)
    plan = plan_budget.choose(task(), args, finetune_args, [measured(strategy, 0.25)], chosen=[])
    assert plan.runs == 1


def test_a_greedy_soup_is_planned_only_where_its_evaluations_are_cheap(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=300.0)
    slow_evaluation = measured("full", 0.5, rows_per_s=20.0)  # 10 s a pass: 110 s of soup, over 15% of training
    assert plan_budget.choose(task(), args, finetune_args, [slow_evaluation], chosen=[]).averaging is None
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=300.0, given={"average_checkpoints"})
    assert plan_budget.choose(task(), args, finetune_args, [measured("full", 0.5)], chosen=[]).averaging is None


def test_checkpoint_averaging_gets_its_k_evaluations_and_their_reserve(tmp_path):
    plan_budget, args, finetune_args = planner(tmp_path, budget_s=100.0, given={"average_checkpoints"})
    plain = plan_budget.choose(task(), args, finetune_args, [measured("full", 0.5)], chosen=[])
    finetune_args.average_checkpoints = ["greedy", "5"]
    averaged = plan_budget.choose(task(), args, finetune_args, [measured("full", 0.5)], chosen=[])
    assert plain.evaluations < 5 == averaged.evaluations
    # A greedy soup evaluates up to K + 1 soups after training: six more 2 s passes.
    assert averaged.reserve_s == pytest.approx(plain.reserve_s + 6 * 2.0)
    assert averaged.max_steps < plain.max_steps


def test_a_budgeted_run_records_its_plan_beside_what_happened(tiny_bert, test_data, tmp_path, monkeypatch, one_thread):
    from recipes import text_classification

    start = deadline_module.time.time()
    monkeypatch.setattr(deadline_module, "process_start", lambda: start)  # counted from the test, not pytest's start
    out = tmp_path / "run"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", str(test_data / "sms_spam/train.tsv"),
        "--validation_file", str(test_data / "sms_spam/dev.tsv"), "--max_train_samples", "64",
        "--time_budget", "10m", *fast_args(out, learning_rate=1e-3)])
    config = json.loads((out / "run_config.json").read_text())
    record = config["time_budget"]
    assert record == results["time_budget"] and record["budget_s"] == 600
    assert [c["name"] for c in record["candidates"]] == ["full", "lora", "cache"]
    assert record["strategy"] == "full" and all(c["step_s"] > 0 for c in record["candidates"])
    # learning_rate and num_train_epochs were set (fast_args): kept, so the run trained its one epoch.
    assert {"learning_rate", "num_train_epochs"} <= set(record["kept_as_set"])
    assert record["actual"]["steps"] == 8 and not record["actual"]["stopped_by_deadline"]
    assert set(record["phases"]) >= {"before_plan_s", "probe_s", "training_s", "after_training_s", "total_s"}
    assert "Time budget" in (out / "report.html").read_text()


def budgeted_spam_run(tiny_bert: str, test_data, out, monkeypatch, *flags: str) -> dict:
    """text_classification on 64 sms_spam rows (8 steps an epoch) with a 10-minute budget counted from now."""
    from recipes import text_classification

    start = deadline_module.time.time()
    monkeypatch.setattr(deadline_module, "process_start", lambda: start)
    return text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", str(test_data / "sms_spam/train.tsv"),
        "--validation_file", str(test_data / "sms_spam/dev.tsv"), "--max_train_samples", "64",
        "--time_budget", "10m", "--output_dir", str(out), "--per_device_train_batch_size", "8",
        "--disable_tqdm", "true", *flags])


def test_a_budgeted_run_plans_its_steps_so_the_learning_rate_decays_to_the_end(tiny_bert, test_data, tmp_path,
                                                                               monkeypatch, one_thread):
    monkeypatch.setattr(budget, "MAX_EPOCHS", 3)  # the cap ends the plan: 3 epochs of 8 steps
    monkeypatch.setattr(budget, "MAX_RUNS", 1)  # one run, not several averaged
    out = tmp_path / "run"
    results = budgeted_spam_run(tiny_bert, test_data, out, monkeypatch, "--logging_steps", "1")
    record = results["time_budget"]
    assert record["planned"]["max_steps"] == record["actual"]["steps"] == 24
    state = json.loads((out / "trainer_state.json").read_text())
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert rates[-1] < 0.05 * max(rates)  # linear decay reached its end at the planned last step


def test_a_budgeted_run_trains_its_seeded_runs_and_saves_their_soup(tiny_bert, test_data, tmp_path, monkeypatch,
                                                                     one_thread):
    monkeypatch.setattr(budget, "MAX_EPOCHS", 2)  # each run: 2 epochs of 8 steps
    monkeypatch.setattr(budget, "RUN_EPOCHS", 1)
    monkeypatch.setattr(budget, "MAX_RUNS", 2)
    out = tmp_path / "run"
    results = budgeted_spam_run(tiny_bert, test_data, out, monkeypatch, "--learning_rate", "1e-3")
    record = results["time_budget"]
    assert record["planned"]["seeded_runs"] == 2
    [first] = record["actual"]["seeded_runs_before_the_last"]
    assert first["seed"] == 43 and first["steps"] == 16 and 0.0 <= first["score"] <= 1.0
    assert record["actual"]["steps"] == 16 and record["actual"]["evaluations_in_training"] == 0
    # Uniform, or greedy where the uniform soup scores below its worst run.
    assert (results["averaging_method"], results["averaged_seeds"]) in (
        ("uniform soup of 2 seeded runs", [42, 43]), *(("greedy soup of 2 seeded runs", seeds)
                                                      for seeds in ([42], [43], [42, 43])))
    assert "2 seeded runs planned" in (out / "report.html").read_text()
    # The saved model is the soup: the pipeline predicts each validation row as the run did, which scores what the
    # run reported.
    from transformers import pipeline

    written = read_table(out / "predictions.csv")
    predicted = [p["label"] for p in pipeline("text-classification", model=str(out))(written["sentence"].tolist())]
    assert predicted == written["prediction"].astype(str).tolist()
    gold = read_table(test_data / "sms_spam/dev.tsv")["label"].astype(str).tolist()
    assert sum(p == g for p, g in zip(predicted, gold)) / len(gold) == pytest.approx(results["eval_accuracy"])


@pytest.mark.slow
def test_a_budgeted_two_process_run_trains_its_seeded_runs_in_step(tiny_bert, test_data, tmp_path):
    """Under DDP every process plans from its own clock; they follow the main process's plan for each seeded run
    and for the last, so none is left waiting on a collective the others have left."""
    out = tmp_path / "ddp"
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch",
                "--config_file", str(ROOT / "accelerate_configs/cpu_ddp.yaml")]
    result = subprocess.run([
        *launcher, "recipes/text_classification.py", "--model_name_or_path", tiny_bert,
        "--train_file", str(test_data / "sms_spam/train.tsv"), "--validation_file", str(test_data / "sms_spam/dev.tsv"),
        "--max_train_samples", "64", "--time_budget", "5m", "--output_dir", str(out),
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--disable_tqdm", "true"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "run_config.json").read_text())["time_budget"]
    earlier = record["actual"]["seeded_runs_before_the_last"]
    assert record["planned"]["seeded_runs"] >= 2 and earlier and record["actual"]["steps"] > 0
    assert all(run["steps"] > 0 for run in earlier)
    assert json.loads((out / "all_results.json").read_text())["averaging_method"].endswith(
        f"soup of {len(earlier) + 1} seeded runs")
