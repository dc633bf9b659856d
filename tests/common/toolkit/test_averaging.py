"""Checkpoint averaging: uniform means the last K evaluated weights; greedy adds the best-first checkpoints while the
validation metric does not drop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from common.core.errors import RecipeInputError
from common.toolkit.averaging import CheckpointAveraging, SeedSoup, averaging_choice


class FakeTrainer:
    """A trainer whose evaluation scores the weight's closeness to `target` (greater is better)."""

    def __init__(self, model: nn.Module, step: int, target: float) -> None:
        self.model, self.state, self.target = model, SimpleNamespace(global_step=step), target
        self.evaluations = 0

    def evaluate(self, metric_key_prefix: str) -> dict[str, float]:
        self.evaluations += 1
        return {f"{metric_key_prefix}_accuracy": -abs(self.model.weight.item() - self.target)}


def evaluated(averaging: CheckpointAveraging, model: nn.Module, weights: list[float], target: float) -> None:
    averaging.on_train_begin(None, None, None)
    for step, weight in enumerate(weights, start=1):
        model.weight.data.fill_(weight)
        averaging.on_evaluate(None, SimpleNamespace(global_step=step), None, model=model,
                              metrics={"eval_accuracy": -abs(weight - target)})


def one_weight() -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    model.register_buffer("running_mean", torch.zeros(1))
    return model


def test_uniform_averages_the_last_k_checkpoints_with_the_final_weights():
    model = one_weight()
    averaging = CheckpointAveraging("uniform", 3, "accuracy")
    evaluated(averaging, model, [1.0, 2.0, 3.0, 4.0], target=0.0)
    model.weight.data.fill_(8.0)  # the final weights, after the last evaluation
    result = averaging.finish_training(FakeTrainer(model, step=5, target=0.0))
    assert model.weight.item() == pytest.approx((3.0 + 4.0 + 8.0) / 3)
    assert result["averaged_steps"] == [3, 4, 5]


def test_greedy_keeps_a_checkpoint_only_when_the_metric_does_not_drop():
    model = one_weight()
    averaging = CheckpointAveraging("greedy", 4, "accuracy")
    # Scores against the target 2.0: 2.5 is best, then 1.5 (the soup of the two is 2.0, better: kept), then 4.0
    # (the soup would move to 2.67: left out), then 9.0 is not among the best 4.
    evaluated(averaging, model, [9.0, 1.5, 4.0, 2.5], target=2.0)
    model.weight.data.fill_(4.0)
    trainer = FakeTrainer(model, step=5, target=2.0)
    result = averaging.finish_training(trainer)
    assert model.weight.item() == pytest.approx(2.0)
    assert result["averaged_steps"] == [2, 4]
    assert result["averaging_method"] == "greedy 4"


class TwoBasins(FakeTrainer):
    """Scores the weight's closeness to the nearer of two good weights, 1.0 and 3.0: the average of a run in each
    basin lands between them, worse than either run, as runs trained from random weights do."""

    def evaluate(self, metric_key_prefix: str) -> dict[str, float]:
        self.evaluations += 1
        weight = self.model.weight.item()
        return {f"{metric_key_prefix}_accuracy": -min(abs(weight - 1.0), abs(weight - 3.0))}


def seed_soup_of(model: nn.Module, trainer_class, weights: dict[int, float], target: float = 2.0) -> dict:
    """A SeedSoup of runs with these final weights by seed, the last one the run's own (its evaluations inside
    training are not candidates); the soup's record."""
    soup = SeedSoup(len(weights), "accuracy")
    *earlier, (last_seed, last_weight) = weights.items()
    for seed, weight in earlier:
        model.weight.data.fill_(weight)
        soup.add_run(seed, trainer_class(model, step=10, target=target))
    evaluated(soup, model, [target, target], target=target)
    model.weight.data.fill_(last_weight)
    trainer = trainer_class(model, step=10, target=target)
    trainer.args = SimpleNamespace(seed=last_seed)
    return soup.finish_training(trainer)


