"""What a run leaves in its output dir: results JSON, plots, predictions and the model card."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pandas as pd
from sklearn.metrics import ConfusionMatrixDisplay

from common.data.labels import MULTI, REGRESSION

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def format_metrics(metrics: dict[str, float], keys: Sequence[str] | None = None) -> str:
    shown = {k: v for k, v in metrics.items() if keys is None or any(k.endswith(key) for key in keys)}
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())


def plot_training_curves(log_history: list[dict], main_metric: str, path: str | Path) -> None:
    """Train loss (per epoch, mean of the logged steps), eval loss and the main eval metric per epoch."""
    train: dict[int, list[float]] = defaultdict(list)
    eval_loss, eval_metric = {}, {}
    for entry in log_history:
        epoch = entry.get("epoch")
        if epoch is None:
            continue
        if "loss" in entry:
            train[int(np.ceil(epoch - 1e-9)) or 1].append(entry["loss"])
        if "eval_loss" in entry:
            eval_loss[epoch] = entry["eval_loss"]
        if f"eval_{main_metric}" in entry:
            eval_metric[epoch] = entry[f"eval_{main_metric}"]

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        epochs = sorted(train)
        ax.plot(epochs, [np.mean(train[e]) for e in epochs], "o-", label="train loss")
    if eval_loss:
        ax.plot(list(eval_loss), list(eval_loss.values()), "s-", label="eval loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if eval_metric:
        ax2 = ax.twinx()
        ax2.plot(list(eval_metric), list(eval_metric.values()), "^--", color="tab:green", label=f"eval {main_metric}")
        ax2.set_ylabel(main_metric)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="best")
    ax.set_title("Training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], path: str | Path) -> None:
    size = max(4.5, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(names))), display_labels=list(names), ax=ax, colorbar=False,
        xticks_rotation=45 if len(names) > 4 else "horizontal",
    )
    ax.set_title("Confusion matrix (validation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_image_grid(images: Sequence, captions: Sequence[str], title: str, path: str | Path) -> None:
    """Images (PIL) in a grid of up to 4 columns, each with its caption above it."""
    columns = min(4, len(images)) or 1
    rows = -(-len(images) // columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, cmap="gray" if getattr(image, "mode", "") in ("L", "1") else None)
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(values: dict[str, float], errors: dict[str, float] | None, ylabel: str, title: str, path: str | Path) -> None:
    """One bar per entry, with optional error bars: CV folds, ensemble members, comparisons."""
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(values) + 2), 4))
    names = list(values)
    ax.bar(names, [values[n] for n in names], yerr=[errors.get(n, 0) for n in names] if errors else None, capsize=4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_classification_predictions(
    path: str | Path, inputs: dict[str, list], scores: np.ndarray, problem_type: str, names: Sequence[str] | None
) -> None:
    """One row per example: its inputs, the predicted label name(s), its score, and every class score."""

    table = pd.DataFrame(inputs)
    if problem_type == REGRESSION:
        table["prediction"] = scores
    elif problem_type == MULTI:
        table["prediction"] = [";".join(n for n, s in zip(names, row) if s > 0.5) for row in scores]
        for i, name in enumerate(names):
            table[f"score_{name}"] = scores[:, i]
    else:
        table["prediction"] = [names[i] for i in scores.argmax(-1)]
        table["score"] = scores.max(-1)
        for i, name in enumerate(names):
            table[f"score_{name}"] = scores[:, i]
    table.to_csv(path, index=False)
