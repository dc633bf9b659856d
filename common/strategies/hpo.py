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
argument it leaves out keeps its configured value. Each trial trains with its own seed (--seed plus the trial
number), recorded with the trial; the best configuration is retrained with the best trial's seed.

Across machines: `--hpo_storage` puts the study in an optuna storage that any number of workers share
(`sqlite:///study.db` on one node, `postgresql://user:password@host/db` across machines, or a journal file on a
shared filesystem). Each worker runs its --hpo_trials trials on fresh models, writes nothing into the output dir
and stops; `finetune-recipes hpo-summary` writes hpo_results.csv and hpo.png from the study, and best.yaml (every
option of the best trial, without the search's), and prints the command that retrains it with that config. The study records its search space and objective: a worker whose
command would search another space is refused. A worker killed mid-trial leaves that trial RUNNING; with a
database storage, the next worker to start a trial after the heartbeat grace period (HEARTBEAT_GRACE_S) marks it
FAIL. Either way the summary lists it and ranks only COMPLETE trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import re
import shlex
import socket
import time
import warnings
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
from common.training.reliability import RUN_RECORD_ATTR, plain_value
from common.training.reporting import plot_bars
from common.training.single_run import build_trainer

logger = logging.getLogger(__name__)


HEARTBEAT_S, HEARTBEAT_GRACE_S = 60, 180  # database storages: a trial silent for the grace period is FAILed
CONNECT_TIMEOUT_S = 10  # a database that does not answer fails the run in seconds, not minutes


@dataclass
class HpoArguments:
    hpo_trials: str = field(
        default="0",
        metadata={"help": "Hyperparameter search trials (optuna); 0 = off. With --hpo_storage: the trials this "
                          "worker runs. 'auto' with --time_budget: as many as a share of the budget allows, pruned "
                          "by successive halving."},
    )
    hpo_space: str | None = field(
        default=None, metadata={"help": "Search space as YAML/JSON (usually a mapping under hpo_space: in the config)."}
    )
    hpo_storage: str | None = field(
        default=None,
        metadata={"help": "Share the study between workers: an optuna storage URL (sqlite:///study.db, "
                          "postgresql://user:password@host/db) or a journal file path on a shared filesystem. Each "
                          "worker runs --hpo_trials trials and stops; `finetune-recipes hpo-summary` reports the study."},
    )
    hpo_study_name: str | None = field(
        default=None, metadata={"help": "The study's name in --hpo_storage (default: the output dir's folder name)."}
    )

    def check(self) -> None:
        self.hpo_trials = trial_count(self.hpo_trials)
        if self.hpo_space:
            parse_space(self.hpo_space)  # a bad space fails at parse time, not after the data is prepared
        if self.hpo_storage:
            if not self.hpo_trials:
                raise RecipeInputError("--hpo_storage needs --hpo_trials N: the number of trials this worker runs.")
            if getattr(self, "cv_folds", 0) or getattr(self, "ensemble_models", None):
                raise RecipeInputError("--hpo_storage makes this run a search worker, which trains trials only: drop "
                                       "--cv_folds / --ensemble_models, and add them to the retrain command that "
                                       "`finetune-recipes hpo-summary` prints.")
            open_storage(self.hpo_storage)  # unreachable or refused: fail now, before any data or model loads

    @staticmethod
    def policies(options: dict[str, Any]) -> None:
        # A worker writes nothing into the output dir (its trials save nothing; the study lives in the storage), so
        # any number of workers share one, even after hpo-summary has written there.
        if options.get("hpo_storage"):
            options["overwrite_output_dir"] = True


def trial_count(value: int | str) -> int | str:
    """A number of trials, or 'auto' (a time budget sizes the search)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0:
        raise RecipeInputError(f"--hpo_trials {value}: give a number of trials (0 = no search), or auto with "
                               "--time_budget.")
    return count


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


def shown_url(url: str) -> str:
    """A storage URL fit for messages and logs: its password masked."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: hide everything between scheme and host
        return re.sub(r"//[^@/]*@", "//***@", url)


def _driver_url(url: str) -> str:
    """postgresql:// through psycopg 3 when it is the driver installed (SQLAlchemy's default is psycopg2)."""
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg2") is None:
        if importlib.util.find_spec("psycopg") is None:
            raise RecipeInputError(f"--hpo_storage {shown_url(url)}: PostgreSQL needs a driver; install it with "
                                   "`pip install -e '.[postgres]'` (psycopg).")
        return f"postgresql+psycopg://{rest}"
    return url


def open_storage(url: str):
    """The optuna storage named by --hpo_storage, connected: a database URL, or a journal file path."""
    import optuna

    if "://" not in url:
        path = Path(url)
        if not path.parent.is_dir():
            raise RecipeInputError(f"--hpo_storage {url}: folder {path.parent} does not exist. A journal file "
                                   "storage needs a folder every worker can write to (a shared filesystem).")
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    engine_kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}} if url.startswith("postgres") else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # optuna calls heartbeats experimental on every start; they are the point
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(_driver_url(url), engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=HEARTBEAT_S, grace_period=HEARTBEAT_GRACE_S)
        except RecipeInputError:
            raise
        except Exception as err:  # noqa: BLE001 - drivers raise their own types; each becomes one clear message
            cause = getattr(err, "orig", None) or err.__cause__ or err
            text = str(cause).strip()
            # Workers that start together on a new database all create optuna's tables; the losers retry.
            if attempt < 4 and ("already exists" in text or "duplicate key" in text or "UNIQUE constraint" in text):
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = text.splitlines()[0] if text else type(cause).__name__
            password = _password(url)
            if password:
                reason = reason.replace(password, "***")
            raise RecipeInputError(f"--hpo_storage {shown_url(url)} cannot be used: {reason}. Check the host, port, "
                                   "user, password and database name, and that the server is running.") from None


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


