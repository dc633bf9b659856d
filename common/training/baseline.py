"""The constant baseline of a run, and the guard that flags a run no better than it.

The worst way a fine-tuning run fails is without an error: the model collapses onto one class (or never moves
from its initialisation) and still reports a plausible accuracy, which is the majority baseline. So every run
scores, on its validation split and with its own metric functions, the best output that ignores the input:

- single-label classification: the majority class of train, for every row (main metric: accuracy);
- multi-label: a constant label set from train (most frequent set, per-label majority, every label);
- regression: the train mean, compared on mse (Pearson, the main metric, is undefined for a constant);
- translation / speech recognition: the empty output and the most common train target / transcript, built by
  the recipe with `translation_baseline` / `speech_baseline` and handed to the run as `Task.baseline`.

After evaluation, `judge_run` flags the run as degenerate when its metric is no better than the constant's; when
the model predicts one class for at least `DOMINANT_SHARE` of the validation rows, unless its metric beats the
constant's by more than one standard error (on imbalanced data a good model predicts the majority class almost
everywhere); for generation (`Task.output_texts`), when fewer than `DISTINCT_SHARE` of its outputs are distinct
and the references are more varied; and when every metric of a recipe's own baseline (BLEU and chrF, WER and CER)
is no better than before training. The rules are deliberately blunt: a flag is a prompt to look, not a verdict.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sacrebleu
from transformers import EvalPrediction
from transformers.trainer_utils import PredictionOutput

from common.data.arrow import column_array
from common.data.labels import MULTI, REGRESSION, SINGLE, LabelSpec
from common.training.metrics import first_output, score_predictions, scores_from_logits
from common.training.task import Task

logger = logging.getLogger(__name__)

DOMINANT_SHARE = 0.95  # one class predicted for at least this share of validation rows: collapsed onto it
DISTINCT_SHARE = 0.10  # generation: fewer distinct outputs than this share of validation rows: one output for all
# Shown beside the main metric: on imbalanced data accuracy hides a model that ignores the small classes; macro-F1 not.
BESIDE = ("f1_macro",)
CONFIDENT = 10.0  # logit of a constant predictor: its softmax/sigmoid is 0 or 1 to float precision
CARD_HEADING = "## WARNING: degenerate run"


@dataclass
class Baseline:
    """The best constant predictor on the validation split, and the metric the run is compared on."""

    metric: str  # the main metric, except mse for regression
    value: float
    greater_is_better: bool
    description: str  # what the constant predicts, e.g. "majority class 'positive'"
    metrics: dict[str, float]  # every metric of that constant, as the run's compute_metrics returns them
    balance: str = ""  # class counts of train, quoted in the warning: imbalance is a usual cause of collapse
    noise: float = 0.0  # one standard error of `value` on this eval split, where known
    # Metrics that training must improve (a recipe's own baseline: BLEU and chrF, WER and CER): a run with every one
    # of them no better than before training is flagged.
    tracked: tuple[str, ...] = ()

    def beaten_by(self, value: float) -> bool:
        return value > self.value if self.greater_is_better else value < self.value

    def clearly_beaten_by(self, value: float) -> bool:
        """Better than the constant by more than the noise of the eval split."""
        return self.beaten_by(value) and abs(value - self.value) > self.noise

    def summary(self) -> str:
        """The main metric, and macro-F1 where the baseline has it, e.g. 'accuracy 0.9700, f1_macro 0.4924'."""
        shown = [(self.metric, self.value), *((m, self.metrics[m]) for m in BESIDE if m in self.metrics)]
        return ", ".join(f"{name} {value:.4f}" for name, value in shown)


def _labels(dataset) -> np.ndarray:
    """The `labels` column as NumPy: class ids, floats, or one 0/1 row per example (multi-label)."""
    # Read from the Arrow table, as stored: no set_transform decodes an image or clip, no Python row loop.
    values = column_array(dataset, "labels")
    if pa.types.is_list(values.type):
        return pc.list_flatten(values).to_numpy(zero_copy_only=False).reshape(len(values), -1)
    return values.to_numpy(zero_copy_only=False)


def _constant_logits(rows: int, columns: np.ndarray) -> np.ndarray:
    """Logits that put probability ~1 on `columns` (a 0/1 vector per class) for every row."""
    row = np.where(np.asarray(columns) > 0, CONFIDENT, -CONFIDENT).astype(np.float32)
    return np.tile(row, (rows, 1))


def _score(compute_metrics: Callable[[EvalPrediction], dict] | None, problem_type: str, logits: np.ndarray,
           labels: np.ndarray) -> dict[str, float]:
    if compute_metrics is None:  # a recipe without metrics still gets the built-in ones of its problem type
        return score_predictions(labels, scores_from_logits(logits, problem_type), problem_type)
    return {k: float(v) for k, v in compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)).items()
            if isinstance(v, (int, float))}


def _name_set(names: Sequence[str], row: np.ndarray) -> str:
    return "{" + ", ".join(repr(n) for n, on in zip(names, row) if on) + "}"


def classification_baseline(spec: LabelSpec, train_labels: np.ndarray, eval_labels: np.ndarray,
                            compute_metrics: Callable[[EvalPrediction], dict] | None = None) -> Baseline:
    """The constant predictor fitted on train labels, scored on eval labels by the run's own compute_metrics.

    Labels are as `encode_labels` writes them: class ids (single-label), 0/1 rows (multi-label) or floats.
    """
    train_labels, eval_labels = np.asarray(train_labels), np.asarray(eval_labels)
    rows = len(eval_labels)
    if spec.problem_type == REGRESSION:
        mean = float(np.mean(train_labels.astype(np.float64)))
        logits = np.full((rows, 1), mean, dtype=np.float32)
        metrics = _score(compute_metrics, REGRESSION, logits, eval_labels)
        return Baseline("mse", metrics["mse"], False, f"train mean {mean:.4g}", metrics)
    names = spec.names or [str(i) for i in range(spec.num_labels)]
    if spec.problem_type == SINGLE:
        counts = np.bincount(train_labels.astype(int), minlength=len(names))
        majority = int(counts.argmax())
        metrics = _score(compute_metrics, SINGLE, _constant_logits(rows, np.eye(len(names))[majority]), eval_labels)
        balance = ", ".join(f"{names[i]!r} {c}" for i, c in enumerate(counts))
        accuracy = metrics["accuracy"]  # the binomial standard error of an accuracy on `rows` rows
        return Baseline(spec.main_metric, metrics[spec.main_metric], True, f"majority class {names[majority]!r}",
                        metrics, balance=f"train rows per class: {balance}",
                        noise=math.sqrt(accuracy * (1 - accuracy) / rows) if rows else 0.0)
    if spec.problem_type != MULTI:
        raise ValueError(f"no constant baseline for problem type {spec.problem_type}")
    hot = (train_labels > 0.5).astype(int)
    top_set = np.asarray(Counter(map(tuple, hot)).most_common(1)[0][0])
    majority = (hot.mean(0) > 0.5).astype(int)
    # F1 rewards different constants on different data (sparse labels: predicting every label can win), so
    # the baseline is the best of the usual ones rather than one fixed choice.
    candidates = {
        f"most frequent train label set {_name_set(names, top_set)}": top_set,
        f"per-label majority {_name_set(names, majority)}": majority,
        "every label": np.ones(len(names), dtype=int),
    }
    def score(row: np.ndarray) -> dict[str, float]:
        return _score(compute_metrics, MULTI, _constant_logits(rows, row), eval_labels)

    best = _best_constant(candidates, score, spec.main_metric, greater_is_better=True)
    description = str(best.pop("description"))
    return Baseline(spec.main_metric, best[spec.main_metric], True, description, best)


def _best_constant(candidates: dict[str, Any], score: Callable[[Any], dict[str, float]], metric: str,
                   greater_is_better: bool) -> dict[str, float | str]:
    """The metrics of the best-scoring candidate (the first, on a tie) plus its "description"."""
    best: dict[str, float | str] | None = None
    for description, candidate in candidates.items():
        metrics = score(candidate)
        better = best is None or (metrics[metric] > best[metric] if greater_is_better else metrics[metric] < best[metric])
        if better:
            best = {**metrics, "description": description}
    return best


def _most_common(texts: Sequence[str]) -> str | None:
    counts = Counter(t for t in texts if t.strip())
    return counts.most_common(1)[0][0] if counts else None


def _quoted(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def translation_baseline(train_targets: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """BLEU and chrF (as `common.training.seq2seq.generation_metrics`: corpus sacreBLEU, 13a) of the better constant
    output, by BLEU: the empty translation, or the most common train target, for every validation source.

    Returns the metrics plus "description"; a recipe passes `partial(translation_baseline, ...)` as
    `Task.baseline`.
    """

    references = list(references)

    def score(hypothesis: str) -> dict[str, float]:
        hypotheses = [hypothesis] * len(references)
        return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
                "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score)}

    candidates = {"empty translation": ""}
    common = _most_common(train_targets)
    if common is not None:
        candidates[f"most common train target {_quoted(common)}"] = common
    return _best_constant(candidates, score, "bleu", greater_is_better=True)


def speech_baseline(train_transcripts: Sequence[str], references: Sequence[str],
                    normalize: Callable[[str], str] | None = None) -> dict[str, float | str]:
    """WER and CER (as `common.training.speech.SpeechMetrics`: jiwer, on normalised text) of the better constant
    transcript, by WER: the empty one, or the most common train transcript, for every validation clip.

    `normalize` should be the recipe's own text normalisation, so the numbers match the run's eval_wer.
    Returns the metrics plus "description"; a recipe passes `partial(speech_baseline, ...)` as `Task.baseline`.
    """
    import jiwer  # the audio extra: only speech runs have it

    normalize = normalize or (lambda text: text)
    # jiwer rejects empty references; SpeechMetrics would fail on them too, so scoring stops at the same place.
    references = [normalize(r) for r in references]

    def score(hypothesis: str) -> dict[str, float]:
        hypotheses = [hypothesis] * len(references)
        return {"wer": float(jiwer.wer(references, hypotheses)), "cer": float(jiwer.cer(references, hypotheses))}

    candidates = {"empty transcript": ""}
    common = _most_common([normalize(t) for t in train_transcripts])
    if common is not None:
        candidates[f"most common train transcript {_quoted(common)}"] = common
    return _best_constant(candidates, score, "wer", greater_is_better=False)


def constant_baseline(task: Task) -> Baseline | None:
    """The task's baseline on its eval split: the recipe's `Task.baseline` when it sets one, else the generic
    one for classification and regression; None when there is nothing to fit or score it on.

    Never raises: the baseline is a check on the run, and a failure to compute it must not end the run.
    """
    try:
        if task.baseline is not None:
            metrics = dict(task.baseline())
            description = str(metrics.pop("description", "constant output"))
            if task.main_metric not in metrics:
                logger.warning("constant baseline has no %s (only %s): not compared", task.main_metric, list(metrics))
                return None
            return Baseline(task.main_metric, float(metrics[task.main_metric]), task.greater_is_better, description,
                            {k: float(v) for k, v in metrics.items()}, tracked=tuple(metrics))
        spec = task.label_spec
        if spec is None or task.train_dataset is None or task.eval_dataset is None or len(task.eval_dataset) == 0:
            return None
        if "labels" not in task.train_dataset.column_names or "labels" not in task.eval_dataset.column_names:
            return None
        return classification_baseline(spec, _labels(task.train_dataset), _labels(task.eval_dataset),
                                       task.compute_metrics)
    except Exception as err:  # noqa: BLE001 - see the docstring
        logger.warning("constant baseline not computed: %s: %s", type(err).__name__, err)
        return None


def degenerate_reasons(baseline: Baseline, eval_metrics: dict[str, float], predictions: Any = None,
                       spec: LabelSpec | None = None, eval_labels: np.ndarray | None = None, *,
                       before: dict[str, Any] | None = None, outputs: tuple[list[str], list[str]] | None = None,
                       noun: str = "class") -> list[str]:
    """Why the run is degenerate, or [] when it is not:

    (a) the compared metric no better than the constant's;
    (b) single-label classification predicting one class for at least DOMINANT_SHARE of the rows, unless the
        metric beats the constant's by more than its standard error;
    (c) generation, with `outputs` (the model's texts, the references): fewer than DISTINCT_SHARE of the outputs
        distinct, and fewer than the references hold;
    (d) every `baseline.tracked` metric no better than before training (`before` holds the before_* metrics).
    `noun` names one output of the model ("class", "transcript") in the reasons.
    """
    reasons = []
    value = eval_metrics.get(f"eval_{baseline.metric}")
    value = None if value is None else float(value)
    clearly_better = value is not None and math.isfinite(value) and baseline.clearly_beaten_by(value)
    if spec is not None and spec.problem_type == SINGLE and predictions is not None and not clearly_better:
        predicted = first_output(predictions).argmax(-1)
        if predicted.size:
            counts = np.bincount(predicted, minlength=spec.num_labels)
            top = int(counts.argmax())
            share = counts[top] / predicted.size
            if share >= DOMINANT_SHARE:
                name = spec.names[top] if spec.names else str(top)
                reason = f"the model predicts {name!r} for {share:.0%} of the {predicted.size} validation rows"
                if eval_labels is not None and len(eval_labels):
                    # Said outright, so a validation split that really is one class is recognised as such.
                    reason += f" ({np.mean(np.asarray(eval_labels) == top):.0%} of them are {name!r})"
                reasons.append(reason)
    if outputs is not None:
        reasons += _repeated_output(*outputs, noun)
    if value is not None and (not math.isfinite(value) or not baseline.beaten_by(value)):
        direction = "higher" if baseline.greater_is_better else "lower"
        beside = "".join(f"; eval_{m} {float(eval_metrics[f'eval_{m}']):.4f}, the constant's {baseline.metrics[m]:.4f}"
                         for m in BESIDE if m in baseline.metrics and f"eval_{m}" in eval_metrics)
        reasons.append(f"eval_{baseline.metric} {value:.4f} is no better ({direction} is better) than the "
                       f"constant baseline's {baseline.value:.4f} ({baseline.description}){beside}")
    if before is not None:
        reasons += _no_better_than_before(baseline, eval_metrics, before)
    return reasons


def _repeated_output(texts: Sequence[str], references: Sequence[str], noun: str) -> list[str]:
    """Generation: the reason when the model says the same few things whatever the input; a split whose references
    repeat as much (spoken keywords) is not held against it."""
    distinct, varied = len(set(texts)), len(set(references))
    if not texts or distinct >= DISTINCT_SHARE * len(texts) or distinct >= varied:
        return []
    common, count = Counter(texts).most_common(1)[0]
    return [f"only {distinct} of the model's outputs for the {len(texts)} validation rows are distinct (of the "
            f"references, {varied}): it gives the {noun} {_quoted(common)} for {count} of them"]


def _no_better_than_before(baseline: Baseline, eval_metrics: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """The reason when training improved none of the tracked metrics (all must have been scored before and after)."""
    pairs = [(m, before.get(f"before_{m}"), eval_metrics.get(f"eval_{m}")) for m in baseline.tracked]
    if not pairs or any(old is None or new is None for _, old, new in pairs):
        return []
    if any(new > old if baseline.greater_is_better else new < old for _, old, new in pairs):
        return []
    after = " and ".join(f"eval_{m} {float(new):.4f}" for m, _, new in pairs)
    then = " and ".join(f"{float(old):.4f}" for _, old, _ in pairs)
    return [f"{after} {'is' if len(pairs) == 1 else 'are'} no better than before training ({then})"]


def judge_run(baseline: Baseline, eval_output: PredictionOutput, task: Task | None = None,
              learning_rate: float | None = None, steps: int | None = None,
              before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The baseline (every metric of it, as baseline_eval_*) and the verdict as results keys; a degenerate run is
    logged as a WARNING that says what to check. `before` holds the before_* metrics, when they were scored."""
    eval_labels = None if eval_output.label_ids is None else np.asarray(eval_output.label_ids)
    outputs = task.output_texts(eval_output) if task is not None and task.output_texts is not None else None
    reasons = degenerate_reasons(baseline, eval_output.metrics or {}, eval_output.predictions,
                                 task.label_spec if task is not None else None, eval_labels, before=before,
                                 outputs=outputs, noun=task.output_noun if task is not None else "class")
    results: dict[str, Any] = {f"baseline_eval_{name}": value for name, value in baseline.metrics.items()}
    results.update({f"baseline_eval_{baseline.metric}": baseline.value, "baseline_description": baseline.description,
                    "degenerate": bool(reasons)})
    if reasons:
        results["degenerate_reason"] = "; ".join(reasons)
        logger.warning("DEGENERATE RUN: %s. %s", results["degenerate_reason"],
                       what_to_check(baseline, learning_rate, steps))
    return results


def what_to_check(baseline: Baseline, learning_rate: float | None = None, steps: int | None = None) -> str:
    lr = f" (now {learning_rate:g})" if learning_rate is not None else ""
    done = f" ({steps} optimizer steps ran)" if steps is not None else ""
    balance = f"the class balance of train ({baseline.balance})" if baseline.balance else "the train labels"
    return (f"A model that ignores its input ({baseline.description}) scores {baseline.metric} {baseline.value:.4f}. "
            f"Check the learning rate{lr}: too high diverges, too low or 0 never moves; that the label (or target) "
            f"column names the label; {balance}; and the number of training steps{done}.")


def model_card_warning(results: dict[str, Any], noun: str = "class") -> str | None:
    """The paragraph appended to the model card (README.md) of a degenerate run, or None. `noun` names one output
    of the model (`Task.output_noun`: "class", "transcript", "translation")."""
    if not results.get("degenerate"):
        return None
    return (f"\n\n{CARD_HEADING}\n\n**This model looks degenerate: on its validation split it is no better than "
            f"a constant output or than before training, or it gives the same {noun} for almost every input. It has "
            f"probably learned nothing useful.** Why: {results['degenerate_reason']}. Check the learning rate, the "
            "label (or target) column, the balance of the train data and the number of training steps before using "
            "it; `all_results.json` holds the `baseline_*` keys and `degenerate_reason`.\n")
