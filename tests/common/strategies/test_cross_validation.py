"""Cross-validation: folds are disjoint and cover train (plain, stratified, grouped), a run's outputs, whose
out-of-fold rows join back to the train file, and folds as independent jobs: K `--cv_fold_index` runs plus
`cv-merge` equal one --cv_folds run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args
from helpers import POLARITY, POLARITY_WORDS, coloured_images, polarity

from common.cli import main as cli
from common.core.errors import RecipeInputError
from common.strategies.cross_validation import fold_indices, merge_folds
from recipes import image_classification, sentiment, text_classification

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_oof_predictions_join_back_to_the_train_file(tiny_bert, csv_file, tmp_path):
    """oof_predictions.parquet's `row` is the train file's data row: labels, texts and each fold's scores join
    back to the file, after validation was held out and train sampled."""
    from transformers import pipeline

    rows = [{"sentence": f"{POLARITY_WORDS[polarity(i)]} film number {i}", "label": polarity(i)} for i in range(60)]
    train = csv_file(rows, "train.csv")
    out = tmp_path / "cv"
    # No validation file: 10% of train is held out, then 40 rows are sampled; the folds cover those 40.
    text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", train, "--max_train_samples", "40",
        "--cv_folds", "3", "--eval_strategy", "no", *fast_args(out),
    ])
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    cv = json.loads((out / "cv_results.json").read_text())
    file = pd.read_csv(train, keep_default_na=False)  # data row r of the file is file.iloc[r]

    assert len(oof) == 40 and oof["row"].is_unique and oof["row"].between(0, 59).all()
    joined = file.iloc[oof["row"]]
    assert oof["label"].tolist() == joined["label"].tolist()  # labels, as names, of the rows they claim to be
    assert oof["label_id"].tolist() == [POLARITY.index(n) for n in oof["label"]]
    assert set(oof["prediction"]) <= set(POLARITY)
    assert (oof["label"] == oof["prediction"]).mean() == pytest.approx(cv["oof"]["accuracy"], abs=1e-9)
    # The texts too: each fold's model, run on the file's text at `row`, gives the scores written for that row.
    for k in range(3):
        held = oof[oof["fold"] == k]
        classify = pipeline("text-classification", model=str(out / f"fold_{k}"), device="cpu")
        texts = file.iloc[held["row"]]["sentence"].tolist()
        scores = [{e["label"]: e["score"] for e in row} for row in classify(texts, top_k=None)]
        expected = np.array([[row[n] for n in POLARITY] for row in scores])
        assert np.allclose(held[[f"score_{n}" for n in POLARITY]].to_numpy(), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_image_oof_rows_are_rows_of_the_csv(vit, tmp_path):
    """The image recipe drops unreadable images after holding out validation: `row` still names the csv's row."""
    train = coloured_images(tmp_path, 24, blue_every=3, label="kind", unreadable=2)  # skipped: --skip_bad_examples
    records = pd.read_csv(train).to_dict("records")
    out = tmp_path / "cv"
    image_classification.main([
        "--model_name_or_path", vit, "--train_file", str(train), "--label_column", "kind", "--skip_bad_examples",
        "--cv_folds", "2", "--eval_strategy", "no", *fast_args(out),
    ])
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    cv = json.loads((out / "cv_results.json").read_text())
    # 24 rows: 3 held out for validation (rows 13, 14 and 18 with --seed 0), then unreadable row 2 dropped.
    assert len(oof) == 20 and oof["row"].is_unique and not {2, 13, 14, 18} & set(oof["row"])
    assert oof["label"].tolist() == [records[r]["kind"] for r in oof["row"]]
    assert (oof["label"] == oof["prediction"]).mean() == pytest.approx(cv["oof"]["accuracy"], abs=1e-9)


# ---- folds as independent jobs, merged by cv-merge -------------------------------------------------------

