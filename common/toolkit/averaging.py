"""Checkpoint averaging (`--average_checkpoints uniform K` or `greedy K`): the weights the run passed through at
its evaluations, averaged into the model that is saved.

- uniform: the mean of the last K (the final weights among them), as in latest-weight averaging.
- greedy: the "greedy soup" of Wortsman et al., "Model soups" (2022), AutoGluon's default: the best K by their
  validation score, added one at a time from the best down, each kept only if the soup's validation score does
  not drop.

Snapshots are the trainable weights (and floating-point buffers) copied to CPU memory at each evaluation inside
the training loop, so no checkpoint needs to be written; frozen weights are the same in every snapshot. Greedy
scores on the validation split, which the run's reported validation metrics then favour by that selection: read
the test split's (or a held-out one's) to judge it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from common.core.errors import RecipeInputError

logger = logging.getLogger(__name__)

METHODS = ("uniform", "greedy")
PREFIX = "averaging"  # metric prefix of the evaluations the averaging makes, apart from the run's eval_*


@dataclass
class AveragingArguments:
    average_checkpoints: list[str] | None = field(
        default=None,
        metadata={"help": "Average the weights of the run's evaluated checkpoints into the saved model: 'uniform K' "
                          "(the last K) or 'greedy K' (the best K, each kept if the validation metric does not drop). "
                          "'none': no averaging, also where --time_budget would plan a greedy soup."},
    )

    def check(self) -> None:
        if self.average_checkpoints and averaging_choice(self.average_checkpoints) is None:
            self.average_checkpoints = None  # 'none', which the user set: a plan leaves it off


def averaging_choice(value: list[str] | str) -> tuple[str, int] | None:
    """('uniform' | 'greedy', K) from ['greedy', '5'], 'greedy 5' or a YAML list; None for 'none'."""
    words = str(value).split() if isinstance(value, str) else [str(v) for v in value]
    if [w.lower() for w in words] in (["none"], ["off"]):
        return None
    if len(words) == 1 and words[0] in METHODS:
        words.append("5")
    if len(words) != 2 or words[0] not in METHODS or not words[1].isdigit() or int(words[1]) < 2:
        raise RecipeInputError(f"--average_checkpoints {' '.join(words)}: give a method and a count of at least 2, "
                               "e.g. --average_checkpoints greedy 5 or uniform 3, or none.")
    return words[0], int(words[1])


def averaged_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: trainable parameters and floating-point buffers (e.g. batch-norm statistics)."""
    tensors = {name: p for name, p in model.named_parameters() if p.requires_grad}
    tensors.update({name: b for name, b in model.named_buffers() if b.is_floating_point()})
    return tensors


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu", copy=True) for name, t in averaged_tensors(model).items()}


def load_mean(model: torch.nn.Module, snapshots: list[dict[str, torch.Tensor]]) -> None:
    """Set the model's averaged tensors to the mean of `snapshots`."""
    with torch.no_grad():
        for name, tensor in averaged_tensors(model).items():
            mean = torch.stack([s[name].float() for s in snapshots]).mean(0)
            tensor.copy_(mean.to(tensor.dtype))