def study_name(finetune_args: HpoArguments, args: TrainingArguments) -> str:
    return finetune_args.hpo_study_name or Path(args.output_dir).resolve().name


def join_study(study, space: dict, key: str, direction: str, args: TrainingArguments, where: str) -> None:
    """Record the study's search space, objective and the first worker's command, or refuse a worker whose
    command searches another space or objective than the study's."""
    mine = {"space": json.loads(json.dumps(space)), "objective": key, "direction": direction}
    if "space" not in study.user_attrs:
        record = getattr(args, RUN_RECORD_ATTR, None)
        # "space" is written last: a worker that sees it sees the whole record. Workers started together may both
        # find none and both write; the comparison below reads the study back, so the one overwritten is refused.
        for name, value in {"objective": key, "direction": direction,
                            "output_dir": str(Path(args.output_dir).resolve()),
                            "command": record.command if record is not None else None,
                            # hpo-summary writes the best trial's config from them: best.yaml (write_best_config)
                            "options": plain_value(record.options) if record is not None else None,
                            "space": mine["space"]}.items():
            study.set_user_attr(name, value)
    attrs = study.user_attrs
    differences = [f"{name}: study {attrs['space'].get(name, 'not searched')}, this command "
                   f"{mine['space'].get(name, 'not searched')}"
                   for name in sorted(set(attrs["space"]) | set(mine["space"]))
                   if attrs["space"].get(name) != mine["space"].get(name)]
    if attrs.get("objective") != key:
        differences.append(f"objective: study {attrs.get('objective')}, this command {key}")
    if differences:
        raise RecipeInputError(f"study '{study.study_name}' in {where} searches another "
                               f"space than this command: {'; '.join(differences)}. Use the study's hpo_space, or "
                               "another --hpo_study_name.")


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


def trial_arguments(args: TrainingArguments, space: dict[str, dict[str, Any]]) -> TrainingArguments:
    """The TrainingArguments the trials start from: saving nothing, and typed so that every value of the space
    reaches its trial as drawn (the retrain uses the drawn values)."""
    # Trials save nothing (no checkpoint to pick the best from), so they cannot reload a best model either.
    trial_args = dataclasses.replace(args, output_dir=str(Path(args.output_dir) / "hpo"), save_strategy="no",
                                     load_best_model_at_end=False, resume_from_checkpoint=None)
    for name, spec in space.items():
        # Trainer casts each drawn value to the type of the current one (int(0.1) is 0): an int field that the
        # space can draw fractions for becomes a float.
        fractional = spec["type"] in ("uniform", "loguniform") or any(isinstance(c, float) for c in spec.get("choices", ()))
        if fractional and isinstance(getattr(trial_args, name), int):
            setattr(trial_args, name, float(getattr(trial_args, name)))
    return trial_args


