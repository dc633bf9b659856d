"""Hyperparameter search: `Trainer.hyperparameter_search` with optuna, a fresh model per trial.

The objective is the task's main metric (`Task.main_metric`) on the validation split at the end of each
trial's training: maximised, or minimised when `Task.greater_is_better` is False (error rates such as WER).
Trials train on the whole train split, save no checkpoints, and leave `hpo_results.csv` (one row per
trial: its parameters and objective) and `hpo.png` in the output dir. `run` then retrains the best
configuration with the usual flow.

The search space is a mapping of TrainingArguments field to distribution, e.g. in a YAML config:

    hpo_space:
      learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
      per_device_train_batch_size: {type: categorical, choices: [8, 16]}
      num_train_epochs: {type: int, low: 1, high: 4}
      weight_decay: {type: uniform, low: 0.0, high: 0.1}

or as a YAML/JSON string with `--hpo_space`. A given space replaces the default one entirely; every
argument it leaves out keeps its configured value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from accelerate.utils import broadcast_object_list
from transformers import TrainingArguments

from common.core.config import ALIASES
from common.core.errors import RecipeInputError, nearest
from common.training.reporting import plot_bars
from common.training.run import build_trainer

logger = logging.getLogger(__name__)


@dataclass
class HpoArguments:
    hpo_trials: int = field(default=0, metadata={"help": "Hyperparameter search trials (optuna); 0 = off."})
    hpo_space: str | None = field(
        default=None, metadata={"help": "Search space as YAML/JSON (usually a mapping under hpo_space: in the config)."}
    )

    def check(self) -> None:
        if self.hpo_space:
            parse_space(self.hpo_space)  # a bad space fails at parse time, not after the data is prepared

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 3e-4},
    "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "num_train_epochs": {"type": "int", "low": 1, "high": 4},
    "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
    "warmup_steps": {"type": "uniform", "low": 0.0, "high": 0.2},  # below 1: a fraction of the training steps
}
# Keys each distribution type takes (required, optional).
DISTRIBUTIONS: dict[str, tuple[set[str], set[str]]] = {
    "loguniform": ({"low", "high"}, set()),
    "uniform": ({"low", "high"}, {"step"}),
    "int": ({"low", "high"}, {"step", "log"}),
    "categorical": ({"choices"}, set()),
}


def parse_space(value: str | dict | None) -> dict[str, dict[str, Any]]:
    """The search space from `hpo_space` (a mapping, or YAML/JSON text), validated; the default when None."""
    if value is None:
        return DEFAULT_SPACE
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise RecipeInputError(f"--hpo_space is not valid YAML/JSON: {err}") from None
    if not isinstance(value, dict) or not value:
        raise RecipeInputError(
            "hpo_space must be a non-empty mapping of argument: distribution, e.g. "
            "'{learning_rate: {type: loguniform, low: 1e-5, high: 1e-3}}'."
        )
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    names = {name: ALIASES.get(name, name) for name in value}
    unknown = [name for name, target in names.items() if target not in fields]
    if unknown:
        hints = "".join(nearest(name, fields) for name in unknown)
        raise RecipeInputError(
            f"hpo_space: unknown argument(s) {', '.join(unknown)}{hints}. Search over TrainingArguments fields "
            "such as learning_rate, per_device_train_batch_size, num_train_epochs, weight_decay, warmup_steps."
        )
    return {names[name]: _check_distribution(name, spec) for name, spec in value.items()}


def _check_distribution(name: str, spec: Any) -> dict[str, Any]:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in DISTRIBUTIONS:
        raise RecipeInputError(
            f"hpo_space.{name}: unknown distribution type {kind!r}; use one of {', '.join(DISTRIBUTIONS)}, "
            f"e.g. {name}: {{type: uniform, low: 0.0, high: 0.1}}."
        )
    required, optional = DISTRIBUTIONS[kind]
    keys = set(spec) - {"type"}
    if required - keys or keys - required - optional:
        raise RecipeInputError(
            f"hpo_space.{name} ({kind}) takes {', '.join(sorted(required))}"
            f"{' and optionally ' + ', '.join(sorted(optional)) if optional else ''}; got {', '.join(sorted(keys))}."
        )
    if kind == "categorical":
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise RecipeInputError(f"hpo_space.{name}: choices must be a non-empty list.")
        return spec
    low, high = _number(spec["low"]), _number(spec["high"])
    if low is None or high is None or low >= high:
        raise RecipeInputError(f"hpo_space.{name}: low and high must be numbers with low < high (got {low}, {high}).")
    if kind == "loguniform" and low <= 0:
        raise RecipeInputError(f"hpo_space.{name}: a loguniform range must be positive (got low {low}).")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise RecipeInputError(f"hpo_space.{name}: an int range needs integer low and high (got {low}, {high}).")
    return {**spec, "low": low, "high": high}


def _number(value: Any) -> int | float | None:
    """A number, including YAML 1.1's unquoted '1e-5' (a string to PyYAML); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one configuration from `space` with an optuna trial."""
    params = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=spec.get("log", False))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=kind == "loguniform",
                                               step=spec.get("step"))
    return params


