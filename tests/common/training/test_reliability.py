"""Reliability under faults: crash and resume, SIGTERM, NaN/inf losses, output integrity, security.

Tiny config-built models on the sentiment demo data and a few real clothing photos, at most a few hundred
steps each. The runs that must die (kill -9, SIGTERM) are subprocesses of the recipe scripts; the rest run in-process.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_args, subprocess_env
from helpers import assert_same_run
from safetensors.torch import load_file

from common.core.config import parse_args
from common.core.errors import NonFiniteLossError, RecipeInputError, run_main
from common.models.loading import ModelArguments
from common.training.reliability import LOCK_NAME, STAGING_NAME, process_start, publish
from common.training.trainer import FinetuneTrainer
from recipes import sentiment, text_classification

DEMO = ROOT / "recipes" / "data" / "sentiment_demo"
SOURCES = [ROOT / "common", ROOT / "recipes"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _script(recipe: str, args: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, f"recipes/{recipe}.py", *args],
        cwd=ROOT,
        env=subprocess_env(**env),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _kill_after_checkpoint(process: subprocess.Popen, checkpoint: Path, log: Path) -> None:
    """SIGKILL the run as soon as `checkpoint` is complete (its trainer_state.json is written last)."""
    _wait_for((checkpoint / "trainer_state.json").is_file, process, log)
    process.kill()
    process.wait()


def _wait_for(condition, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        assert process.poll() is None, f"the run ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _assert_safetensors_only(out: Path) -> None:
    assert (out / "model.safetensors").is_file()
    for checkpoint in out.glob("checkpoint-*"):
        assert (checkpoint / "model.safetensors").is_file()
    pickled = [
        p.relative_to(out) for p in out.rglob("*") if p.suffix == ".bin" or p.name.startswith("pytorch_model")
    ]
    assert pickled == []


def _sentiment_args(model: str, out: Path, **extra) -> list[str]:
    return ["--model_name_or_path", model, *fast_args(out, **extra)]


# --- crash and resume ---------------------------------------------------------------------------------------------


def _film_rows(n: int, offset: int = 0) -> list[dict]:
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    return [{"text": f"{words[(i + offset) % 6]} film {i + offset}", "label": (i + offset) % 2} for i in range(n)]


@pytest.mark.slow
def test_resume_refuses_changed_options(tiny_bert, csv_file, tmp_path, monkeypatch, caplog):
    """A resumed run trains what its options say, or says why not. Trainer restores the optimizer and the
    learning-rate schedule from the checkpoint: resumed with another learning rate it would train on the old
    schedule while training_args.json claimed the new one, and with another train file it would mix two data sets.
    So a change is refused, naming each, unless --resume_ignore_changes, which records what it ignored."""
    train = csv_file(_film_rows(32), "train.csv")
    other_train = csv_file(_film_rows(40, offset=3), "other_train.csv")
    out = tmp_path / "run"

    def args(train_file: str, learning_rate: float, *extra: str) -> list[str]:
        # 32 rows, 10% held out: 29 train rows in batches of 8. Checkpoints at steps 2 and 4, the last one removed
        # below as if the run had been killed after step 2.
        return ["--model_name_or_path", tiny_bert, "--train_file", train_file, "--max_seq_length", "16",
                "--do_predict", "false", "--max_train_samples", "24",
                *fast_args(out, max_steps=4, save_strategy="steps", save_steps=2, learning_rate=learning_rate,
                           logging_steps=1), *extra]

    text_classification.main(args(train, 1e-3))
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(tmp_path / "later", ignore_errors=True)
    shutil.copytree(out, tmp_path / "later")  # the same checkpoint-2, resumed once more below
    checkpoint = out / "checkpoint-2"

    # Another learning rate and another train file: refused before any data is read, naming each change.
    changed = args(other_train, 5e-2, "--max_seq_length", "32", "--resume_from_checkpoint", "latest")

    def no_data(*args, **kwargs):
        raise AssertionError("the resume with changed options was not refused: it went on to load the data")

    with monkeypatch.context() as patch, pytest.raises(RecipeInputError) as refused:
        patch.setattr(text_classification, "load_splits", no_data)
        text_classification.main(changed)
    message = str(refused.value)
    assert str(checkpoint) in message
    assert "--learning_rate 0.001 -> 0.05" in message
    assert "--max_seq_length 16 -> 32" in message
    assert f"--train_file {train}" in message and other_train in message
    assert "--resume_ignore_changes" in message
    # As a script: exit code 2 and the same message, one line of error, no traceback.
    monkeypatch.setattr(sys, "argv", ["text_classification.py", *changed])
    with pytest.raises(SystemExit) as exited:
        run_main(text_classification.main)
    assert exited.value.code == 2

    # The same train file rewritten with other rows, options unchanged: the data change alone is refused.
    edited = tmp_path / "edited"
    shutil.copytree(tmp_path / "later", edited)
    shutil.copy(other_train, train)
    same_args = [a.replace(str(out), str(edited)) for a in args(train, 1e-3, "--resume_from_checkpoint", "latest")]
    with pytest.raises(RecipeInputError, match=r"--train_file .*train\.csv: different data file"):
        text_classification.main(same_args)
    shutil.copy(csv_file(_film_rows(32), "restored.csv"), train)  # the original rows again: resumes

    # With --resume_ignore_changes it proceeds, warns per change, and records what it ignored.
    with caplog.at_level(logging.WARNING, logger="common.training.reliability"):
        text_classification.main([*changed, "--resume_ignore_changes"])
    warned = [r.getMessage() for r in caplog.records if "--resume_ignore_changes" in r.getMessage()]
    assert any("--learning_rate 0.001 -> 0.05" in w for w in warned)
    assert any("--train_file" in w for w in warned) and any("--max_seq_length" in w for w in warned)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    recorded = json.loads((out / "training_args.json").read_text())
    assert recorded["learning_rate"] == 0.05  # what the command line said ...
    resumed = recorded["resumed"]  # ... and, beside it, that it did not govern the resumed steps
    assert resumed["from_checkpoint"] == str(checkpoint)
    assert any("--learning_rate 0.001 -> 0.05" in c for c in resumed["ignored_changes"])
    assert any(c.startswith(f"--train_file {train}") for c in resumed["ignored_changes"])
    assert "learning-rate scheduler state restored from the checkpoint" in resumed["note"]
    # The checkpoint's schedule did govern: the logged learning rates after step 2 are those of the 1e-3 run.
    rates = [e["learning_rate"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
             if "learning_rate" in e]
    assert rates and max(rates) <= 1e-3

    # The same options resume without a word, and the record says nothing was ignored.
    later = tmp_path / "later"
    same = [a.replace(str(out), str(later)) for a in args(train, 1e-3, "--resume_from_checkpoint", "latest")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="common.training.reliability"):
        text_classification.main(same)
    assert not [r for r in caplog.records if "resum" in r.getMessage()]
    assert json.loads((later / "trainer_state.json").read_text())["global_step"] == 4
    assert json.loads((later / "training_args.json").read_text())["resumed"]["ignored_changes"] == []

    # A checkpoint without a fingerprint (older versions wrote none) resumes, with a warning that nothing was compared.
    (later / "checkpoint-4" / "run_fingerprint.json").unlink()
    with caplog.at_level(logging.WARNING, logger="common.training.reliability"):
        text_classification.main([*same[:-2], "--learning_rate", "0.5", "--resume_from_checkpoint", "latest"])
    assert any("nothing could be compared" in r.getMessage() for r in caplog.records)
    assert json.loads((later / "training_args.json").read_text())["resumed"]["options_compared"] is False


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_sentiment(tiny_bert, tmp_path, caplog):
    # 252 demo rows (28 of 280 held out for validation) make 32 steps per epoch, a checkpoint every 10: every
    # checkpoint before the last is mid-epoch.
    args = dict(num_train_epochs=3, learning_rate=1e-3, save_strategy="steps", save_steps=10, logging_steps=5)
    reference = tmp_path / "reference"
    sentiment.main(_sentiment_args(tiny_bert, reference, **args))

    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    _kill_after_checkpoint(
        _script("sentiment", _sentiment_args(tiny_bert, killed, **args), log), killed / "checkpoint-10", log
    )
    assert not (killed / "all_results.json").exists() and not (killed / "config.json").exists()
    assert (killed / LOCK_NAME).is_file()  # kill -9 leaves the lock behind: the resumed run takes it over
    checkpoints = sorted(
        int(p.name.split("-")[1]) for p in killed.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )
    assert checkpoints and checkpoints[-1] % 32 != 0  # resumes mid-epoch: the data loader skips batches

    with caplog.at_level(logging.WARNING, logger="common.training.reliability"):
        sentiment.main([*_sentiment_args(tiny_bert, killed, **args), "--resume_from_checkpoint", "latest"])
    assert any("taking over the stale lock" in r.getMessage() for r in caplog.records)
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == 96
    assert_same_run(reference, killed)
    _assert_safetensors_only(killed)
    assert not (killed / LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_inside_the_second_epoch_equals_uninterrupted_with_length_grouped_batches(tiny_bert, tmp_path):
    """The text recipes' default sampler groups batches by length in random order. A run resumed from a
    checkpoint inside its second epoch redraws that epoch's order exactly: the resumed weights equal the
    uninterrupted run's bit for bit (an order drawn from the global generator trains some rows twice)."""
    # 32 steps per epoch: checkpoint-40 is 8 steps into the second epoch.
    args = dict(num_train_epochs=2, learning_rate=1e-3, save_strategy="steps", save_steps=40, logging_steps=5)
    reference = tmp_path / "reference"
    sentiment.main(_sentiment_args(tiny_bert, reference, **args))
    resumed = tmp_path / "resumed"
    shutil.copytree(reference / "checkpoint-40", resumed / "checkpoint-40")
    sentiment.main([*_sentiment_args(tiny_bert, resumed, **args), "--resume_from_checkpoint", "latest"])
    assert json.loads((resumed / "trainer_state.json").read_text())["global_step"] == 64
    assert_same_run(reference, resumed)


