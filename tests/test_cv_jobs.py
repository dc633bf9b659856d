"""Cross-validation folds as independent jobs: K `--cv_fold_index` runs plus `cv-merge` equal one --cv_folds run."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import fast_args

from common.cli import main as cli
from common.core.errors import RecipeInputError
from common.strategies.cross_validation import merge_folds
from recipes import sentiment


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
