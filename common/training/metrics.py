"""Metrics computed offline with scikit-learn and scipy, plus any `evaluate` Hub metric on request."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import expit, softmax
from scipy.stats import pearsonr, spearmanr
from sklearn import metrics as skm
from transformers import EvalPrediction

from common.core.errors import RecipeInputError
from common.data.labels import MULTI, REGRESSION


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    result = {"accuracy": skm.accuracy_score(y_true, y_pred)}
    for average in ("macro", "micro"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        result.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    result["mcc"] = skm.matthews_corrcoef(y_true, y_pred)
    return {k: float(v) for k, v in result.items()}


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    result = {"subset_accuracy": skm.accuracy_score(y_true, y_pred)}
    # Macro averages leave out labels that neither occur nor are predicted in this split, as the single-label
    # metrics do (sklearn counts only the classes present there): an absent label is not a failure at 0.
    present = np.flatnonzero((y_true.sum(0) + y_pred.sum(0)) > 0) if y_true.ndim == 2 else None
    present = present if present is not None and present.size else None
    for average in ("micro", "macro"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0,
                                                         labels=present if average == "macro" else None)
        result.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
    return {k: float(v) for k, v in result.items()}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    constant = np.std(y_pred) == 0 or np.std(y_true) == 0
    return {
        "mse": float(np.mean((y_true - y_pred) ** 2)),
        "mae": float(np.mean(np.abs(y_true - y_pred))),
        "pearson": 0.0 if constant else float(pearsonr(y_true, y_pred)[0]),
        "spearman": 0.0 if constant else float(spearmanr(y_true, y_pred)[0]),
    }


def first_output(predictions) -> np.ndarray:
    """The model's first output (logits, or generated ids) in Trainer predictions, which are a tuple when the
    model returns more than one output."""
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def scores_from_logits(logits: np.ndarray, problem_type: str) -> np.ndarray:
    """Probabilities (softmax, or sigmoid for multi-label); regression outputs pass through."""
    if problem_type == REGRESSION:
        return logits.reshape(-1)
    return expit(logits) if problem_type == MULTI else softmax(logits, axis=-1)


def predictions_from_scores(scores: np.ndarray, problem_type: str, threshold: float = 0.5) -> np.ndarray:
    if problem_type == REGRESSION:
        return scores
    return (scores > threshold).astype(int) if problem_type == MULTI else scores.argmax(-1)


def score_predictions(labels: np.ndarray, scores: np.ndarray, problem_type: str) -> dict[str, float]:
    """All built-in metrics for one problem type, from probabilities (or regression outputs)."""
    predictions = predictions_from_scores(scores, problem_type)
    if problem_type == REGRESSION:
        return regression_metrics(labels.reshape(-1).astype(float), predictions)
    if problem_type == MULTI:
        return multilabel_metrics(labels.astype(int), predictions)
    result = classification_metrics(labels, predictions)
    if scores.ndim == 2 and scores.shape[1] > 5:  # top-5 says something only with more than 5 classes
        result["top5_accuracy"] = float(skm.top_k_accuracy_score(labels, scores, k=5, labels=np.arange(scores.shape[1])))
    return result


def load_hub_metric(metric_id: str):
    """An `evaluate` metric by id; only reachable with the Hub, so failure is a clear input error."""
    import evaluate  # heavy, and needed only by --metric: loaded here

    try:
        return evaluate.load(metric_id)
    except Exception as err:  # noqa: BLE001
        raise RecipeInputError(
            f"--metric {metric_id}: could not load it with evaluate.load ({err}). It needs the Hub; drop --metric "
            "to use the built-in offline metrics."
        ) from None


def build_compute_metrics(problem_type: str, hub_metric_id: str | None = None) -> Callable[[EvalPrediction], dict]:
    hub_metric = load_hub_metric(hub_metric_id) if hub_metric_id else None

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        scores = scores_from_logits(first_output(prediction.predictions), problem_type)
        result = score_predictions(np.asarray(prediction.label_ids), scores, problem_type)
        if hub_metric is not None:
            predicted = predictions_from_scores(scores, problem_type)
            extra = hub_metric.compute(predictions=predicted, references=prediction.label_ids)
            result.update({f"{hub_metric_id}_{k}" if k in result else k: v for k, v in extra.items()})
        return result

    return compute_metrics
