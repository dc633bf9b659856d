"""Sampling: stratified caps keep every class, and a held-out validation split keeps whole groups apart."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args
from datasets import Dataset, DatasetDict

from common.data.options import DataArguments
from common.data.sampling import cap_splits, stratified_sample
from recipes import speech_recognition, text_classification

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stratified_sample_is_proportional_seeded_and_keeps_rare_classes():
    codes = np.array([0] * 900 + [1] * 90 + [2] * 10)
    rows = stratified_sample(codes, 100, seed=3)
    assert len(rows) == len(set(rows)) == 100 and list(np.bincount(codes[rows])) == [90, 9, 1]
    assert (stratified_sample(codes, 100, seed=3) == rows).all()
    assert not (stratified_sample(codes, 100, seed=4) == rows).all()
    splits = DatasetDict({"train": Dataset.from_dict({"labels": codes.tolist(), "x": list(range(1000))})})
    capped = cap_splits(splits, DataArguments(max_train_samples=5), seed=0, stratify_column="labels")["train"]
    assert sorted(set(capped["labels"])) == [0, 1, 2]  # each class at least once when the cap allows


@pytest.mark.slow
def test_validation_holds_out_whole_groups(tiny_bert, csv_file, tmp_path):
    """Without a validation file, --cv_group_column holds out whole documents: none is in both splits."""
    rows = [{"text": f"document {d} sentence {i}", "label": "a" if (d + i) % 2 else "b", "doc": f"doc{d}"}
            for d in range(20) for i in range(6)]
    out = tmp_path / "out"
    text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", csv_file(rows),
                              "--cv_group_column", "doc", *fast_args(out, eval_strategy="no")])
    held_out = set(pd.read_csv(out / "predictions.csv")["text"])  # the validation rows: no test file was given
    doc_of = {r["text"]: r["doc"] for r in rows}
    validation_docs = {doc_of[t] for t in held_out}
    train_docs = {r["doc"] for r in rows if r["text"] not in held_out}
    assert held_out and not validation_docs & train_docs


@pytest.mark.slow
def test_fsdd_speakers_never_span_validation_and_train(test_data, tmp_path, caplog):
    """The speech recipe holds out whole speakers of real FSDD clips with --cv_group_column speaker."""
    from common.models.tiny import tiny_wav2vec2_ctc

    meta = pd.read_csv(test_data / "fsdd/metadata.csv")
    meta = meta[meta["index"] < 8].copy()  # 6 speakers x 10 digits x 8 takes: quick to decode
    meta["file"] = [str(test_data / "fsdd" / f) for f in meta["file"]]
    manifest = tmp_path / "fsdd.csv"
    meta[["file", "transcript", "speaker"]].to_csv(manifest, index=False)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        speech_recognition.main([
            "--model_name_or_path", tiny_wav2vec2_ctc(tmp_path / "ctc"), "--train_file", str(manifest),
            "--audio_column", "file", "--text_column", "transcript", "--cv_group_column", "speaker",
            "--validation_split", "0.2", *fast_args(out, eval_strategy="no", max_steps=1),
        ])
    held_out = set(pd.read_csv(out / "predictions.tsv", sep="\t")["audio_file"])  # the validation clips
    speaker = dict(zip(meta["file"], meta["speaker"]))
    validation_speakers = {speaker[f] for f in held_out}
    train_speakers = {speaker[f] for f in meta["file"] if f not in held_out}
    assert validation_speakers and train_speakers and not validation_speakers & train_speakers
    assert "as whole groups" in caplog.text