@pytest.fixture(scope="module")
def clothing(test_data, tmp_path_factory) -> dict[str, Path]:
    """Links to the first real clothing photos of 4 classes: 6 per class for training, 3 for validation."""
    dest = tmp_path_factory.mktemp("clothing")
    for split, n in {"train": 6, "validation": 3}.items():
        for name in ("dress", "hat", "pants", "shoes"):
            folder = dest / split / name
            folder.mkdir(parents=True)
            for file in sorted((test_data / "clothing_small" / split / name).iterdir())[:n]:
                (folder / file.name).symlink_to(file)
    return {split: dest / split for split in ("train", "validation")}


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_image_with_augmentation(clothing, tmp_path):
    """RandomResizedCrop, flips, affine, colour jitter and MixUp: every draw is seeded by (seed, epoch, row), so the
    resumed run augments and mixes each batch exactly as the uninterrupted one, and two persistent data loader
    workers exactly as the main process alone."""
    from common.models.tiny import tiny_vit
    from recipes import image_classification

    vit = tiny_vit(tmp_path / "vit")

    def args(out: Path, **loader) -> list[str]:
        # 24 images in batches of 4: 6 steps per epoch, a checkpoint every 4 steps.
        return fast_args(
            out,
            model_name_or_path=vit,
            train_dir=clothing["train"],
            validation_dir=clothing["validation"],
            do_predict=False,
            image_augment="standard",
            mixup_alpha=0.4,
            num_train_epochs=6,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            save_strategy="steps",
            save_steps=4,
            logging_steps=4,
            **loader,
        )

    reference = tmp_path / "reference"
    image_classification.main(args(reference, dataloader_num_workers=0))
    workers = tmp_path / "workers"
    image_classification.main(args(workers, dataloader_num_workers=2, dataloader_persistent_workers=True))
    assert_same_run(reference, workers)

    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    _kill_after_checkpoint(_script("image_classification", args(killed), log), killed / "checkpoint-4", log)
    assert not (killed / "config.json").exists()
    image_classification.main([*args(killed), "--resume_from_checkpoint", "latest"])
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == 36
    assert_same_run(reference, killed)


