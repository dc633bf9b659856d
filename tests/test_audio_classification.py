"""Audio classification on FSDD: speaker-disjoint splits, bad labels and clips, the pipeline and predict."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import fast_args
from transformers import pipeline

from common.core.errors import RecipeInputError
from common.models.tiny import tiny_wav2vec2_ctc
from common.strategies.prediction import predict
from recipes import audio_classification


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