class CheckpointAveraging(TrainerCallback):
    """Keeps a snapshot per evaluation (the last K, or the best K by `metric`); `finish_training(trainer)`, which
    the run calls after training, puts the average into the trainer's model and returns what it did."""

    def __init__(self, method: str, k: int, metric: str, greater_is_better: bool = True) -> None:
        self.method, self.k, self.metric, self.greater_is_better = method, k, metric, greater_is_better
        self.kept: list[tuple[int, float | None, dict[str, torch.Tensor]]] = []  # (step, score, snapshot)
        self.finishing = False

    def better(self, score: float) -> float:
        return score if self.greater_is_better else -score

    def on_train_begin(self, args, state, control, **kwargs):
        self.kept.clear()  # a search's trials train one after another with the same callbacks
        self.finishing = False

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if self.finishing or model is None or state.global_step == 0:
            return
        score = (metrics or {}).get(f"eval_{self.metric}")
        if score is None and self.method == "greedy":
            raise RecipeInputError(f"--average_checkpoints greedy ranks checkpoints by eval_{self.metric}, which the "
                                   f"evaluation does not give ({', '.join(metrics or {})}).")
        self.keep(state.global_step, score, snapshot(model))

    def keep(self, step: int, score: float | None, weights: dict[str, torch.Tensor]) -> None:
        self.kept.append((step, score, weights))
        if self.method == "greedy":
            self.kept.sort(key=lambda kept: self.better(kept[1]), reverse=True)
            del self.kept[self.k:]
        else:
            del self.kept[:-self.k]

    def finish_training(self, trainer) -> dict[str, Any]:
        return self.average(trainer, trainer.state.global_step, "steps")

    def average(self, trainer, final_key: int, unit: str) -> dict[str, Any]:
        """Put the average into the trainer's model; the final weights, `final_key`, are a candidate too. The record
        names the averaged candidates' keys `averaged_<unit>`."""
        self.finishing = True
        model = trainer.model
        if not any(kept[0] == final_key for kept in self.kept):
            self.keep(final_key, self.score(trainer) if self.method == "greedy" else None, snapshot(model))
        if self.method == "uniform":
            chosen = self.kept
        else:
            chosen, best = [self.kept[0]], self.kept[0][1]
            for candidate in self.kept[1:]:
                load_mean(model, [c[2] for c in [*chosen, candidate]])
                score = self.score(trainer)
                if self.better(score) >= self.better(best):
                    chosen, best = [*chosen, candidate], score
                logger.info("greedy soup: with %s %d %s %.4f -> %s", unit[:-1], candidate[0], self.metric, score,
                            "kept" if chosen[-1] is candidate else "left out")
        load_mean(model, [c[2] for c in chosen])
        keys = sorted(c[0] for c in chosen)
        logger.info("%s %d: averaged the weights of %s %s", self.method, self.k, unit, keys)
        self.kept.clear()
        return {"averaging_method": f"{self.method} {self.k}", f"averaged_{unit}": keys}

    def score(self, trainer) -> float:
        metrics = trainer.evaluate(metric_key_prefix=PREFIX)
        key = f"{PREFIX}_{self.metric}"
        if key not in metrics:
            raise RecipeInputError(f"--average_checkpoints {self.method}: the evaluation gives no {self.metric} "
                                   f"({', '.join(metrics)}).")
        return metrics[key]


class SeedSoup(CheckpointAveraging):
    """A soup of whole runs: the final weights of runs that differ only in their seed (the head's initial weights
    and the data order), each scored on the validation split. The runs trained before the last one are added with
    `add_run`; the last run's own evaluations are not candidates.

    The soup is the uniform average of every run: runs fine-tuned from one pretrained checkpoint average well
    ("Model soups", 2022; bench/RESULTS.md), and a greedy pass on a small validation split would leave runs out on
    its noise. A uniform soup that scores below the worst of its runs shows weights that do not average (runs from
    random weights land in different basins): then the greedy soup, which keeps only what does not lower the score."""

    def __init__(self, k: int, metric: str, greater_is_better: bool = True) -> None:
        super().__init__("greedy", k, metric, greater_is_better)
        self.runs: list[tuple[int, float | None, dict[str, torch.Tensor]]] = []  # (seed, score, weights)

    def add_run(self, seed: int, trainer) -> float:
        score = self.score(trainer)
        self.runs.append((seed, score, snapshot(trainer.model)))
        logger.info("seeded run %d of %d (seed %d): %s %.4f", len(self.runs), self.k, seed, self.metric, score)
        return score

    def on_train_begin(self, args, state, control, **kwargs):
        self.kept, self.finishing = [], False

    def on_evaluate(self, args, state, control, **kwargs):
        pass

    def finish_training(self, trainer) -> dict[str, Any]:
        self.finishing = True
        runs = [*self.runs, (trainer.args.seed, self.score(trainer), snapshot(trainer.model))]
        load_mean(trainer.model, [run[2] for run in runs])
        uniform = self.score(trainer)
        worst = min((run[1] for run in runs), key=self.better)
        seeds = sorted(run[0] for run in runs)
        if self.better(uniform) >= self.better(worst):
            logger.info("seeded runs %s averaged: %s %.4f (runs %s)", seeds, self.metric, uniform,
                        ", ".join(f"{run[1]:.4f}" for run in runs))
            return {"averaging_method": f"uniform soup of {len(runs)} seeded runs", "averaged_seeds": seeds}
        logger.warning("the uniform soup of seeded runs %s scores %s %.4f, below its worst run (%.4f): their weights "
                       "do not average; a greedy soup instead", seeds, self.metric, uniform, worst)
        self.kept = sorted(runs, key=lambda run: self.better(run[1]), reverse=True)
        record = self.average(trainer, trainer.args.seed, "seeds")
        return {**record, "averaging_method": f"greedy soup of {len(runs)} seeded runs"}