# --- preemption ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_checkpoints_exits_cleanly_and_resumes(tiny_bert, tmp_path):
    out = tmp_path / "preempted"
    args = _sentiment_args(tiny_bert, out, max_steps=200, logging_steps=1)
    log = tmp_path / "preempted.log"
    process = _script("sentiment", args, log, PYTHONUNBUFFERED="1")
    lock = out / LOCK_NAME

    # A second run into the same output dir while this one runs is refused, naming the PID and the lock file.
    _wait_for(lambda: lock.is_file() and lock.read_text(), process, log)
    assert json.loads(lock.read_text())["pid"] == process.pid
    with pytest.raises(
        RecipeInputError, match=rf"in use by another run: process {process.pid} .*lock file {lock}"
    ):
        sentiment.main([*args, "--overwrite_output_dir"])

    _wait_for(lambda: "{'loss'" in log.read_text(), process, log)  # the first logged training step
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143  # 128 + SIGTERM: preempted, not finished
    text = log.read_text()
    step = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert f"stopped: SIGTERM received: saved checkpoint-{step} in {out}" in text
    assert "--resume_from_checkpoint latest" in text and "Traceback" not in text
    assert 1 <= step < 200 and (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (out / "config.json").exists() and not lock.exists()

    results = sentiment.main([*args, "--resume_from_checkpoint", "latest"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 200
    assert "eval_accuracy" in results and (out / "config.json").is_file()
    _assert_safetensors_only(out)


# --- NaN / inf ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_finite_checkpoints(tiny_bert, tmp_path):
    out = tmp_path / "diverged"
    # AdamW moves every weight by about the learning rate: 1e30 overflows the activations within a few steps.
    with pytest.raises(NonFiniteLossError, match=r"training loss nan at global step (\d+)") as error:
        sentiment.main(
            _sentiment_args(
                tiny_bert, out, learning_rate=1e30, max_steps=20, save_strategy="steps", save_steps=1
            )
        )
    step = int(error.value.args[0].split("global step ")[1].split()[0])
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert step > 1 and saved == list(range(1, step))
    assert f"The last good checkpoint is {out / f'checkpoint-{step - 1}'}" in str(error.value)
    for checkpoint in saved:
        weights = load_file(out / f"checkpoint-{checkpoint}" / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())
    # No final model or results, and the lock is gone although the run failed.
    assert not {"config.json", "model.safetensors", "all_results.json", LOCK_NAME} & {
        p.name for p in out.iterdir()
    }


@pytest.mark.slow
def test_nan_policy_skip_leaves_weights_and_optimizer_untouched(tiny_bert, tmp_path, monkeypatch):
    nan_steps = {2, 4}  # optimizer steps (1-based) whose batch gets a NaN loss
    # optimizer steps done -> (weights, optimizer state) at that point
    before: dict[int, tuple[dict, dict]] = {}
    compute_loss = FinetuneTrainer.compute_loss

    def forced_nan(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if not model.training:
            return loss
        done = self.state.global_step
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        moments = {
            i: {k: v.clone() for k, v in s.items()} for i, s in self.optimizer.state_dict()["state"].items()
        }
        before[done] = (weights, moments)
        return loss * float("nan") if done + 1 in nan_steps else loss

    monkeypatch.setattr(FinetuneTrainer, "compute_loss", forced_nan)
    out = tmp_path / "skip"
    # weight_decay 0.01 (the recipe default) would move AdamW's weights even for an all-zero gradient.
    results = sentiment.main(
        [
            *_sentiment_args(
                tiny_bert, out, max_steps=6, save_strategy="steps", save_steps=5, learning_rate=1e-3
            ),
            "--nan_policy",
            "skip",
        ]
    )

    def same(a: dict, b: dict) -> bool:
        return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else same(a[k], b[k]) for k in a)

    for skipped in nan_steps:  # the weights and optimizer state after the skipped step are those before it
        (weights, moments), (weights_after, moments_after) = before[skipped - 1], before[skipped]
        assert same(weights, weights_after) and same(moments, moments_after)
    assert not same(before[2][0], before[3][0])  # a normal step does update
    assert results["train_nan_skipped_steps"] == 2
    assert json.loads((out / "all_results.json").read_text())["train_nan_skipped_steps"] == 2
    # The count travels in checkpoints, so a resumed run keeps counting.
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["NonFiniteSkips"]["attributes"]["steps"] == [2, 4]
    assert all(torch.isfinite(w).all() for w in load_file(out / "model.safetensors").values())


def test_bad_nan_policy_is_refused():
    with pytest.raises(
        RecipeInputError, match=r"--nan_policy skipp: use stop or skip \(did you mean 'skip'\?\)"
    ):
        sentiment.main(["--nan_policy", "skipp"])


# --- output integrity ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_save_failing_midway_leaves_no_model_that_looks_complete(tiny_bert, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    save_pretrained = PreTrainedModel.save_pretrained
    written = []

    def disk_full(self, folder, *args, **kwargs):
        # The weights and config.json get written, the tokenizer does not.
        save_pretrained(self, folder, *args, **kwargs)
        written.extend(p.name for p in Path(folder).iterdir())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        sentiment.main(_sentiment_args(tiny_bert, out, max_steps=2))
    assert {"config.json", "model.safetensors"} <= set(written)  # so a plain save would look complete here
    left = {p.name for p in out.iterdir()} if out.exists() else set()
    assert not {"config.json", "model.safetensors", STAGING_NAME, LOCK_NAME} & left


def test_publish_cut_short_leaves_no_config(tmp_path, monkeypatch):
    """Replacing an earlier model: the old config.json goes first and the new one comes last, so a move that
    stops halfway leaves a folder that does not load, never a mix of the two models."""
    from transformers import AutoConfig

    out, staging = tmp_path / "out", tmp_path / "out" / STAGING_NAME
    staging.mkdir(parents=True)
    for folder, version in ((out, "old"), (staging, "new")):
        for name in ("model.safetensors", "tokenizer.json"):
            (folder / name).write_text(version)
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "version": version}))
    replace, moves = os.replace, []

    def crash_on_second_move(src, dst):
        moves.append(Path(dst).name)
        if len(moves) == 2:
            raise KeyboardInterrupt  # e.g. the process being stopped
        replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_move)
    with pytest.raises(KeyboardInterrupt):
        publish(staging, out)
    monkeypatch.setattr(os, "replace", replace)
    assert "config.json" not in moves and not (out / "config.json").exists()
    with pytest.raises((OSError, ValueError)):  # the folder does not load
        AutoConfig.from_pretrained(str(out))

    publish(staging, out)  # a complete move: the new model, config.json included
    assert json.loads((out / "config.json").read_text())["version"] == "new"
    assert (out / "model.safetensors").read_text() == "new" and not staging.exists()