def run_hpo(task, args: TrainingArguments, finetune_args: HpoArguments, n_trials: int | None = None,
            timeout: float | None = None, space: dict[str, dict[str, Any]] | None = None,
            pruner=None) -> dict[str, Any]:
    """Search, write hpo_results.csv and hpo.png, and return the best TrainingArguments overrides.

    --hpo_trials trials over --hpo_space by default; a time budget passes its own count (None: until `timeout`
    seconds have passed), space and pruner (fed by the trials' evaluations)."""
    import optuna  # heavy, and needed only by --hpo_trials: loaded here

    if task.eval_dataset is None:
        raise RecipeInputError("--hpo_trials needs a validation split to score trials: give --validation_file.")
    space = space or parse_space(finetune_args.hpo_space)
    n_trials = finetune_args.hpo_trials if n_trials is None and timeout is None else n_trials
    key, direction = f"eval_{task.main_metric}", "maximize" if task.greater_is_better else "minimize"
    out = Path(args.output_dir)
    trial_args = trial_arguments(args, space)

    def compute_objective(metrics: dict[str, float]) -> float:
        if key not in metrics:
            raise RecipeInputError(f"HPO objective {key} is not among the evaluation metrics: {', '.join(metrics)}.")
        return metrics[key]

    def hp_space(trial) -> dict[str, Any]:
        params = suggest(trial, space)
        params["seed"] = args.seed + trial.number  # each trial its own seed, kept with the trial
        trial.set_user_attr("seed", params["seed"])
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return params

    shared = finetune_args.hpo_storage is not None
    name = study_name(finetune_args, args) if shared else "hpo"
    storage = open_storage(finetune_args.hpo_storage) if shared else optuna.storages.InMemoryStorage()
    if args.process_index == 0:
        join_study(optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True),
                   space, key, direction, args, shown_url(finetune_args.hpo_storage or "memory"))
    trainer = build_trainer(task, trial_args, finetune_args)
    # Only rank 0 holds the optuna study. A trial it pruned would stop there while the other processes, which
    # follow a fixed copy of the trial that cannot be pruned, kept training and waited on it forever.
    pruner = optuna.pruners.NopPruner() if args.world_size > 1 else pruner
    logger.info("hyperparameter search: %s trials, %s %s over %s%s", n_trials or f"{timeout:.0f} s of", direction, key,
                list(space), f"; study '{name}' in {shown_url(finetune_args.hpo_storage)}" if shared else "")
    best_run = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=compute_objective,
        n_trials=n_trials,
        timeout=timeout,
        direction=direction,
        backend="optuna",
        # Workers sharing a study must not draw the same configurations: their sampler is seeded by the system.
        sampler=optuna.samplers.TPESampler(seed=None if shared else args.seed),
        storage=storage,
        study_name=name,
        load_if_exists=True,
        pruner=pruner,
        gc_after_trial=True,
    )
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if args.process_index == 0:
        with contextlib.suppress(OSError):  # trials save nothing: drop their empty output dir
            (out / "hpo").rmdir()
    if shared:
        if args.process_index == 0:
            study = optuna.load_study(study_name=name, storage=storage)
            done = sum(t.state.name == "COMPLETE" for t in study.trials)
            logger.info("worker done: study '%s' holds %d complete trials of %d. Report it and retrain the best: "
                        "finetune-recipes hpo-summary --hpo_storage '%s' --hpo_study_name %s", name, done,
                        len(study.trials), shown_url(finetune_args.hpo_storage), name)
        return {}

    best = None
    if best_run is not None:  # rank 0
        study = optuna.load_study(study_name=name, storage=storage)
        best = {**best_run.hyperparameters, "seed": study.best_trial.user_attrs["seed"]}
        write_hpo_results(study, key, out)
    if args.world_size > 1:  # only rank 0 drives optuna; the others follow its trials and learn the winner here
        best = broadcast_object_list([best])[0]
    if args.process_index == 0:
        logger.info("best trial %s: %s %.4f with %s", best_run.run_id, key, best_run.objective, best)
    return best