def _numbers(value, prefix=""):
    """Every number in a JSON document, by its path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(item, f"{prefix}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _numbers(item, f"{prefix}/{i}").items()}
    return {prefix: value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


@pytest.fixture(scope="module")
def sst2_600(test_data, tmp_path_factory):
    data = tmp_path_factory.mktemp("sst2-600")
    train = pd.read_csv(test_data / "sms_spam/train.tsv", sep="\t").sample(600, random_state=0)
    train.to_csv(data / "train.tsv", sep="\t", index=False)
    dev = pd.read_csv(test_data / "sms_spam/dev.tsv", sep="\t").head(100)
    dev.to_csv(data / "dev.tsv", sep="\t", index=False)
    dev.head(40).to_csv(data / "test.tsv", sep="\t", index=False)
    return data


def _args(model, data, out, *extra):
    # Seeded and single-threaded, every fold trains the same in one job as in K (`one_thread`).
    return ["--model_name_or_path", model, "--train_file", str(data / "train.tsv"), "--validation_file",
            str(data / "dev.tsv"), "--test_file", str(data / "test.tsv"), "--cv_folds", "3", *extra,
            *fast_args(out, num_train_epochs=1, learning_rate=2e-3, per_device_train_batch_size=16,
                       eval_strategy="no")]


@pytest.mark.slow
def test_three_fold_jobs_and_cv_merge_equal_one_cross_validation_run(tiny_bert, sst2_600, tmp_path, one_thread):
    single, jobs = tmp_path / "single", tmp_path / "jobs"
    sentiment.main(_args(tiny_bert, sst2_600, single, "--ensemble", "soft_vote"))
    for k in (2, 0, 1):  # any order, as independent jobs finish
        sentiment.main(_args(tiny_bert, sst2_600, jobs, "--cv_fold_index", str(k)))
        assert (jobs / f"fold_{k}" / "cv_fold.json").is_file() and (jobs / f"fold_{k}" / "config.json").is_file()
    assert not (jobs / "cv_results.json").exists()
    cli(["cv-merge", str(jobs), "--ensemble", "soft_vote"])

    for name in ("cv_results.json", "ensemble_results.json"):
        one, merged = (_numbers(json.loads((d / name).read_text())) for d in (single, jobs))
        assert one.keys() == merged.keys() and len(one) > 20, name
        assert all(merged[k] == pytest.approx(v, abs=1e-6) for k, v in one.items()), name
    one, merged = (pd.read_parquet(d / "oof_predictions.parquet") for d in (single, jobs))
    assert len(one) == 600 and list(one.columns) == list(merged.columns)
    pd.testing.assert_frame_equal(one, merged, atol=1e-6)
    one, merged = (pd.read_csv(d / "predictions.csv") for d in (single, jobs))
    pd.testing.assert_frame_equal(one, merged, atol=1e-6)
    assert len(merged) == 40 and (jobs / "cv.png").is_file() and (jobs / "ensemble.json").is_file()
    # The merged ensemble predicts new texts cut as the folds' own predictions were (--max_seq_length).
    one, merged = (json.loads((d / "ensemble.json").read_text())["pipeline_call_kwargs"] for d in (single, jobs))
    assert one == merged == {"truncation": True, "max_length": 128}
    page = (jobs / "report.html").read_text()
    assert 'id="cv"' in page and 'id="ensemble"' in page and 'href="fold_2/report.html"' in page

    # cv-merge names a missing fold, and a fold trained with other options.
    shutil.rmtree(jobs / "fold_1")
    with pytest.raises(RecipeInputError, match=r"fold_1 of 3 missing .*--cv_fold_index 1"):
        merge_folds(str(jobs))
    sentiment.main(_args(tiny_bert, sst2_600, jobs, "--cv_fold_index", "1", "--weight_decay", "0.05"))
    with pytest.raises(RecipeInputError, match=r"fold_1 was trained with other data or options .*weight_decay"):
        merge_folds(str(jobs))


@pytest.mark.parametrize("extra, message", [
    (["--cv_fold_index", "3"], "folds are numbered 0 to 2"),
    (["--cv_fold_index", "0", "--ensemble", "stack"], "cv-merge OUTPUT_DIR --ensemble stack"),
])
def test_bad_fold_job_options_fail_at_once(extra, message, tmp_path):
    with pytest.raises(RecipeInputError, match=message):
        sentiment.main(["--cv_folds", "3", *extra, "--output_dir", str(tmp_path / "out")])
    with pytest.raises(RecipeInputError, match="needs --cv_folds"):
        sentiment.main(["--cv_fold_index", "0", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_merge_without_folds_says_how_to_make_them(tmp_path):
    with pytest.raises(RecipeInputError, match="no fold_\\*/cv_fold.json: train each fold first"):
        merge_folds(str(tmp_path))