def run_hpo(task, args: TrainingArguments, finetune_args: HpoArguments) -> dict[str, Any]:
    """Search, write hpo_results.csv and hpo.png, and return the best TrainingArguments overrides."""
    import optuna  # heavy, and needed only by --hpo_trials: loaded here

    if task.eval_dataset is None:
        raise RecipeInputError("--hpo_trials needs a validation split to score trials: give --validation_file.")
    space = parse_space(finetune_args.hpo_space)
    key, direction = f"eval_{task.main_metric}", "maximize" if task.greater_is_better else "minimize"
    out = Path(args.output_dir)
    # Trials save nothing (no checkpoint to pick the best from), so they cannot reload a best model either.
    trial_args = dataclasses.replace(args, output_dir=str(out / "hpo"), save_strategy="no",
                                     load_best_model_at_end=False, resume_from_checkpoint=None)
    for name, spec in space.items():
        # Trainer casts each drawn value to the type of the current one: keep fractional draws fractional.
        if spec["type"] in ("uniform", "loguniform") and isinstance(getattr(trial_args, name), int):
            setattr(trial_args, name, float(getattr(trial_args, name)))

    def compute_objective(metrics: dict[str, float]) -> float:
        if key not in metrics:
            raise RecipeInputError(f"HPO objective {key} is not among the evaluation metrics: {', '.join(metrics)}.")
        return metrics[key]

    trainer = build_trainer(task, trial_args, finetune_args)
    storage = optuna.storages.InMemoryStorage()
    # Only rank 0 holds the optuna study. A trial it pruned would stop there while the other processes, which
    # follow a fixed copy of the trial that cannot be pruned, kept training and waited on it forever.
    pruner = optuna.pruners.NopPruner() if args.world_size > 1 else None
    logger.info("hyperparameter search: %d trials, %s %s over %s", finetune_args.hpo_trials, direction, key, list(space))
    best_run = trainer.hyperparameter_search(
        hp_space=lambda trial: suggest(trial, space),
        compute_objective=compute_objective,
        n_trials=finetune_args.hpo_trials,
        direction=direction,
        backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        storage=storage,
        study_name="hpo",
        pruner=pruner,
        gc_after_trial=True,
    )
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    best = best_run.hyperparameters if best_run is not None else None
    if args.world_size > 1:  # only rank 0 drives optuna; the others follow its trials and learn the winner here

        best = broadcast_object_list([best])[0]
    if args.process_index == 0:
        with contextlib.suppress(OSError):  # trials save nothing: drop their empty output dir
            (out / "hpo").rmdir()
        write_hpo_results(optuna.load_study(study_name="hpo", storage=storage), key, out)
        logger.info("best trial %s: %s %.4f with %s", best_run.run_id, key, best_run.objective, best)
    return best


def write_hpo_results(study, key: str, out: Path) -> None:
    rows = [{"trial": t.number, "state": t.state.name, **t.params, "objective": t.value} for t in study.trials]
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "hpo_results.csv", index=False)
    scored = {f"trial {t.number}": t.value for t in study.trials if t.value is not None}
    best = study.best_trial.number
    plot_bars(scored, None, key, f"Hyperparameter search: {key} per trial (best: trial {best})", out / "hpo.png")