def write_hpo_results(study, key: str, out: Path) -> None:
    """hpo_results.csv (every trial: state, seed, parameters, objective) and hpo.png (the scored ones)."""
    rows = [{"trial": t.number, "state": t.state.name, "seed": t.user_attrs.get("seed"), **t.params,
             "objective": t.value, "worker": t.user_attrs.get("worker")} for t in study.trials]
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "hpo_results.csv", index=False)
    scored = {f"trial {t.number}": t.value for t in study.trials if t.state.name == "COMPLETE"}
    best = study.best_trial.number
    plot_bars(scored, None, key, f"Hyperparameter search: {key} per trial (best: trial {best})", out / "hpo.png")


def hpo_summary(storage_url: str, name: str, output_dir: str | None = None) -> dict[str, Any]:
    """Report a shared study: hpo_results.csv and hpo.png in the output dir (default: the workers'), the best
    COMPLETE trial, and the command that retrains it. Returns the best trial's number, objective and settings."""
    import optuna

    storage = open_storage(storage_url)
    names = optuna.study.get_all_study_names(storage)
    if name not in names:
        raise RecipeInputError(f"no study '{name}' in {shown_url(storage_url)}{nearest(name, names)}; it holds "
                               f"{', '.join(names) or 'no study'}.")
    study = optuna.load_study(study_name=name, storage=storage)
    states = pd.Series([t.state.name for t in study.trials], dtype=object).value_counts().to_dict()
    if not states.get("COMPLETE"):
        raise RecipeInputError(f"study '{name}' has no complete trial yet (trials by state: {states or 'none'}).")
    attrs = study.user_attrs
    out = Path(output_dir or attrs.get("output_dir") or name)
    write_hpo_results(study, attrs.get("objective", "objective"), out)
    best = study.best_trial
    settings = {**best.params, "seed": best.user_attrs.get("seed")}
    print(f"study '{name}' in {shown_url(storage_url)}: {len(study.trials)} trials {states}")
    print(f"best: trial {best.number}, {attrs.get('objective', 'objective')} {best.value:.4f}, {settings}")
    print(f"results: {out / 'hpo_results.csv'}, {out / 'hpo.png'}")
    if attrs.get("options") is None:  # a study whose workers predate best.yaml: only the settings are known
        flags = " ".join(f"--{key} {value}" for key, value in settings.items() if value is not None)
        print("retrain the best: this study does not record its workers' options, so no best.yaml. Run a worker's "
              "command with every hpo_* option removed, from the command line and from its --config, plus: " + flags)
        return {"trial": best.number, "objective": best.value, "settings": settings, "command": None}
    config = write_best_config(attrs["options"], settings, out / BEST_CONFIG)
    command = retrain_command(attrs.get("command"), config, out / "best")
    print(f"retrain the best (every option of trial {best.number} is in {config}):\n  " +
          (shlex.join(command) if command else f"your recipe with --config {config} --output_dir {out / 'best'}"))
    return {"trial": best.number, "objective": best.value, "settings": settings, "command": command,
            "config": str(config)}


BEST_CONFIG = "best.yaml"
# Options of the search itself, and of where it ran: none of them belongs in the retrain of its best trial.
NOT_RETRAINED = ("hpo_trials", "hpo_space", "hpo_storage", "hpo_study_name", "output_dir", "overwrite_output_dir",
                 "resume_from_checkpoint")


def write_best_config(options: dict[str, Any], settings: dict[str, Any], path: Path) -> Path:
    """best.yaml: every option the study's workers set (their recipe defaults, --config and command line) with
    the search's own left out and the best trial's settings over them, so `--config best.yaml` retrains exactly
    that trial, whatever the workers' YAML held (its hpo_trials would start a new search)."""
    config = {key: value for key, value in options.items() if key not in NOT_RETRAINED}
    config.update({key: value for key, value in settings.items() if value is not None})
    if "learning_rate" in settings and config.get("scale_lr_with_batch"):
        config["scale_lr_with_batch"] = False  # the trial trained with the drawn rate as it is, unscaled
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plain_value(config), sort_keys=False), encoding="utf-8")
    return path


def retrain_command(command: list[str] | None, config: Path, output_dir: Path) -> list[str] | None:
    """The workers' program (`python recipes/x.py` or `finetune-recipes run x`, as `launch_command` records it)
    with `--config best.yaml` and a new output dir; None when the workers' command is unknown."""
    if not command:
        return None
    program = command[:3] if command[0] == "finetune-recipes" else command[:2]
    return [*program, "--config", str(config), "--output_dir", str(output_dir)]
