"""Label issues from out-of-fold predictions: flipped labels rank high where the classes are easy to separate,
each flagged row names its line of the train file, validation rows are never judged, and --drop_label_issues
trains with and without the flagged rows on the same validation split."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args

from common import cli
from common.core.errors import RecipeInputError
from common.strategies.label_issues import drop_count, find_label_issues
from recipes import text_classification

pytestmark = pytest.mark.usefixtures("one_thread")

SIGNAL = {"sports": ["goal", "match", "team", "coach"], "weather": ["rain", "sunny", "storm", "wind"]}
FILLER = ["the", "a", "today", "really", "we", "saw", "it", "was", "and", "then"]


def texts(rng: random.Random, name: str, count: int) -> list[str]:
    return [" ".join(rng.sample(SIGNAL[name], 2) + rng.sample(FILLER, rng.randint(1, 5))) for _ in range(count)]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """160 train texts whose class shows in its words, 12 of their labels flipped (recorded), a header and a
    blank line so file rows and data rows differ, 20% held out for validation; 4-fold CV with label issues,
    then the train split again with and without every flagged row."""
    from common.models.tiny import tiny_bert

    root = tmp_path_factory.mktemp("noisy")
    rng = random.Random(0)
    rows = [{"text": t, "label": name} for name in SIGNAL for t in texts(rng, name, 80)]
    rng.shuffle(rows)
    flipped = set(rng.sample(range(len(rows)), 12))
    for i in flipped:
        rows[i]["label"] = "weather" if rows[i]["label"] == "sports" else "sports"
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    out = root / "run"
    text_classification.main([
        "--model_name_or_path", tiny_bert(root / "bert"), "--train_file", str(root / "train.csv"),
        "--validation_split", "0.2", "--cv_folds", "4", "--find_label_issues", "true", "--drop_label_issues", "all",
        "--eval_strategy", "no",
        *fast_args(out, num_train_epochs=6, learning_rate=3e-3, per_device_train_batch_size=16),
    ])
    return root, out, rows, flipped


def test_flipped_labels_rank_first_where_the_classes_are_easy_to_separate(noisy_run):
    root, out, rows, flipped = noisy_run
    issues = pd.read_csv(out / "label_issues.csv")
    assert list(issues.columns) == ["rank", "row", "text", "given_label", "suggested_label", "label_quality"]
    assert issues["rank"].tolist() == list(range(1, len(issues) + 1))
    assert issues["label_quality"].is_monotonic_increasing
    judged = set(pd.read_parquet(out / "oof_predictions.parquet")["row"])
    flipped_in_train = flipped & judged
    top = set(issues["row"][:len(flipped_in_train)])
    assert len(top & flipped_in_train) >= 0.7 * len(flipped_in_train), (sorted(top), sorted(flipped_in_train))
    assert (issues["suggested_label"] != issues["given_label"]).all()


def test_each_flagged_row_is_its_line_of_the_train_file_and_validation_is_never_judged(noisy_run):
    root, out, rows, flipped = noisy_run
    issues = pd.read_csv(out / "label_issues.csv")
    train = pd.read_csv(root / "train.csv")
    for issue in issues.itertuples():
        assert train["text"][issue.row] == issue.text and train["label"][issue.row] == issue.given_label
    judged = set(pd.read_parquet(out / "oof_predictions.parquet")["row"])
    assert len(judged) == 128 and set(issues["row"]) <= judged  # the 32 validation rows are never judged
    validation = set(range(len(rows))) - judged
    assert not validation & set(issues["row"])


def test_dropping_the_flagged_rows_trains_both_runs_on_the_same_validation_split(noisy_run):
    root, out, rows, flipped = noisy_run
    results = json.loads((out / "label_issues_results.json").read_text())
    issues = pd.read_csv(out / "label_issues.csv")
    assert results["dropped_rows"] == issues["row"].tolist() and results["flagged"] == len(issues)
    runs = results["runs"]
    assert runs["all_rows"]["train_rows"] == 128
    assert runs["cleaned"]["train_rows"] == 128 - len(issues)
    assert runs["all_rows"]["eval_samples"] == runs["cleaned"]["eval_samples"] == 32
    for name in ("all_rows", "cleaned"):  # complete runs: predict and export read their run_config.json
        assert (out / name / "config.json").is_file()
        assert json.loads((out / name / "run_config.json").read_text())["options"]["cv_folds"] == 4
    page = (out / "report.html").read_text()
    assert "Label issues" in page and "label_issues.csv" in page


def test_the_command_rewrites_the_list_from_a_finished_cv_run(noisy_run, capsys):
    root, out, rows, flipped = noisy_run
    before = (out / "label_issues.csv").read_text()
    (out / "label_issues.csv").unlink()
    cli.main(["label-issues", str(out), "--show", "3"])
    assert (out / "label_issues.csv").read_text() == before
    assert "given_label" in capsys.readouterr().out


def test_drop_counts_and_misuse_fail_clearly(tmp_path):
    assert drop_count("all", 7, 100) == 7 and drop_count("5", 7, 100) == 5 and drop_count("0.03", 7, 100) == 3
    assert drop_count("50", 7, 100) == 7
    for bad in ("0", "-1", "1.5", "some"):
        with pytest.raises(RecipeInputError, match="give a number of rows"):
            drop_count(bad, 7, 100)
    with pytest.raises(RecipeInputError, match="need --cv_folds K"):
        text_classification.main(["--train_file", "x.csv", "--find_label_issues", "true",
                                  "--output_dir", str(tmp_path / "o")])
    sets = pd.DataFrame({"row": [0, 1], "label": [["a"], ["b"]], "label_id": [[0], [1]], "score_a": [0.9, 0.1],
                         "score_b": [0.2, 0.8]})
    sets.to_parquet(tmp_path / "oof_predictions.parquet")
    with pytest.raises(RecipeInputError, match="not single-label classification"):
        find_label_issues(tmp_path)
    with pytest.raises(RecipeInputError, match="holds no oof_predictions.parquet"):
        find_label_issues(tmp_path / "missing")
    assert not (tmp_path / "o").exists()
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), ["oof_predictions.parquet"])


def test_labels_that_are_not_single_classes_are_refused_before_training(tmp_path):
    from common.models.tiny import tiny_bert

    rows = [{"text": f"review number {i}", "label": i / 10} for i in range(20)]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "run"
    with pytest.raises(RecipeInputError, match="labels are regression; label issues are found among classes"):
        text_classification.main(["--model_name_or_path", tiny_bert(tmp_path / "bert"), "--train_file",
                                  str(tmp_path / "train.csv"), "--cv_folds", "2", "--find_label_issues", "true",
                                  *fast_args(out)])
    assert not any(out.glob("fold_*")) and not (out / "config.json").exists()
