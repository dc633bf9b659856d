"""Cross-validation: folds are disjoint and cover train (plain, stratified, grouped), and a run's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset

from common.core.errors import RecipeInputError
from common.strategies.cross_validation import cv_groups, fold_indices
from tests.conftest import fast_args

N = 60
LABELS = [0] * 40 + [1] * 15 + [2] * 5
GROUPS = [f"speaker{i % 12}" for i in range(N)]


@pytest.mark.parametrize("stratify, groups", [(None, None), (LABELS, None), (None, GROUPS), (LABELS, GROUPS)],
                         ids=["plain", "stratified", "grouped", "stratified-grouped"])
def test_folds_are_disjoint_and_cover_train(stratify, groups):
    folds = fold_indices(N, 5, seed=0, stratify=stratify, groups=groups)
    assert len(folds) == 5
    held = [set(h.tolist()) for _, h in folds]
    assert sorted(i for h in held for i in h) == list(range(N))  # every row held out exactly once
    for train, heldout in folds:
        assert set(train.tolist()) | set(heldout.tolist()) == set(range(N))
        assert not set(train.tolist()) & set(heldout.tolist())
    if groups is not None:  # a group never spans folds
        for g in set(GROUPS):
            rows = {i for i in range(N) if GROUPS[i] == g}
            assert sum(bool(rows & h) for h in held) == 1
    if stratify is not None and groups is None:  # each fold keeps the class proportions, to within one row
        for h in held:
            for label, count in zip(*np.unique(LABELS, return_counts=True)):
                assert abs(sum(LABELS[i] == label for i in h) - count / 5) <= 1


def test_folds_follow_the_seed():
    same = fold_indices(N, 3, seed=1, stratify=LABELS)
    assert all((a[1] == b[1]).all() for a, b in zip(same, fold_indices(N, 3, seed=1, stratify=LABELS)))
    assert any((a[1] != b[1]).any() for a, b in zip(same, fold_indices(N, 3, seed=2, stratify=LABELS)))


@pytest.mark.parametrize("kwargs, message", [
    ({"folds": 1}, "at least 2 folds"),
    ({"folds": 61}, "more than the 60 training rows"),
    ({"folds": 5, "groups": ["a", "b", "c"] * 20}, "3 distinct groups, fewer than --cv_folds 5"),
])
def test_impossible_folds_are_refused(kwargs, message):
    with pytest.raises(RecipeInputError, match=message):
        fold_indices(N, seed=0, **kwargs)


def test_missing_group_column_names_it():
    with pytest.raises(RecipeInputError, match="'speaker' not found in train split.*--cv_group_column"):
        cv_groups(Dataset.from_dict({"text": ["a"], "label": [0]}), "speaker", "train split")


def test_cv_run_writes_folds_results_and_oof(tiny_bert, tmp_path, csv_file):
    from recipes import text_classification

    words = {0: "bad poor awful", 1: "good fine great"}
    rows = [{"sentence": f"{words[i % 2]} film {i}", "label": i % 2, "speaker": f"s{i % 8}"} for i in range(36)]
    train, dev = csv_file(rows[:30], "train.csv"), csv_file(rows[30:], "dev.csv")
    out = tmp_path / "cv"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", train, "--validation_file", dev, "--do_predict", "false",
        "--cv_folds", "3", "--cv_group_column", "speaker", "--eval_strategy", "no", *fast_args(out),
    ])

    cv = json.loads((out / "cv_results.json").read_text())
    assert cv["k"] == 3 and [f["fold"] for f in cv["folds"]] == [0, 1, 2]
    accuracies = [f["heldout"]["accuracy"] for f in cv["folds"]]
    assert cv["heldout"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert cv["heldout"]["accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert all("accuracy" in f["eval"] for f in cv["folds"])  # each fold is scored on the validation split too
    assert results["cv_heldout_accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert (out / "cv.png").stat().st_size > 0

    oof = pd.read_parquet(out / "oof_predictions.parquet")
    assert list(oof["row"]) == list(range(30)) and list(oof["label"]) == [r["label"] for r in rows[:30]]
    assert oof["fold"].value_counts().sort_index().tolist() == [f["heldout_rows"] for f in cv["folds"]]
    assert np.allclose(oof[["score_0", "score_1"]].sum(axis=1), 1)
    speakers = [r["speaker"] for r in rows[:30]]
    assert oof.groupby(pd.Series(speakers))["fold"].nunique().eq(1).all()  # --cv_group_column respected
    for k in range(3):
        assert (out / f"fold_{k}" / "config.json").is_file()
        fold = json.loads((out / f"fold_{k}" / "all_results.json").read_text())
        assert fold["heldout_fold_accuracy"] == accuracies[k] and not any(key.startswith("test_") for key in fold)


def test_a_fold_names_its_held_out_scores_apart_from_the_test_split(tiny_bert, tmp_path, csv_file):
    """A fold's held-out rows are its test split inside the run, but its results and page name their metrics
    heldout_fold_* ("held-out fold"), not test_*: beside the run's test file, "test" would read as its score there.
    The fold job's predictions.csv holds the test file's rows."""
    from recipes import text_classification

    words = {0: "bad poor awful", 1: "good fine great"}
    rows = [{"sentence": f"{words[i % 2]} film {i}", "label": i % 2} for i in range(34)]
    data = [csv_file(part, name) for part, name in ((rows[:20], "train.csv"), (rows[20:28], "dev.csv"),
                                                     (rows[28:], "test.csv"))]
    out = tmp_path / "cv"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", data[0], "--validation_file", data[1], "--test_file",
        data[2], "--cv_folds", "2", "--cv_fold_index", "0", "--eval_strategy", "no", *fast_args(out),
    ])
    fold = out / "fold_0"
    saved = json.loads((fold / "all_results.json").read_text())
    heldout = json.loads((fold / "cv_fold.json").read_text())["record"]["heldout"]
    assert saved["heldout_fold_accuracy"] == heldout["accuracy"] == results["heldout_fold_accuracy"]
    assert not [key for key in {**saved, **results} if key.startswith("test_")]
    page = (fold / "report.html").read_text()
    assert "<th>held-out fold</th>" in page and "<th>test</th>" not in page
    assert len(pd.read_csv(fold / "predictions.csv")) == 6
