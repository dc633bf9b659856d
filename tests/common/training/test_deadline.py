"""The deadline of --time_budget, on a fake clock: it stops at a step boundary while the reserve still fits, after a
slow step, and before an evaluation that would not fit; every process takes the same decision."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from common.core.errors import RecipeInputError
from common.training.deadline import Deadline, DeadlineCallback, parse_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ticks(TrainerCallback):
    """Advances the fake clock as if each step took `step_s(step)` seconds and each evaluation `eval_s`."""

    def __init__(self, clock: FakeClock, step_s, eval_s: float = 0.0) -> None:
        self.clock, self.step_s, self.eval_s = clock, step_s, eval_s

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.now += self.step_s(state.global_step + 1)

    def on_prediction_step(self, args, state, control, **kwargs):
        self.clock.now += self.eval_s


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels=None):
        out = self.linear(x).squeeze(-1)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


class Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i % 7), 1.0]), "labels": torch.tensor(float(i % 3))}


def train(tmp_path, clock: FakeClock, callback: DeadlineCallback, ticks: Ticks, **args) -> Trainer:
    settings = {"per_device_train_batch_size": 4, "max_steps": 100, "report_to": [], "save_strategy": "no",
                "logging_strategy": "no", "disable_tqdm": True, "use_cpu": True, "per_device_eval_batch_size": 64}
    arguments = TrainingArguments(str(tmp_path), **{**settings, **args})
    trainer = Trainer(Regression(), arguments, train_dataset=Rows(), eval_dataset=Rows(),
                      callbacks=[ticks, callback])
    trainer.train()
    return trainer


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                               ("45", 45), ("1.5m", 90), ("10 min", 600)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10x", "0s", "", "5m then"])
def test_a_duration_that_is_not_one_fails_naming_the_forms(text):
    with pytest.raises(RecipeInputError, match="90s, 10m, 2h"):
        parse_duration(text)


def test_training_stops_at_the_last_step_that_leaves_the_reserve(tmp_path):
    clock = FakeClock()
    deadline = Deadline(60.0, start=clock.now, clock=clock)  # 60 s, 1 s steps, 10 s reserved after training
    callback = DeadlineCallback(deadline, lambda eval_s: 10.0, step_s=1.0, eval_s=0.0)
    # A constant schedule has no length to shorten (see the test below): the deadline alone stops it.
    trainer = train(tmp_path, clock, callback, Ticks(clock, lambda step: 1.0), lr_scheduler_type="constant")
    # After step 49 one more step would leave 60 - 50 = 10 s: exactly the reserve, so step 50 runs; 51 would not.
    assert trainer.state.global_step == 50 and callback.stopped_at == 50
    assert deadline.remaining() >= 10.0


def test_a_slow_step_moves_the_stop_earlier(tmp_path):
    clock = FakeClock()
    deadline = Deadline(60.0, start=clock.now, clock=clock)
    callback = DeadlineCallback(deadline, lambda eval_s: 10.0, step_s=1.0, eval_s=0.0)
    # Steps take 1 s until step 20, then 5 s: the forecast follows the slow steps at once.
    trainer = train(tmp_path, clock, callback, Ticks(clock, lambda step: 1.0 if step <= 20 else 5.0))
    assert deadline.remaining() >= 10.0
    # 20 x 1 s + 6 x 5 s = 50 s, leaving the 10 s reserve; a seventh slow step would eat into it.
    assert trainer.state.global_step == 26
    assert callback.step_s() == 5.0


def test_a_slow_evaluation_is_measured_and_budgeted(tmp_path):
    clock = FakeClock()
    deadline = Deadline(100.0, start=clock.now, clock=clock)
    # The forecast says evaluations are free; the first one takes 30 s. Reserve: one evaluation pass plus 5 s.
    callback = DeadlineCallback(deadline, lambda eval_s: eval_s + 5.0, step_s=1.0, eval_s=0.0)
    trainer = train(tmp_path, clock, callback, Ticks(clock, lambda step: 1.0, eval_s=30.0),
                    eval_strategy="steps", eval_steps=10)
    # 10 steps + a 30 s evaluation + 10 steps = 50 s. The evaluation due at step 20 would need 30 s more plus the
    # 35 s reserve: training stops there, without it, with 50 s left.
    assert trainer.state.global_step == 20 and callback.stopped_at == 20
    assert callback.evals == [30.0]  # measured apart from the steps around it
    assert callback.step_s() == 1.0
    assert deadline.remaining() == 50.0


def test_the_evaluation_due_at_the_stop_is_skipped_when_the_run_evaluates_the_final_model_anyway(tmp_path):
    clock = FakeClock()
    deadline = Deadline(1000.0, start=clock.now, clock=clock)
    callback = DeadlineCallback(deadline, lambda eval_s: 0.0, step_s=1.0, eval_s=5.0, skip_final_eval=True)
    trainer = train(tmp_path, clock, callback, Ticks(clock, lambda step: 1.0, eval_s=5.0),
                    eval_strategy="steps", eval_steps=30, max_steps=45)
    # Trainer adds an evaluation at the last step (45); the run's own final evaluation follows, so it is dropped.
    assert trainer.state.global_step == 45 and callback.stopped_at is None
    assert callback.evals == [5.0]
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [30]


def test_a_run_slower_than_its_forecast_is_shortened_and_its_schedule_ends_with_it(tmp_path):
    clock = FakeClock()
    deadline = Deadline(110.0, start=clock.now, clock=clock)
    # Planned: 100 steps of 1 s. Measured: 2 s. At step 10 (20 s) the 80 s left after the reserve hold 40 steps.
    callback = DeadlineCallback(deadline, lambda eval_s: 10.0, step_s=1.0, eval_s=0.0)
    trainer = train(tmp_path, clock, callback, Ticks(clock, lambda step: 2.0), logging_strategy="steps",
                    logging_steps=1, learning_rate=0.1, lr_scheduler_type="linear")
    assert callback.replanned == [(10, 50)] and callback.stopped_at is None
    assert trainer.state.global_step == 50 and deadline.remaining() == 10.0
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    # rates[i]: the rate after i scheduler steps. Before the check it decays over 100 steps, after it over 50,
    # down to its last step's.
    assert rates[10] == pytest.approx(0.1 * (100 - 10) / 100)
    assert rates[11] == pytest.approx(0.1 * (50 - 11) / 50) and rates[-1] == pytest.approx(0.1 * 1 / 50)


def test_a_run_starts_planned_and_grows_within_trainers_loop_when_its_steps_are_faster(tmp_path):
    clock = FakeClock()
    deadline = Deadline(250.0, start=clock.now, clock=clock)
    # The probe said 2 s a step: 100 steps planned, Trainer looping for up to 200. The steps take 1 s.
    callback = DeadlineCallback(deadline, lambda eval_s: 10.0, step_s=2.0, eval_s=0.0, planned_steps=100)
    trainer = train(tmp_path, clock, callback, Ticks(clock, lambda step: 1.0), max_steps=200,
                    logging_strategy="steps", logging_steps=1, learning_rate=0.1, lr_scheduler_type="linear")
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert rates[1] == pytest.approx(0.1 * (100 - 1) / 100)  # it starts planned to end at step 100
    # It grows once 30 steps are timed (at step 40: the 200 s left hold every step Trainer loops for), not sooner.
    assert callback.replanned == [(40, 200)]
    assert trainer.state.global_step == 200 and deadline.remaining() == 50.0
    assert rates[-1] == pytest.approx(0.1 / 200)


def test_a_budget_spent_before_training_stops_after_the_first_step(tmp_path):
    clock = FakeClock()
    deadline = Deadline(10.0, start=clock.now - 9.0, clock=clock)  # 9 of 10 s went to data and model loading
    callback = DeadlineCallback(deadline, lambda eval_s: 2.0, step_s=1.0, eval_s=0.0)
    trainer = train(tmp_path, clock, callback, Ticks(clock, lambda step: 1.0))
    assert trainer.state.global_step == 1
