"""Audio classification on FSDD: speaker-disjoint splits, bad labels and clips, the pipeline and predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import fast_args
from helpers import assert_class_folders_named_by_digits_are_classes
from transformers import pipeline

from common.core.errors import RecipeInputError
from common.models.tiny import tiny_wav2vec2_ctc
from recipes import audio_classification, predict


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return tiny_wav2vec2_ctc(tmp_path_factory.mktemp("tiny-wav2vec2"))


@pytest.fixture(scope="module")
def manifest(test_data, tmp_path_factory):
    """Eight clips of each digit from each of FSDD's six speakers, with absolute paths."""
    table = pd.read_csv(test_data / "fsdd/metadata.csv")
    table = table[table["index"] < 8].copy()
    table["file"] = [str(test_data / "fsdd" / f) for f in table["file"]]
    path = tmp_path_factory.mktemp("fsdd") / "clips.csv"
    table.to_csv(path, index=False)
    return path, table


@pytest.mark.slow
def test_speaker_disjoint_validation_trains_and_loads_in_a_pipeline(encoder, manifest, tmp_path, one_thread):
    path, table = manifest
    out = tmp_path / "run"
    results = audio_classification.main([
        "--model_name_or_path", encoder, "--train_file", str(path), "--audio_column", "file", "--label_column", "digit",
        "--cv_group_column", "speaker", "--validation_split", "0.3",
        *fast_args(out, num_train_epochs=4, learning_rate=1e-3, per_device_train_batch_size=16)])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05  # training loss falls
    assert results["eval_samples"] % 80 == 0  # whole speakers (80 clips each) went to validation

    predictions = pd.read_csv(out / "predictions.csv")
    validation_files = set(predictions["audio_file"])
    speakers = {s: set(table.loc[table["file"].isin(validation_files), "speaker"]) for s in ("validation",)}
    train_speakers = set(table["speaker"]) - speakers["validation"]
    assert speakers["validation"] and train_speakers and not speakers["validation"] & train_speakers
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == ["audio_file", "true_label", "predicted_label", "confidence", "loss"]

    classify = pipeline("audio-classification", model=str(out), device="cpu")
    top = classify(table["file"].iloc[0], top_k=3)
    assert len(top) == 3 and {t["label"] for t in top} <= {str(d) for d in range(10)}
    clips = tmp_path / "clips"
    clips.mkdir()
    for file in table["file"].iloc[:3]:
        (clips / file.rsplit("/", 1)[1]).symlink_to(file)
    assert predict(str(out), str(clips), str(tmp_path / "p.csv")) == 3
    assert list(pd.read_csv(tmp_path / "p.csv").columns[:3]) == ["audio_file", "prediction", "score"]


def test_a_split_column_that_puts_a_speaker_on_both_sides_is_refused(encoder, manifest, tmp_path):
    path, _ = manifest  # FSDD's own split column holds every speaker in both train and test
    with pytest.raises(RecipeInputError, match=r"--cv_group_column speaker: '\w+' is in both .* trained on"):
        audio_classification.main(["--model_name_or_path", encoder, "--train_file", str(path), "--audio_column",
                                   "file", "--label_column", "digit", "--split_column", "split",
                                   "--cv_group_column", "speaker", "--output_dir", str(tmp_path / "out")])