def test_stale_lock_is_taken_over_and_removed_and_paths_stay_paths(tiny_bert, tmp_path, monkeypatch, caplog):
    """A lock whose process is gone is taken over with a warning; a data path full of shell syntax is only a path."""
    monkeypatch.chdir(tmp_path)  # where `touch PWNED` would land if anything ran the path through a shell
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"})
    )
    data = tmp_path / "reviews $(touch PWNED); `touch PWNED` | touch PWNED.csv"
    data.write_bytes((DEMO / "train.csv").read_bytes())
    with caplog.at_level(logging.WARNING, logger="common.training.reliability"):
        results = sentiment.main(
            [
                *_sentiment_args(tiny_bert, out, max_steps=2),
                "--overwrite_output_dir",
                "--train_file",
                str(data),
                "--validation_file",
                str(DEMO / "test.csv"),
            ]
        )
    assert any(
        f"taking over the stale lock {out / LOCK_NAME}: its process {dead.pid}" in r.getMessage()
        for r in caplog.records
    )
    assert results["train_samples"] == 280 and not (out / LOCK_NAME).exists()
    assert not list(tmp_path.rglob("PWNED")) and not (ROOT / "PWNED").exists()
    assert (out / "training_args.json").is_file()
    _assert_safetensors_only(out)


