"""Metrics: macro averages over the labels that occur."""

from __future__ import annotations

import numpy as np

from common.training.metrics import multilabel_metrics


def test_multilabel_macro_leaves_out_absent_labels():
    """A label that never occurs and is never predicted does not pull the macro averages below a perfect 1.0."""
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])  # the third label never occurs and is never predicted
    scores = multilabel_metrics(truth, truth.copy())
    assert scores["f1_macro"] == scores["precision_macro"] == scores["recall_macro"] == 1.0
