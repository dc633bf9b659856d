"""Hyperparameter search: the space format and its errors, a 2-trial search that retrains the best, and workers
sharing one optuna study: a real PostgreSQL server, SQLite and a journal file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, fast_args, subprocess_env

from common.core.errors import RecipeInputError
from common.strategies.hpo import DEFAULT_SPACE, hpo_summary, join_study, open_storage, parse_space
from recipes import text_classification


def test_space_defaults_and_parsing():
    assert parse_space(None) is DEFAULT_SPACE
    space = parse_space("{learning_rate: {type: loguniform, low: 1e-5, high: 1e-3}, epochs: {type: int, low: 1, high: 3}}")
    # Unquoted 1e-5 is a string to YAML 1.1; aliases resolve to TrainingArguments fields.
    assert space == {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                     "num_train_epochs": {"type": "int", "low": 1, "high": 3}}
    assert parse_space({"per_device_train_batch_size": {"type": "categorical", "choices": [8, 16]}})


@pytest.mark.parametrize("space, message", [
    ({"learning_rte": {"type": "uniform", "low": 0, "high": 1}}, "learning_rte (did you mean 'learning_rate'?)"),
    ({"weight_decay": {"type": "gaussian", "low": 0, "high": 1}}, "unknown distribution type 'gaussian'"),
    ({"weight_decay": {"type": "uniform", "low": 0.2, "high": 0.1}}, "low < high"),
    ({"learning_rate": {"type": "loguniform", "low": 0, "high": 1e-3}}, "must be positive"),
    ({"num_train_epochs": {"type": "int", "low": 1.5, "high": 3}}, "integer low and high"),
    ({"seed": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"seed": {"type": "categorical", "values": [1, 2]}}, "takes choices"),
    ("[1, 2]", "non-empty mapping"),
])
def test_space_errors_name_the_problem(space, message):
    with pytest.raises(RecipeInputError, match="hpo_space") as err:
        parse_space(space)
    assert message in str(err.value)


@pytest.mark.slow
def test_two_trials_write_results_and_retrain_the_best(tiny_bert, tmp_path, csv_file):
    from recipes import text_classification

    rows = [{"sentence": f"{'good fine' if i % 2 else 'bad poor'} movie {i}", "label": i % 2} for i in range(40)]
    train, dev = csv_file(rows[:32], "train.csv"), csv_file(rows[32:], "dev.csv")
    out = tmp_path / "run"
    # The space as a YAML mapping, beside an integer warmup_steps that the search draws fractions for.
    config = tmp_path / "hpo.yaml"
    config.write_text(
        "warmup_steps: 0\n"
        "hpo_space:\n"
        "  learning_rate: {type: loguniform, low: 1.0e-4, high: 3.0e-3}\n"
        "  per_device_train_batch_size: {type: categorical, choices: [4, 8]}\n"
        "  warmup_steps: {type: uniform, low: 0.05, high: 0.2}\n"
    )
    results = text_classification.main([
        "--config", str(config), "--model_name_or_path", tiny_bert, "--train_file", train, "--validation_file", dev,
        "--hpo_trials", "2", "--do_predict", "false", "--save_strategy", "epoch", *fast_args(out),
    ])

    table = pd.read_csv(out / "hpo_results.csv")
    assert list(table["trial"]) == [0, 1]
    assert set(table.columns) >= {"learning_rate", "per_device_train_batch_size", "warmup_steps", "objective"}
    assert table["objective"].between(0, 1).all() and (out / "hpo.png").stat().st_size > 0
    assert table["learning_rate"].nunique() == 2
    # The final model was retrained with the best trial's configuration.
    best = table.loc[table["objective"].idxmax()]
    retrained = json.loads((out / "training_args.json").read_text())
    assert retrained["learning_rate"] == pytest.approx(best["learning_rate"])
    assert retrained["per_device_train_batch_size"] == best["per_device_train_batch_size"]
    assert retrained["warmup_steps"] == pytest.approx(best["warmup_steps"])
    assert retrained["seed"] == best["seed"]
    assert (out / "config.json").is_file() and "eval_accuracy" in results
    # Trials leave no checkpoints; the retrain keeps the ones it was asked for.
    assert not (out / "hpo").exists()
    assert all(p.parent == out for p in out.rglob("checkpoint-*"))


def test_hpo_needs_a_validation_split():
    from common.dispatch import FinetuneArguments
    from common.strategies.hpo import run_hpo
    from common.training.task import Task

    task = Task("t", lambda: None, None, None, None, None, None, None, "accuracy", "text-classification")
    with pytest.raises(RecipeInputError, match="validation split"):
        run_hpo(task, None, FinetuneArguments(hpo_trials=2))


def test_trials_take_every_value_of_the_space_as_drawn(tmp_path, monkeypatch):
    """Trainer casts a trial's value to the type of the argument it replaces: with an integer warmup_steps from the
    YAML, a drawn 0.1 would train as 0 while the retrain of the best used 0.1. Trials start from arguments of a
    type that keeps every value the space can draw."""
    from transformers import TrainingArguments

    from common.dispatch import FinetuneArguments
    from common.strategies import hpo
    from common.training.task import Task

    class Started(Exception):
        pass

    def build_trainer(task, trial_args, finetune_args):
        raise Started(trial_args)

    monkeypatch.setattr(hpo, "build_trainer", build_trainer)
    space = {"warmup_steps": {"type": "categorical", "choices": [0.1, 0.2]},
             "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
             "num_train_epochs": {"type": "int", "low": 1, "high": 3}}
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=0, weight_decay=0, num_train_epochs=3)
    task = Task("t", lambda: None, None, [0], None, None, None, None, "accuracy", "text-classification")
    with pytest.raises(Started) as started:
        hpo.run_hpo(task, args, FinetuneArguments(hpo_trials=1, hpo_space=json.dumps(space)))
    trial_args = started.value.args[0]
    for name, spec in space.items():
        for value in spec.get("choices", [spec.get("low"), spec.get("high")]):
            assert type(getattr(trial_args, name))(value) == value, (name, value)


# ---- workers sharing one optuna study ------------------------------------------------------------------

SPACE = "{learning_rate: {type: loguniform, low: 1.0e-4, high: 3.0e-3}, per_device_train_batch_size: " \
        "{type: categorical, choices: [8, 16]}}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pg(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        pytest.fail("PostgreSQL is not installed: `make install` installs it (Debian package postgresql).")
    return str(found[-1])


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 for this module, stopped at its end whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))
    run_as: list[str] = []
    (root / "password").write_text("s3cret-pw\n")
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as Debian's postgres user
        run_as = ["runuser", "-u", "postgres", "--"]
        for path in (root, root / "password"):
            shutil.chown(path, "postgres")
    port = _free_port()
    subprocess.run([*run_as, _pg("initdb"), "-D", str(root / "data"), "-U", "optuna", "--pwfile",
                    str(root / "password"), "--auth=scram-sha-256", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*run_as, _pg("pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "60",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://optuna:s3cret-pw@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, _pg("pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sst2_slice(test_data, tmp_path_factory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("sst2-slice")
    pd.read_csv(test_data / "sms_spam/train.tsv", sep="\t").sample(200, random_state=0).to_csv(
        data / "train.tsv", sep="\t", index=False)
    pd.read_csv(test_data / "sms_spam/dev.tsv", sep="\t").head(80).to_csv(data / "dev.tsv", sep="\t", index=False)
    return {"train": str(data / "train.tsv"), "dev": str(data / "dev.tsv")}


def _worker_args(model: str, data: dict, storage: str, study: str, out: Path, trials: int = 2) -> list[str]:
    return ["--model_name_or_path", model, "--train_file", data["train"], "--validation_file", data["dev"],
            "--hpo_trials", str(trials), "--hpo_storage", storage, "--hpo_study_name", study, "--hpo_space", SPACE,
            "--do_predict", "false", *fast_args(out, num_train_epochs=1)]


@pytest.mark.slow
def test_two_workers_started_together_share_one_postgres_study(postgres, tiny_bert, sst2_slice, tmp_path, capsys):
    out = tmp_path / "search"
    command = [sys.executable, "recipes/text_classification.py",
               *_worker_args(tiny_bert, sst2_slice, postgres, "sst2-search", out)]
    workers = [subprocess.Popen(command, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert all("worker done: study 'sst2-search'" in log for log in logs)
    assert "s3cret-pw" not in logs[0] + logs[1]  # the URL is logged with its password masked

    best = hpo_summary(postgres, "sst2-search")
    printed = capsys.readouterr().out
    trials = pd.read_csv(out / "hpo_results.csv")
    assert len(trials) == 4 and set(trials["state"]) == {"COMPLETE"}
    assert trials["worker"].nunique() == 2 and trials.groupby("worker").size().tolist() == [2, 2]
    assert trials["seed"].nunique() == 4  # a seed per trial, recorded
    top = trials.loc[trials["objective"].idxmax()]
    assert best["trial"] == top["trial"] and best["objective"] == pytest.approx(top["objective"])
    assert "4 trials {'COMPLETE': 4}" in printed and (out / "hpo.png").stat().st_size > 0
    assert "optuna:***@127.0.0.1" in printed and "s3cret-pw" not in printed

    # The printed command is the worker's program with best.yaml: its options, without the search, with the best
    # trial's settings. It retrains.
    retrain = best["command"]
    assert retrain[:2] == ["python", "recipes/text_classification.py"] and "--config" in retrain
    config = yaml.safe_load(Path(best["config"]).read_text())
    assert config["seed"] == int(top["seed"]) and config["learning_rate"] == best["settings"]["learning_rate"]
    assert not {"hpo_storage", "hpo_trials", "hpo_study_name"} & set(config) and "s3cret-pw" not in str(config)
    done = subprocess.run([sys.executable, *retrain[1:]], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (out / "best" / "config.json").is_file() and (out / "best" / "report.html").is_file()


def test_a_wrong_password_or_a_stopped_server_fails_fast_with_the_password_masked(postgres, tmp_path):
    wrong = postgres.replace("s3cret-pw", "not-the-pw")
    down = f"postgresql://optuna:s3cret-pw@127.0.0.1:{_free_port()}/postgres"
    for url, reason in ((wrong, "password authentication failed"), (down, "Connection refused")):
        started = time.monotonic()
        with pytest.raises(RecipeInputError) as err:  # at parse time: before any data or model loads
            text_classification.main(["--hpo_trials", "2", "--hpo_storage", url, "--train_file", "missing.csv",
                                      "--output_dir", str(tmp_path / "out")])
        assert time.monotonic() - started < 30
        message = str(err.value)
        assert message.startswith("--hpo_storage postgresql://optuna:***@127.0.0.1:") and reason in message
        assert "s3cret-pw" not in message and "not-the-pw" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_workers_share_a_sqlite_or_journal_study_and_a_changed_space_is_refused(kind, tiny_bert, sst2_slice,
                                                                              tmp_path, capsys, one_thread):
    storage = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else str(tmp_path / "study.journal")
    out = tmp_path / "search"
    for _ in range(2):  # two workers, one after the other, one trial each
        text_classification.main(_worker_args(tiny_bert, sst2_slice, storage, "s", out, trials=1))
    best = hpo_summary(storage, "s")
    trials = pd.read_csv(out / "hpo_results.csv")
    assert len(trials) == 2 and set(trials["state"]) == {"COMPLETE"} and trials["seed"].nunique() == 2
    assert best["objective"] == trials["objective"].max()
    assert f"your recipe with --config {out / 'best.yaml'}" in capsys.readouterr().out  # started in-process

    other = _worker_args(tiny_bert, sst2_slice, storage, "s", out, trials=1)
    other[other.index("--hpo_space") + 1] = "{learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}}"
    with pytest.raises(RecipeInputError, match=r"searches another space .*learning_rate: study .*high': 0\.003.*"
                                               r"per_device_train_batch_size: study .*this command not searched"):
        text_classification.main(other)
    with pytest.raises(RecipeInputError, match="no study 'x' in"):
        hpo_summary(storage, "x")


def test_storage_options_are_checked_at_once(tmp_path):
    with pytest.raises(RecipeInputError, match="needs --hpo_trials"):
        text_classification.main(["--hpo_storage", "sqlite:///x.db", "--output_dir", str(tmp_path / "o")])
    with pytest.raises(RecipeInputError, match="folder .* does not exist"):
        open_storage(str(tmp_path / "no" / "such" / "study.journal"))
    with pytest.raises(RecipeInputError, match="search worker"):
        text_classification.main(["--hpo_storage", f"sqlite:///{tmp_path / 's.db'}", "--hpo_trials", "1",
                                  "--cv_folds", "3", "--output_dir", str(tmp_path / "o")])


@pytest.mark.slow
def test_the_printed_retrain_uses_best_yaml_and_trains_the_best_trials_settings(tiny_bert, sst2_slice, tmp_path,
                                                                              capsys, monkeypatch, one_thread):
    """A worker whose YAML holds hpo_trials: hpo-summary's command retrains with exactly the best trial's settings
    (best.yaml), rather than starting a fresh search that leaves another configuration in best/."""
    out, storage = tmp_path / "search", f"sqlite:///{tmp_path / 'study.db'}"
    config = tmp_path / "search.yaml"
    config.write_text(f"model_name_or_path: {tiny_bert}\ntrain_file: {sst2_slice['train']}\n"
                      f"validation_file: {sst2_slice['dev']}\nhpo_trials: 2\nhpo_space: {SPACE}\n"
                      "learning_rate: 1.0e-5\ndo_predict: false\nmax_train_samples: 64\n")
    # Started as `python recipes/text_classification.py ...`, so the study records the program to print.
    monkeypatch.setattr(sys, "argv", ["recipes/text_classification.py", "--config", str(config), "--hpo_storage",
                                      storage, "--hpo_study_name", "s", *fast_args(out)])
    text_classification.main()
    best = hpo_summary(storage, "s")
    retrain = best["command"]
    assert retrain[:2] == ["python", "recipes/text_classification.py"]
    text_classification.main(retrain[2:])

    trained = json.loads((out / "best" / "training_args.json").read_text())
    assert trained["learning_rate"] == best["settings"]["learning_rate"] != 1.0e-5
    assert trained["per_device_train_batch_size"] == best["settings"]["per_device_train_batch_size"]
    assert trained["seed"] == best["settings"]["seed"]
    assert not (out / "best" / "hpo_results.csv").exists()  # no second search
    assert f"--config {out / 'best.yaml'} --output_dir {out / 'best'}" in capsys.readouterr().out
    assert "hpo_trials" not in yaml.safe_load((out / "best.yaml").read_text())


def test_the_study_record_is_complete_once_its_space_is_visible_and_a_rival_space_is_refused(tmp_path):
    import types

    import optuna

    study = optuna.create_study(study_name="race", direction="maximize")
    written, set_attr = [], study.set_user_attr
    study.set_user_attr = lambda name, value: (written.append(name), set_attr(name, value))
    args = types.SimpleNamespace(output_dir=str(tmp_path))
    join_study(study, DEFAULT_SPACE, "eval_accuracy", "maximize", args, "memory")
    # A worker started at the same moment checks the study once it sees a space: everything else is there by then.
    assert written[-1] == "space" and {"objective", "direction"} <= set(written[:-1])
    rival = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    with pytest.raises(RecipeInputError, match="searches another space"):
        join_study(study, rival, "eval_accuracy", "maximize", args, "memory")