def test_lock_with_a_live_pid_is_refused_before_any_data_is_read(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        out = tmp_path / "out"
        out.mkdir()
        lock = out / LOCK_NAME
        lock.write_text(
            json.dumps(
                {
                    "pid": sleeper.pid,
                    "host": socket.gethostname(),
                    "process_start": process_start(sleeper.pid),
                    "started": "now",
                }
            )
        )
        with pytest.raises(RecipeInputError, match=rf"process {sleeper.pid} .*holds the lock file {lock}"):
            sentiment.main(
                ["--output_dir", str(out), "--overwrite_output_dir", "--train_file", "missing.csv"]
            )
        assert lock.is_file()  # another run's lock is never removed
    finally:
        sleeper.kill()
        sleeper.wait()


# --- security -----------------------------------------------------------------------------------------------------


def _calls(paths: list[Path]):
    for path in paths:
        for file in sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    yield file, node


def _name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def test_trust_remote_code_is_off_by_default_and_documented():
    assert ModelArguments().trust_remote_code is False
    (model_args,) = parse_args((ModelArguments,), [])
    assert model_args.trust_remote_code is False
    passed = {"model_args.trust_remote_code", "trust_remote_code", "False"}
    forced = [
        f"{file.name}:{call.lineno}"
        for file, call in _calls(SOURCES)
        for k in call.keywords
        if k.arg == "trust_remote_code" and ast.unparse(k.value) not in passed
    ]
    assert forced == []  # every trust_remote_code= passes the user's --trust_remote_code (or False) on
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--trust_remote_code" in readme.split("## Reliability", 1)[1]


def test_yaml_is_loaded_safely(tmp_path, monkeypatch):
    from common.strategies.hpo import parse_space
    from common.toolkit.augment.image import parse_params

    monkeypatch.chdir(tmp_path)
    payload = '!!python/object/apply:os.system ["touch PWNED"]'
    config = tmp_path / "evil.yaml"
    config.write_text(f"output_dir: {payload}\n")
    for load in (
        lambda: parse_args((ModelArguments,), ["--config", str(config)]),
        lambda: parse_space(payload),
        lambda: parse_params(payload),
    ):
        with pytest.raises(RecipeInputError):
            load()
    assert not (tmp_path / "PWNED").exists()
    unsafe = [
        f"{file.name}:{call.lineno}"
        for file, call in _calls([*SOURCES, ROOT / "bench"])
        if _name(call) in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all")
    ]
    assert unsafe == []


def test_nothing_runs_through_a_shell():
    shell = [
        f"{file.name}:{call.lineno}"
        for file, call in _calls(SOURCES)
        if _name(call) in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput")
        or any(k.arg == "shell" and ast.unparse(k.value) != "False" for k in call.keywords)
    ]
    assert shell == []


def test_an_inf_gradient_under_a_finite_loss_is_caught(tiny_bert, tmp_path, monkeypatch):
    """The guard also checks the gradients: a finite loss can still overflow them, and under DDP a NaN on one
    process reaches the others only through the all-reduced gradients."""
    compute_loss = FinetuneTrainer.compute_loss

    def inf_gradient(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        if model.training and self.state.global_step == 2:  # the third step: a finite loss, an inf gradient
            weight = next(p for p in model.parameters() if p.requires_grad)
            weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
            assert torch.isfinite(loss)
        return loss

    monkeypatch.setattr(FinetuneTrainer, "compute_loss", inf_gradient)
    with pytest.raises(NonFiniteLossError, match=r"a NaN/inf gradient at global step 3"):
        sentiment.main(_sentiment_args(tiny_bert, tmp_path / "inf", max_steps=6))
