"""Ensembling: vote and stack arithmetic, option checks, a leak-free meta-learner, save/reload, and on real
SMS spam/ham data a soft vote no worse than its members' mean."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args
from helpers import POLARITY, POLARITY_WORDS, coloured_images, polarity

from common.core.errors import RecipeInputError
from common.data.labels import REGRESSION, SINGLE, LabelSpec
from common.dispatch import FinetuneArguments
from common.strategies.ensembling import Ensemble, check_ensemble_options, load_ensemble
from common.training.task import Task
from recipes import image_classification, predict, text_classification

NAMES = ["neg", "pos", "neutral"]


def test_soft_and_hard_vote():
    members = np.array([[[0.6, 0.3, 0.1], [0.1, 0.5, 0.4]],
                        [[0.2, 0.7, 0.1], [0.1, 0.2, 0.7]],
                        [[0.5, 0.1, 0.4], [0.1, 0.6, 0.3]]])
    soft = Ensemble("soft_vote", [], SINGLE, NAMES, "text-classification").combine(members)
    assert np.allclose(soft, members.mean(0))
    hard = Ensemble("hard_vote", [], SINGLE, NAMES, "text-classification").combine(members)
    assert hard.argmax(-1).tolist() == [0, 1]  # two votes of three win; row 1's soft vote would pick class 2
    assert soft.argmax(-1).tolist() == [0, 2]
    assert np.allclose(hard.sum(-1), 1)
    # One vote each: the tie goes to the class with the highest mean probability.
    tie = np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.8, 0.1]], [[0.3, 0.2, 0.5]]])
    assert Ensemble("hard_vote", [], SINGLE, NAMES, "").combine(tie).argmax(-1).tolist() == [1]


def test_stack_meta_learner_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    oof = np.clip(np.eye(3)[labels] * 0.5 + rng.random((200, 3)) * 0.5, 0, None)
    oof /= oof.sum(-1, keepdims=True)
    stack = Ensemble("stack", [str(tmp_path)], SINGLE, NAMES, "text-classification")
    stack.fit_stacker(oof, labels, seed=0)
    members = oof[None].repeat(2, axis=0)
    scores = stack.combine(members)
    assert np.allclose(scores.sum(-1), 1) and (scores.argmax(-1) == labels).mean() > 0.8
    (tmp_path / "config.json").write_text("{}")
    stack.save(tmp_path)
    saved = json.loads((tmp_path / "ensemble.json").read_text())
    assert saved["members"] == ["."] and set(saved["meta_learner"]) == {"classes", "coef", "intercept"}
    assert np.allclose(load_ensemble(tmp_path).combine(members), scores)


def _task(problem_type=SINGLE):
    spec = LabelSpec(problem_type, None if problem_type == REGRESSION else NAMES)
    return Task("t", lambda: None, None, None, None, None, None, None, "accuracy", "text-classification",
                label_spec=spec)


@pytest.mark.parametrize("options, problem_type, message", [
    ({"ensemble": "stack", "ensemble_models": ["a", "b"]}, SINGLE, "only cross-validation provides"),
    ({"ensemble": "soft_vote"}, SINGLE, "needs members"),
    ({"ensemble": "soft_vote", "cv_folds": 3, "ensemble_models": ["a", "b"]}, SINGLE, "not both"),
    ({"ensemble": "hard_vote", "cv_folds": 3}, REGRESSION, "use soft_vote for regression"),
    ({"ensemble": "median", "cv_folds": 3}, SINGLE, "choose one of soft_vote, hard_vote, stack"),
    ({"ensemble_models": ["a", "b"]}, SINGLE, "needs --ensemble"),
    ({"ensemble": "soft_vote", "ensemble_models": ["nowhere", "else"]}, SINGLE, "nowhere is not a saved model"),
])
def test_impossible_ensembles_are_refused(options, problem_type, message):
    with pytest.raises(RecipeInputError, match=message):
        check_ensemble_options(_task(problem_type), FinetuneArguments(**options))


WORDS = {0: "bad poor awful", 1: "good fine great"}
ROWS = [{"sentence": f"{WORDS[i % 2]} film number {i}", "label": i % 2} for i in range(42)]


@pytest.fixture(scope="module")
def stacked_cv(tiny_bert, tmp_path_factory):
    """A 3-fold CV run with a stacking ensemble, recording what each fold trained on and what the
    meta-learner was fitted on."""
    from sklearn.linear_model import LogisticRegression

    import common.strategies.cross_validation
    from recipes import text_classification

    data = tmp_path_factory.mktemp("data")
    pd.DataFrame(ROWS[:30]).to_csv(data / "train.csv", index=False)
    pd.DataFrame(ROWS[30:]).to_csv(data / "test.csv", index=False)
    out = data / "cv"
    trained_on, meta_inputs = {}, []
    train_evaluate_predict, fit = common.strategies.cross_validation.train_evaluate_predict, LogisticRegression.fit

    def spy_train(task, args, finetune_args, **kwargs):
        trained_on[Path(args.output_dir).name] = {tuple(ids) for ids in task.train_dataset["input_ids"]}
        return train_evaluate_predict(task, args, finetune_args, **kwargs)

    def spy_fit(self, x, y, *args, **kwargs):
        meta_inputs.append((np.array(x), np.array(y)))
        return fit(self, x, y, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common.strategies.cross_validation, "train_evaluate_predict", spy_train)
        patch.setattr(LogisticRegression, "fit", spy_fit)
        text_classification.main([
            "--model_name_or_path", tiny_bert, "--train_file", str(data / "train.csv"),
            "--validation_file", str(data / "test.csv"), "--test_file", str(data / "test.csv"),
            "--cv_folds", "3", "--ensemble", "stack", "--eval_strategy", "no",
            *fast_args(out, num_train_epochs=3, learning_rate=3e-3),
        ])
    return out, trained_on, meta_inputs


@pytest.mark.slow
def test_stacking_meta_learner_sees_only_out_of_fold_predictions(stacked_cv, tiny_bert):
    from transformers import AutoTokenizer

    out, trained_on, meta_inputs = stacked_cv
    assert len(meta_inputs) == 1
    features, labels = meta_inputs[0]
    assert features.shape == (30, 2) and labels.tolist() == [r["label"] for r in ROWS[:30]]

    texts = [r["sentence"] for r in ROWS[:30]]
    ids = [tuple(x) for x in AutoTokenizer.from_pretrained(tiny_bert)(texts, truncation=True, max_length=128)["input_ids"]]
    folds = sorted(trained_on)
    predicted = {f: Ensemble("soft_vote", [str(out / f)], SINGLE, ["0", "1"], "text-classification").predict_scores(texts)
                 for f in folds}
    for i, row_ids in enumerate(ids):
        unseen = [f for f in folds if row_ids not in trained_on[f]]
        assert len(unseen) == 1, f"row {i} should be held out by exactly one fold, not {unseen}"
        # The meta-learner's features for this row are the prediction of the one model that never trained on it...
        assert np.allclose(features[i], predicted[unseen[0]][i], atol=1e-5)
        # ...and distinguishably not those of the models that did.
        for f in folds:
            if f != unseen[0]:
                assert np.abs(features[i] - predicted[f][i]).max() > 1e-5


@pytest.mark.slow
def test_saved_ensemble_reloads_and_predicts_the_same(stacked_cv):
    out, _, _ = stacked_cv
    ensemble = load_ensemble(out)
    assert ensemble.method == "stack" and len(ensemble.members) == 3
    written = pd.read_csv(out / "predictions.csv")  # the ensemble's test predictions from the run
    texts = [r["sentence"] for r in ROWS[30:]]
    assert np.allclose(ensemble.predict_scores(texts), written[["score_0", "score_1"]], atol=1e-5)
    assert [p["label"] for p in ensemble.predict(texts)] == [str(x) for x in written["prediction"]]

    report = json.loads((out / "ensemble_results.json").read_text())
    assert set(report["eval"]["members"]) == {"fold_0", "fold_1", "fold_2"}
    assert {"ensemble", "member_mean"} <= set(report["eval"]) and (out / "ensemble.png").stat().st_size > 0

    # `predict` on the ensemble dir, from the test file as the run read it: the run's predictions again.
    predicted = out.parent / "predict.csv"
    assert predict(str(out), str(out.parent / "test.csv"), str(predicted)) == len(written)
    again = pd.read_csv(predicted)
    assert list(again.columns) == list(written.columns)
    assert np.allclose(again[["score_0", "score_1"]], written[["score_0", "score_1"]], atol=1e-5)

    # The run's page has a section per strategy and links each fold's own report.
    page = (out / "report.html").read_text()
    assert 'id="cv"' in page and 'id="ensemble"' in page
    assert all(f'href="fold_{k}/report.html"' in page and (out / f"fold_{k}/report.html").is_file() for k in range(3))


@pytest.mark.slow
def test_ensemble_models_combine_saved_dirs_without_training(stacked_cv, tmp_path):
    from recipes import text_classification

    out, _, _ = stacked_cv
    members = [str(out / "fold_0"), str(out / "fold_2")]
    results = text_classification.main([
        "--model_name_or_path", members[0], "--train_file", str(out.parent / "train.csv"),
        "--validation_file", str(out.parent / "test.csv"), "--do_predict", "false",
        "--ensemble", "hard_vote", "--ensemble_models", *members, *fast_args(tmp_path / "ens"),
    ])
    assert not (tmp_path / "ens" / "config.json").exists()  # nothing was trained
    report = json.loads((tmp_path / "ens" / "ensemble_results.json").read_text())
    earlier = json.loads((out / "ensemble_results.json").read_text())["eval"]["members"]
    assert report["eval"]["members"]["fold_0"] == earlier["fold_0"]  # same model, same data, same score
    assert results["ensemble_eval_accuracy"] == report["eval"]["ensemble"]["accuracy"]
    assert load_ensemble(tmp_path / "ens").members == members


@pytest.mark.slow
def test_soft_vote_of_three_folds_is_no_worse_than_its_members_on_sms_spam(minilm, test_data, tmp_path):
    from recipes import text_classification

    out = tmp_path / "sms"
    text_classification.main([
        "--model_name_or_path", minilm, "--train_file", str(test_data / "sms_spam/train.tsv"),
        "--validation_file", str(test_data / "sms_spam/dev.tsv"), "--max_train_samples", "500",
        "--do_predict", "false", "--cv_folds", "3", "--ensemble", "soft_vote",
        "--eval_strategy", "no", *fast_args(out, learning_rate=1e-4, per_device_train_batch_size=16,
                                             num_train_epochs=2, logging_steps=50),
    ])
    report = json.loads((out / "ensemble_results.json").read_text())["eval"]
    members = [m["accuracy"] for m in report["members"].values()]
    assert len(members) == 3 and min(members) > 0.85  # real learning, well above chance (0.5)
    assert report["member_mean"]["accuracy"] == pytest.approx(np.mean(members))
    # Soft voting need not beat the members' mean on every split: it must not fall below its worst member, nor
    # more than one standard error (sqrt(p(1-p)/n), 0.012 here) below the mean.
    accuracy, n = report["ensemble"]["accuracy"], len((test_data / "sms_spam/dev.tsv").read_text().splitlines()) - 1
    assert accuracy >= min(members)
    assert accuracy >= report["member_mean"]["accuracy"] - np.sqrt(accuracy * (1 - accuracy) / n)


# --- members must share the recipe's tokenizer / image processor ---------------------------------------------

def _other_tokenizer(corpus: list[str]):
    """A WordPiece tokenizer with BERT's special tokens but a vocabulary of its own."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _text_member(base: str, path, seed: int, tokenizer=None) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(POLARITY)), label2id={n: i for i, n in enumerate(POLARITY)})
    model.save_pretrained(path)
    (tokenizer or AutoTokenizer.from_pretrained(base)).save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_ensemble_refuses_members_with_different_tokenizers(tiny_bert, csv_file, tmp_path):
    """Members whose tokenizers differ from each other or from the recipe's would score misencoded inputs: refused,
    naming them, before anything is written; identical tokenizers combine."""
    rows = [{"sentence": f"{POLARITY_WORDS[polarity(i)]} film number {i}", "label": polarity(i)} for i in range(24)]
    train, dev = csv_file(rows[:16], "train.csv"), csv_file(rows[16:], "dev.csv")
    a = _text_member(tiny_bert, tmp_path / "member_a", seed=1)
    a2 = _text_member(tiny_bert, tmp_path / "member_a2", seed=2)
    b = _text_member(tiny_bert, tmp_path / "member_b", seed=3,
                     tokenizer=_other_tokenizer([r["sentence"] for r in rows] * 5))

    def ensemble(out, recipe_model: str, *members: str) -> dict:
        return text_classification.main([
            "--model_name_or_path", recipe_model, "--train_file", train, "--validation_file", dev,
            "--do_predict", "false", "--ensemble", "soft_vote", "--ensemble_models", *members, *fast_args(out),
        ])

    refused = tmp_path / "refused"
    with pytest.raises(RecipeInputError, match="different tokenizers") as err:
        ensemble(refused, a, a, b)
    assert a in str(err.value) and b in str(err.value) and "vocabulary" in str(err.value)
    assert not (refused / "ensemble_results.json").exists() and not (refused / "ensemble.json").exists()

    # Members that agree with each other but not with the recipe's tokenizer score misencoded inputs too.
    with pytest.raises(RecipeInputError, match="different tokenizer from the recipe's") as err:
        ensemble(tmp_path / "recipe", b, a, a2)
    assert a in str(err.value) and "vocabulary" in str(err.value)

    ok = tmp_path / "ok"  # identical tokenizers: combined as before
    results = ensemble(ok, a, a, a2)
    assert (ok / "ensemble_results.json").is_file() and "ensemble_eval_accuracy" in results


@pytest.mark.usefixtures("one_thread")
def test_ensemble_refuses_members_with_different_image_processors(vit, tmp_path):
    """Members whose image processors differ (here image_mean) are refused, naming both and the setting."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data = coloured_images(tmp_path, 8, blue_every=2)
    members = []
    for name, mean in [("a", None), ("b", [0.485, 0.456, 0.406])]:
        model = AutoModelForImageClassification.from_pretrained(
            vit, num_labels=2, id2label={0: "blue", 1: "red"}, label2id={"blue": 0, "red": 1})
        processor = AutoImageProcessor.from_pretrained(vit, **({"image_mean": mean} if mean else {}))
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        members.append(str(tmp_path / name))

    out = tmp_path / "refused"
    with pytest.raises(RecipeInputError, match="different image processors") as err:
        image_classification.main([
            "--model_name_or_path", members[0], "--train_file", str(data), "--validation_file", str(data),
            "--do_predict", "false", "--ensemble", "soft_vote", "--ensemble_models", *members, *fast_args(out),
        ])
    assert members[0] in str(err.value) and members[1] in str(err.value) and "image_mean" in str(err.value)
    assert not (out / "ensemble_results.json").exists()
