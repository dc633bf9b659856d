"""What the model got wrong on the validation split: its largest errors, written after evaluation.

Every recipe hands `Task.error_analysis` a function of the validation predictions; the run calls it with
--error_examples N and writes what it returns:
- `errors.csv`: the N worst rows, with the inputs that identify them (text, image file, source, audio file);
- `confused_pairs.csv` for single-label classification: the most frequent (true, predicted) mistakes;
- `errors.png` where the inputs are images: the worst ones in a captioned grid.

"Worst" is measured the way each task is scored: the loss from the logits for classification, the absolute
error for regression, sentence chrF for translation (common.training.seq2seq) and per-utterance WER for speech
(common.training.speech).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import log_expit, log_softmax
from transformers.trainer_utils import PredictionOutput

from common.data.labels import MULTI, REGRESSION, LabelSpec
from common.training.metrics import first_output
from common.training.reporting import plot_image_grid

ERRORS_FILE = "errors.csv"
CONFUSED_FILE = "confused_pairs.csv"
GRID_FILE = "errors.png"


@dataclass
class ErrorAnalysis:
    description: str  # what the rows are, e.g. "the 20 validation rows with the highest loss"
    table: pd.DataFrame
    confused: pd.DataFrame | None = None
    grid: Callable[[Path], None] | None = None  # draws the worst inputs, captioned, to the given PNG

    def write(self, out: Path) -> None:
        self.table.to_csv(out / ERRORS_FILE, index=False)
        if self.confused is not None:
            self.confused.to_csv(out / CONFUSED_FILE, index=False)
        if self.grid is not None:
            self.grid(out / GRID_FILE)


def worst(values: np.ndarray, n: int, largest: bool = True) -> np.ndarray:
    """Indices of the n largest (or smallest) values; ties keep data order, so reruns pick the same rows."""
    order = np.argsort(-values if largest else values, kind="stable")
    return order[:n]


def check_inputs(inputs: dict[str, Sequence], rows: int) -> None:
    for name, values in inputs.items():
        if len(values) != rows:
            raise ValueError(f"error analysis: input column '{name}' has {len(values)} rows for {rows} predictions.")


def classification_errors(
    output: PredictionOutput, spec: LabelSpec, inputs: dict[str, Sequence], n: int,
    image: Callable[[int], Any] | None = None,
) -> ErrorAnalysis | None:
    """The n validation rows with the highest loss (single- and multi-label) or absolute error (regression).

    `inputs` are the columns that show each row (its text, or its image file), in validation order. `image` (row ->
    PIL image) adds the grid of the worst images, captioned with true / predicted / confidence."""
    if output.label_ids is None:
        return None
    logits = first_output(output.predictions)
    labels = np.asarray(output.label_ids)
    check_inputs(inputs, len(logits))
    shown = {name: list(values) for name, values in inputs.items()}

    if spec.problem_type == REGRESSION:
        predicted, true = logits.reshape(-1), labels.reshape(-1).astype(float)
        error = np.abs(predicted - true)
        rows = worst(error, n)
        table = pd.DataFrame({**{k: [v[i] for i in rows] for k, v in shown.items()},
                              "true_value": true[rows], "predicted_value": predicted[rows], "abs_error": error[rows]})
        return ErrorAnalysis(f"the {len(rows)} validation rows with the largest absolute error", table)

    names = np.asarray(spec.names, dtype=object)
    if spec.problem_type == MULTI:
        hot = labels.astype(bool)
        loss = -(hot * log_expit(logits) + ~hot * log_expit(-logits)).mean(-1)  # per-row binary cross-entropy
        rows = worst(loss, n)
        on = logits > 0  # probability > 0.5
        table = pd.DataFrame({**{k: [v[i] for i in rows] for k, v in shown.items()},
                              "true_labels": [";".join(names[hot[i]]) for i in rows],
                              "predicted_labels": [";".join(names[on[i]]) for i in rows],
                              "loss": loss[rows]})
        return ErrorAnalysis(f"the {len(rows)} validation rows with the highest loss", table)

    log_probs = log_softmax(logits, axis=-1)
    ids = labels.astype(int)
    loss = -log_probs[np.arange(len(ids)), ids]
    predicted = log_probs.argmax(-1)
    confidence = np.exp(log_probs.max(-1))
    rows = worst(loss, n)
    table = pd.DataFrame({**{k: [v[i] for i in rows] for k, v in shown.items()},
                          "true_label": names[ids[rows]], "predicted_label": names[predicted[rows]],
                          "confidence": confidence[rows], "loss": loss[rows]})
    wrong = ids != predicted
    pairs = pd.DataFrame({"true_label": names[ids[wrong]], "predicted_label": names[predicted[wrong]]})
    confused = (pairs.value_counts().rename("count").reset_index()
                .sort_values(["count", "true_label", "predicted_label"], ascending=[False, True, True])
                .head(max(n, 10)).reset_index(drop=True))
    captions = [f"true: {names[ids[i]]}\npred: {names[predicted[i]]} ({confidence[i]:.2f})" for i in rows]
    draw = None
    if image is not None:
        def draw(path: Path) -> None:
            plot_image_grid([image(int(i)) for i in rows], captions, f"Highest-loss validation images ({len(rows)})", path)
    return ErrorAnalysis(f"the {len(rows)} validation rows with the highest loss", table, confused, draw)