def test_a_seed_soup_is_the_uniform_average_of_every_run():
    model = one_weight()
    result = seed_soup_of(model, FakeTrainer, {43: 1.5, 44: 2.5, 42: 2.2})
    assert model.weight.item() == pytest.approx((1.5 + 2.5 + 2.2) / 3)
    assert result == {"averaging_method": "uniform soup of 3 seeded runs", "averaged_seeds": [42, 43, 44]}


def test_a_seed_soup_scoring_below_its_worst_run_falls_back_to_the_greedy_soup():
    model = one_weight()
    # Runs at 1.0 and 3.0 score 0, at 1.1 -0.1; their mean, 1.7, scores -0.7. Greedy from 1.0 (seed 43): adding
    # 3.0 (mean 2.0, -1.0) or 1.1 (mean 1.05, -0.05) lowers the score, so seed 43 alone is kept.
    result = seed_soup_of(model, TwoBasins, {43: 1.0, 44: 3.0, 42: 1.1})
    assert model.weight.item() == pytest.approx(1.0)
    assert result["averaged_seeds"] == [43] and result["averaging_method"] == "greedy soup of 3 seeded runs"


def test_greedy_with_the_final_weights_best_keeps_them_first():
    model = one_weight()
    averaging = CheckpointAveraging("greedy", 3, "accuracy")
    evaluated(averaging, model, [5.0, 3.0], target=2.0)
    model.weight.data.fill_(2.0)  # the final weights hit the target: no soup beats them
    result = averaging.finish_training(FakeTrainer(model, step=3, target=2.0))
    assert model.weight.item() == pytest.approx(2.0) and result["averaged_steps"] == [3]


def test_a_lower_is_better_metric_ranks_the_lowest_first():
    model = one_weight()
    averaging = CheckpointAveraging("greedy", 2, "accuracy", greater_is_better=False)
    evaluated(averaging, model, [1.0, 2.0, 3.0], target=0.0)  # scores -1, -2, -3: the lowest (3.0) is best
    model.weight.data.fill_(2.0)
    averaging.finish_training(FakeTrainer(model, step=3, target=0.0))
    assert model.weight.item() == pytest.approx(3.0)


def test_an_averaging_choice_reads_a_method_and_a_count_or_none():
    assert averaging_choice(["greedy"]) == ("greedy", 5)
    assert averaging_choice("uniform 3") == ("uniform", 3) and averaging_choice(["greedy", 4]) == ("greedy", 4)
    assert averaging_choice(["none"]) is None and averaging_choice("off") is None


@pytest.mark.parametrize("value", ["uniform 1", ["soup", "5"], ["greedy", "five"]])
def test_an_averaging_choice_needs_a_method_and_a_count_of_two_or_more(value):
    with pytest.raises(RecipeInputError, match="greedy 5"):
        averaging_choice(value)


def test_a_run_saves_the_average_of_its_last_k_checkpoints(tiny_bert, test_data, tmp_path, one_thread):
    from safetensors.torch import load_file

    from recipes import text_classification
    from tests.conftest import fast_args

    out = tmp_path / "run"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", str(test_data / "sms_spam/train.tsv"),
        "--validation_file", str(test_data / "sms_spam/dev.tsv"), "--max_train_samples", "128",
        "--average_checkpoints", "uniform", "2",
        *fast_args(out, eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=4, learning_rate=1e-3,
                   per_device_train_batch_size=8)])
    assert results["averaged_steps"] == [12, 16]
    saved = load_file(out / "model.safetensors")
    last = [load_file(out / f"checkpoint-{step}" / "model.safetensors") for step in (12, 16)]
    assert set(saved) == set(last[0])
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, (last[0][name] + last[1][name]) / 2, atol=1e-6, rtol=1e-5)
    assert not torch.equal(saved["classifier.weight"], last[1]["classifier.weight"])