def test_an_empty_label_fails_naming_the_row(encoder, manifest, tmp_path):
    _, table = manifest
    bad = table.head(40).copy()
    bad["digit"] = bad["digit"].astype("object")
    bad.iloc[3, bad.columns.get_loc("digit")] = None
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(RecipeInputError, match=r"bad.csv\): 1 bad row: row 4 \(no label\)"):
        audio_classification.main(["--model_name_or_path", encoder, "--train_file", str(path), "--audio_column",
                                   "file", "--label_column", "digit", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _dry_run(monkeypatch, argv: list[str]):
    """Run the recipe up to training and return the Task it hands to `run` (nothing trains)."""
    captured = {}
    monkeypatch.setattr(audio_classification, "finetune", lambda task, args, ft: captured.update(task=task) or {})
    audio_classification.main(argv)
    return captured["task"]


def test_rows_read_equal_rows_used_plus_every_skipped_count(encoder, manifest, tmp_path, one_thread):
    """Counts of different checks (a missing label, a missing clip, a clip past --max_duration_s) add up per split
    in all_results.json: rows read = rows used + every skipped or filtered count."""
    _, table = manifest
    pool = table[table["digit"] < 2].sample(frac=1.0, random_state=0)
    train, validation = pool.iloc[:40].copy(), pool.iloc[40:52].copy()
    train["digit"] = train["digit"].astype("object")
    train.iloc[3, train.columns.get_loc("digit")] = None  # dropped by the label check
    train.iloc[5, train.columns.get_loc("file")] = str(tmp_path / "gone.wav")  # dropped by the clip check
    validation.iloc[2, validation.columns.get_loc("file")] = str(tmp_path / "gone.wav")
    train.to_csv(tmp_path / "train.csv", index=False)
    validation.to_csv(tmp_path / "validation.csv", index=False)
    durations = sorted(sf.info(f).duration for f in train["file"].iloc[6:])
    out = tmp_path / "out"
    audio_classification.main([
        "--model_name_or_path", encoder, "--train_file", str(tmp_path / "train.csv"), "--validation_file",
        str(tmp_path / "validation.csv"), "--audio_column", "file", "--label_column", "digit",
        "--skip_bad_examples", "--max_bad_fraction", "0.2", "--max_duration_s", f"{durations[-3]:.4f}",
        *fast_args(out, max_steps=1, eval_before_training="false")])
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["skipped_bad_examples_train"] == 2 and saved["duration_filtered_train"] >= 2
    for split, read, used in (("train", 40, "train_samples"), ("validation", 12, "eval_samples")):
        dropped = sum(n for key, n in saved.items()
                      if key.endswith(f"_{split}") and key.startswith(("skipped_", "duration_filtered_")))
        assert read == saved[used] + dropped, (split, saved)
    assert saved["skipped_bad_examples"] == 3


def test_source_rows_and_groups_name_the_manifest_rows_a_run_trains_on(encoder, manifest, tmp_path, monkeypatch,
                                                                      one_thread):
    """After a skipped bad label and a validation split held out by speaker, each train row's `Task.source_rows`
    entry is its manifest row (the `row` of oof_predictions.parquet) and its group and class are that row's."""
    _, table = manifest
    rows = table[table["digit"] < 2].reset_index(drop=True)
    rows["digit"] = rows["digit"].astype("object")
    rows.iloc[3, rows.columns.get_loc("digit")] = None
    rows.to_csv(tmp_path / "clips.csv", index=False)
    task = _dry_run(monkeypatch, [
        "--model_name_or_path", encoder, "--train_file", str(tmp_path / "clips.csv"), "--audio_column", "file",
        "--label_column", "digit", "--cv_group_column", "speaker", "--validation_split", "0.3",
        "--skip_bad_examples", *fast_args(tmp_path / "dry")])
    source = rows.iloc[task.source_rows]
    assert len(source) == len(task.train_dataset) == len(task.groups) < len(rows) - 1 and 3 not in task.source_rows
    assert task.groups == source["speaker"].tolist()
    assert [task.label_spec.names[i] for i in task.stratify] == [str(d) for d in source["digit"]]


@pytest.fixture(scope="module")
def whisper_encoder(tmp_path_factory) -> str:
    from common.models.tiny import tiny_whisper

    return tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"), ["zero", "one"], chunk_length=3)


def test_clips_past_the_feature_extractors_window_fail_or_are_dropped_and_counted(
        whisper_encoder, manifest, test_data, tmp_path, monkeypatch, one_thread):
    """A clip longer than the feature extractor's window (here Whisper's, 3 s) would be classified on its start
    alone: the run refuses it naming the window, --max_duration_s drops and counts it, and predict refuses it
    too (or skips it with --skip_bad_examples)."""
    _, table = manifest
    rows = table[table["digit"] < 2].sample(n=16, random_state=0)[["file", "digit"]]
    long_clip = np.concatenate([sf.read(test_data / f"fsdd/recordings/{d}_theo_8.wav")[0] for d in range(10)])
    sf.write(tmp_path / "long.wav", long_clip, 8000)
    assert len(long_clip) / 8000 > 3
    rows = pd.concat([rows, pd.DataFrame([{"file": str(tmp_path / "long.wav"), "digit": 0}])])
    rows.to_csv(tmp_path / "clips.csv", index=False)
    argv = ["--model_name_or_path", whisper_encoder, "--train_file", str(tmp_path / "clips.csv"), "--audio_column",
            "file", "--label_column", "digit", "--validation_split", "0.25"]
    with pytest.raises(RecipeInputError, match=r"longer than the model's 3 s input limit \(WhisperFeatureExtractor "
                                               r"chunk_length 3 s\).*long.wav.*--max_duration_s 3"):
        _dry_run(monkeypatch, [*argv, *fast_args(tmp_path / "dry")])
    task = _dry_run(monkeypatch, [*argv, "--max_duration_s", "3", *fast_args(tmp_path / "dry")])
    assert task.data_results["duration_filtered_train"] == 1
    assert len(task.train_dataset) + len(task.eval_dataset) == 16

    monkeypatch.undo()
    out = tmp_path / "out"
    audio_classification.main([*argv, "--max_duration_s", "3",
                               *fast_args(out, max_steps=1, eval_before_training="false")])
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "long.wav").symlink_to(tmp_path / "long.wav")
    (clips / "short.wav").symlink_to(rows["file"].iloc[0])
    with pytest.raises(RecipeInputError, match=r"row 1: \d+\.\d s, longer than the model's 3 s input limit"):
        predict(str(out), str(clips), str(tmp_path / "p.csv"))
    assert predict(str(out), str(clips), str(tmp_path / "p.csv"), skip_bad_examples=True) == 1
    assert list(pd.read_csv(tmp_path / "p.csv")["audio_file"]) == [str(clips / "short.wav")]


def test_class_folders_named_by_digits_are_classes_in_numeric_order(encoder, manifest, tmp_path, capsys, one_thread):
    """An --audio_folder whose class sub-folders are 0, 1, 2 and 10: four classes named by their folders, in
    numeric order (not 0, 1, 10, 2), both in `inspect` and in a run."""
    _, table = manifest
    folder = tmp_path / "clips"
    for name, digit in (("0", 0), ("1", 1), ("2", 2), ("10", 3)):
        (folder / name).mkdir(parents=True)
        for file in table[table["digit"] == digit]["file"].iloc[:4]:
            (folder / name / file.rsplit("/", 1)[1]).symlink_to(file)
    argv = ["--model_name_or_path", encoder, "--audio_folder", str(folder), "--validation_split", "0.25"]
    assert_class_folders_named_by_digits_are_classes("audio_classification", argv, tmp_path, capsys)
