"""Silent wrong answers on resume (review item 17.8): a resumed run must train what its options say, or say why not.

Trainer restores the optimizer and learning-rate scheduler from the checkpoint, so a run resumed with another
learning rate trained on the old schedule while training_args.json claimed the new one, and one resumed with
another train file mixed two data sets, both with exit code 0.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys

import pytest
from conftest import fast_args

from common.core.errors import RecipeInputError, run_main
from recipes import text_classification

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(n: int, offset: int = 0) -> list[dict]:
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    return [{"text": f"{words[(i + offset) % 6]} film {i + offset}", "label": (i + offset) % 2} for i in range(n)]


def test_17_8_resume_refuses_changed_options(tiny_bert, csv_file, tmp_path, monkeypatch, caplog):
    train = csv_file(_rows(32), "train.csv")
    other_train = csv_file(_rows(40, offset=3), "other_train.csv")
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
    shutil.copy(csv_file(_rows(32), "restored.csv"), train)  # the original rows again: resumes

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
