"""The constant baseline of every run, and the guard that flags a run no better than it (common.training.baseline)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import fast_args
from transformers import EvalPrediction
from transformers.trainer_utils import PredictionOutput

from common.data.labels import MULTI, REGRESSION, SINGLE, LabelSpec
from common.training.baseline import (
    CARD_HEADING,
    classification_baseline,
    constant_baseline,
    degenerate_reasons,
    judge_run,
    model_card_warning,
    speech_baseline,
    translation_baseline,
)
from common.training.metrics import build_compute_metrics
from common.training.task import Task
from recipes import text_classification

POSITIVE = ["great", "wonderful", "excellent", "lovely", "superb", "fantastic", "brilliant", "delightful"]
NEGATIVE = ["awful", "terrible", "horrible", "dreadful", "boring", "disgusting", "lousy", "miserable"]
NOUNS = ["movie", "film", "show", "book", "meal", "hotel"]


def _reviews(n_positive: int, n_negative: int, offset: int = 0) -> list[dict]:
    """Short texts whose one sentiment word decides the label: separable at a glance."""
    rows = []
    for i in range(n_positive + n_negative):
        positive = i < n_positive
        words = POSITIVE if positive else NEGATIVE
        k = i + offset
        rows.append({"text": f"a {words[k % len(words)]} {NOUNS[k % len(NOUNS)]}",
                     "label": "positive" if positive else "negative"})
    return rows


# ---------------------------------------------------------------------------------------------- unit


def test_majority_class_baseline_uses_the_runs_metric_functions():
    spec = LabelSpec(SINGLE, ["cat", "dog", "eel"])
    train = np.array([0, 1, 1, 1, 2, 1, 0])  # 'dog' is the majority of train
    validation = np.array([1, 0, 0, 1, 2, 0, 1, 1])  # 'dog' is 4 of these 8
    baseline = classification_baseline(spec, train, validation, build_compute_metrics(SINGLE))
    assert baseline.metric == "accuracy" and baseline.greater_is_better
    assert baseline.value == pytest.approx(0.5)
    assert baseline.description == "majority class 'dog'"
    assert baseline.metrics["mcc"] == pytest.approx(0.0)  # a constant carries no information
    assert "'dog' 4" in baseline.balance


def test_regression_baseline_is_the_mse_of_the_train_mean():
    train = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3
    validation = np.array([2.0, 4.0, 5.0])
    baseline = classification_baseline(LabelSpec(REGRESSION), train, validation, build_compute_metrics(REGRESSION))
    assert (baseline.metric, baseline.greater_is_better) == ("mse", False)
    assert baseline.value == pytest.approx((1 + 1 + 4) / 3)
    assert baseline.description == "train mean 3"


def test_multilabel_baseline_is_the_best_constant_label_set():
    spec = LabelSpec(MULTI, ["a", "b", "c"])
    train = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    validation = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    baseline = classification_baseline(spec, train, validation, build_compute_metrics(MULTI))
    # {'a'} everywhere: 2 true positives, 1 false positive, 1 false negative -> micro F1 2/3, better than
    # predicting every label (3 TP, 6 FP: 0.5).
    assert baseline.metric == "f1_micro"
    assert baseline.value == pytest.approx(2 / 3)
    assert "{'a'}" in baseline.description


def test_translation_baseline_picks_the_better_constant():
    train = ["ein Hund läuft im Park .", "ein Hund läuft im Park .", "eine Katze schläft ."]
    references = ["ein Hund läuft im Park .", "ein Hund läuft im Garten ."]
    result = translation_baseline(train, references)
    assert result["description"] == "most common train target 'ein Hund läuft im Park .'"
    import sacrebleu

    hypotheses = ["ein Hund läuft im Park ."] * 2
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert result["bleu"] > 50
    # Nothing in common with the references: the empty output (BLEU 0) is as good, and comes first.
    assert translation_baseline(["xyz"], references)["bleu"] == 0.0


def test_speech_baseline_scores_normalised_constant_transcripts():
    def normalize(text: str) -> str:
        return " ".join(text.lower().replace(",", "").split())

    train = ["Zero", "zero,", "one", "two"]
    references = ["zero", "one", "zero five"]
    result = speech_baseline(train, references, normalize)
    # "zero" for every clip: 0 + 1 substitution + 1 deletion over 4 reference words; empty output: WER 1.
    assert result["description"] == "most common train transcript 'zero'"
    assert result["wer"] == pytest.approx(2 / 4)
    empty = speech_baseline(["seven"], references, normalize)
    assert empty["description"] == "empty transcript" and empty["wer"] == pytest.approx(1.0)


def test_guard_rules():
    spec = LabelSpec(SINGLE, ["negative", "positive"])
    baseline = classification_baseline(spec, np.array([0, 1, 1]), np.array([0, 1, 1, 0]),
                                       build_compute_metrics(SINGLE))
    mixed = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert degenerate_reasons(baseline, {"eval_accuracy": 1.0}, mixed, spec) == []
    # Equal to the baseline is no better: flagged, as is a NaN metric.
    assert len(degenerate_reasons(baseline, {"eval_accuracy": 0.5}, mixed, spec)) == 1
    assert len(degenerate_reasons(baseline, {"eval_accuracy": float("nan")}, mixed, spec)) == 1
    one_class = np.tile([0.0, 1.0], (20, 1))
    # 0.55 on 20 rows is within one standard error of the constant's 0.5 (0.11), so one class still counts.
    baseline.noise = 0.11
    (reason,) = degenerate_reasons(baseline, {"eval_accuracy": 0.55}, one_class, spec, np.array([1] * 10 + [0] * 10))
    assert "'positive' for 100% of the 20 validation rows (50% of them are 'positive')" in reason
    regression = classification_baseline(LabelSpec(REGRESSION), np.array([0.0, 2.0]), np.array([0.0, 2.0]),
                                         build_compute_metrics(REGRESSION))  # mse 1
    assert degenerate_reasons(regression, {"eval_mse": 0.5, "eval_pearson": 0.1}) == []
    assert degenerate_reasons(regression, {"eval_mse": 1.2, "eval_pearson": 0.9})


def test_a_perfect_model_on_imbalanced_data_is_not_flagged():
    """On 97:3 data a model that gets every row right predicts the majority class for 97% of them: its accuracy beats
    the constant's 0.97 by more than one standard error, so the one-class rule does not apply. The majority class
    everywhere is flagged, with macro-F1 beside the constant's; so is a model within the noise of the constant."""
    spec = LabelSpec(SINGLE, ["common", "rare"])
    labels = np.array([0] * 97 + [1] * 3)
    compute = build_compute_metrics(SINGLE)
    baseline = classification_baseline(spec, labels, labels, compute)

    def scored(predicted: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        logits = np.eye(2)[predicted] * 10
        return logits, {f"eval_{k}": v for k, v in compute(EvalPrediction(logits, labels)).items()}

    perfect, metrics = scored(labels)
    assert metrics["eval_accuracy"] == metrics["eval_f1_macro"] == 1.0
    assert degenerate_reasons(baseline, metrics, perfect, spec, labels) == []
    assert baseline.value == pytest.approx(0.97) and baseline.noise == pytest.approx((0.97 * 0.03 / 100) ** 0.5)
    task = Task("t", lambda: None, None, None, None, None, None, None, "accuracy", "text-classification",
                label_spec=spec)
    results = judge_run(baseline, PredictionOutput(perfect, labels, metrics), task)
    assert results["degenerate"] is False and model_card_warning(results) is None
    assert results["baseline_eval_f1_macro"] == pytest.approx(baseline.metrics["f1_macro"])
    assert baseline.summary() == f"accuracy 0.9700, f1_macro {baseline.metrics['f1_macro']:.4f}"

    majority, metrics = scored(np.zeros(100, dtype=int))
    one_class, no_better = degenerate_reasons(baseline, metrics, majority, spec, labels)
    assert "'common' for 100% of the 100 validation rows (97% of them are 'common')" in one_class
    assert f"eval_f1_macro {metrics['eval_f1_macro']:.4f}, the constant's {baseline.metrics['f1_macro']:.4f}" in no_better
    one_rare = np.r_[np.zeros(98, dtype=int), [1, 0]]  # 0.98: better than 0.97, but by less than 0.017
    (reason,) = degenerate_reasons(baseline, scored(one_rare)[1], scored(one_rare)[0], spec, labels)
    assert "'common' for 99% of the 100 validation rows" in reason


def test_generation_that_says_the_same_thing_for_every_input_is_flagged():
    """A translation model that outputs 'Die , , , ,' for all 50 validation sentences beats the empty output's
    BLEU 0.0, yet it is flagged: one output for every input, and BLEU and chrF no better than before training. A
    split whose references repeat as much (spoken keywords) is not held against the model."""
    references = [f"Der Hund Nummer {i} läuft durch den Park ." for i in range(50)]
    task = Task("t", lambda: None, None, None, None, None, None, None, "bleu", "translation",
                baseline=lambda: translation_baseline(["xyz"], references), output_noun="translation",
                output_texts=lambda output: (list(output.predictions), references))
    baseline = constant_baseline(task)
    assert baseline is not None and baseline.value == 0.0 and baseline.tracked == ("bleu", "chrf")
    metrics = {"eval_bleu": 0.09, "eval_chrf": 0.99}
    output = PredictionOutput(["Die , , , ,"] * 50, None, metrics)
    results = judge_run(baseline, output, task, before={"before_bleu": 0.1, "before_chrf": 4.13})
    assert results["degenerate"] is True
    assert ("only 1 of the model's outputs for the 50 validation rows are distinct (of the references, 50): it "
            "gives the translation 'Die , , , ,' for 50 of them") in results["degenerate_reason"]
    assert ("eval_bleu 0.0900 and eval_chrf 0.9900 are no better than before training (0.1000 and 4.1300)"
            in results["degenerate_reason"])
    # Either alone flags the run; neither holds for varied outputs that improved.
    assert len(degenerate_reasons(baseline, metrics, outputs=(output.predictions, references))) == 1
    assert len(degenerate_reasons(baseline, metrics, before={"before_bleu": 0.1, "before_chrf": 4.13})) == 1
    assert degenerate_reasons(baseline, metrics, outputs=(references, references),
                              before={"before_bleu": 0.0, "before_chrf": 0.5}) == []
    keywords = ["yes", "no", "up"] * 20  # 5% distinct, as the references: a model that recognises them all
    assert degenerate_reasons(baseline, metrics, outputs=(keywords, keywords)) == []
    assert degenerate_reasons(baseline, metrics, outputs=(["yes"] * 60, keywords))


def test_the_model_card_warning_names_the_tasks_output():
    """The card of a degenerate speech model speaks of transcripts, in the wording its Task gives, not of classes."""
    results = {"degenerate": True, "degenerate_reason": "only 1 of the model's outputs ... are distinct"}
    card = model_card_warning(results, "transcript")
    assert "gives the same transcript for almost every input" in card and "class" not in card
    assert "gives the same class for almost every input" in model_card_warning(results)


# ---------------------------------------------------------------------------------------------- runs


def test_run_that_cannot_learn_is_flagged(tiny_bert, csv_file, tmp_path, one_thread, caplog):
    out = tmp_path / "frozen"
    # Validation is mostly the train majority class: the baseline (0.75) is high, as in a skewed real task.
    train = csv_file(_reviews(22, 18), "train.csv")
    validation = csv_file(_reviews(6, 2, offset=3), "validation.csv")
    with caplog.at_level(logging.INFO, logger="common"):
        results = text_classification.main([
            "--model_name_or_path", tiny_bert, "--train_file", train, "--validation_file", validation,
            *fast_args(out, learning_rate=0, eval_strategy="no", do_predict="false"),
        ])
    assert results["baseline_eval_accuracy"] == pytest.approx(0.75)
    assert results["baseline_description"] == "majority class 'positive'"
    assert results["eval_accuracy"] <= results["baseline_eval_accuracy"]
    assert results["degenerate"] is True
    assert "constant baseline" in results["degenerate_reason"]
    saved = json.loads((out / "all_results.json").read_text())
    for key in ("baseline_eval_accuracy", "baseline_description", "degenerate", "degenerate_reason"):
        assert saved[key] == results[key], key
    card = (out / "README.md").read_text()
    assert CARD_HEADING in card and results["degenerate_reason"] in card
    assert "constant baseline (majority class 'positive'): accuracy 0.7500" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DEGENERATE RUN" in w and "learning rate (now 0)" in w for w in warnings)


@pytest.mark.slow
def test_run_that_learns_is_not_flagged(minilm, csv_file, tmp_path, one_thread):
    out = tmp_path / "healthy"
    results = text_classification.main([
        "--model_name_or_path", minilm,
        "--train_file", csv_file(_reviews(20, 20), "train.csv"),
        "--validation_file", csv_file(_reviews(5, 5, offset=5), "validation.csv"),
        *fast_args(out, num_train_epochs=4, learning_rate=1e-4, eval_strategy="no", do_predict="false"),
    ])
    assert results["degenerate"] is False and "degenerate_reason" not in results
    assert results["baseline_eval_accuracy"] == pytest.approx(0.5)
    assert results["eval_accuracy"] > results["baseline_eval_accuracy"]
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["degenerate"] is False
    assert CARD_HEADING not in (out / "README.md").read_text()
