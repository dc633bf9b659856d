"""What a recipe hands to a run: its model, data, metrics and outputs, in one `Task`.

This is the recipe contract. The shared layers know no task by name: everything that differs by task (how its
predictions are written, its error analysis, its constant baseline, what ensemble members vote over, the
pipeline its model loads in) reaches them through these fields. CONTRIBUTING.md says which ones a new recipe
fills, and `predict_file` in each recipe module does the same for `finetune-recipes predict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets
import numpy as np
from transformers import PreTrainedModel
from transformers.trainer_utils import PredictionOutput

from common.data.labels import LabelSpec
from common.training.trainer import FinetuneTrainer, OptimizerGroups


class TrainWrapper(Protocol):
    """Wraps the train split (or a CV fold of it) when the trainer is built, e.g. on-the-fly augmentation
    (common.toolkit.augment.TrainAugmentation); the wrapped dataset's `callback` joins the trainer's."""

    def wrap(self, dataset: datasets.Dataset) -> Any: ...


@dataclass
class Task:
    """Everything `run` needs from a recipe."""

    name: str
    model_init: Callable[[], PreTrainedModel]  # a fresh model with the fine-tuning options applied
    train_dataset: datasets.Dataset | None
    eval_dataset: datasets.Dataset | None
    test_dataset: datasets.Dataset | None
    data_collator: Callable | None
    compute_metrics: Callable | None
    processing_class: Any  # tokenizer / processor saved beside the model
    main_metric: str  # eval metric that ranks runs (HPO, best model, plots)
    pipeline_task: str
    model_name: str = ""
    greater_is_better: bool = True  # False for error rates such as WER
    # The main metric's full scale: 1 for fractions (accuracy, F1, WER), 100 for BLEU, chrF and SQuAD's EM and F1.
    # A point is a hundredth of it (export's --max_metric_drop).
    metric_scale: float = 1.0
    label_spec: LabelSpec | None = None
    # The labels ensemble members must share and vote over where they are not label_spec's classes of a whole
    # input (a tag per word): a problem type of the recipe's own, soft-voted per position and scored with
    # compute_metrics (common.strategies.ensembling). None with no label_spec: the recipe has no ensembles.
    vote_labels: LabelSpec | None = None
    # How one member's predictions become the scores an ensemble averages, where softmax over the last axis does not
    # fit (start and end logits over a question's positions: softmax over the positions). None: that softmax.
    vote_scores: Callable[[Any], np.ndarray] | None = None
    trainer_class: type = FinetuneTrainer
    # Writes the predictions on `predicted_split(splits)` in the recipe's format: (output, output dir) -> None.
    write_predictions: Callable[[PredictionOutput, Path], None] | None = None
    # Row labels of the train split, for stratified CV folds (None: plain k-fold).
    stratify: list | None = None
    groups: list | None = None
    # Per train row, its 0-based data row in the train file as loaded (`common.data.rows.number_rows`):
    # the `row` of oof_predictions.parquet. None: rows are numbered as the train split holds them.
    source_rows: list[int] | None = None
    # The train split's inputs as the user gave them (texts; image or audio file paths): () -> column -> one value
    # per train row, in train_dataset's order. Called only when the out-of-fold predictions are written (so that the
    # rows label issues flag can be read), never by a plain run. None: rows are named by their file row alone.
    train_inputs: Callable[[], dict[str, list]] | None = None
    # On-the-fly augmentation of the train split (each CV fold's too); eval and test data stay as they are.
    augmentation: TrainWrapper | None = None
    # Trainer's compute_loss_func: (outputs, labels, num_items_in_batch) -> loss, e.g. for MixUp soft targets.
    compute_loss_func: Callable | None = None
    # Extra TrainerCallbacks, e.g. outputs that must wait until training really starts (every check passed).
    callbacks: list = dataclasses.field(default_factory=list)
    # Facts about the data (skipped bad rows, truncation, class counts) written with the run's results.
    data_results: dict = dataclasses.field(default_factory=dict)
    # The constant baseline of tasks that common.training.baseline cannot derive from label_spec (translation, speech):
    # () -> its metrics on the eval split plus a "description", e.g. partial(common.training.baseline.speech_baseline, ...).
    baseline: Callable[[], dict[str, float | str]] | None = None
    # The largest errors on the eval split, written after evaluation (common.training.error_analysis):
    # (eval output, --error_examples) -> ErrorAnalysis, or None when the split has no labels.
    error_analysis: Callable[[PredictionOutput, int], Any] | None = None
    # Generation: (eval output) -> the model's output text and the reference text per validation row, so that the
    # degenerate-run guard (common.training.baseline) flags a model that says the same thing whatever the input.
    output_texts: Callable[[PredictionOutput], tuple[list[str], list[str]]] | None = None
    # One output of the model, as the degenerate-run warning names it: "it gives the same class for almost every input".
    output_noun: str = "class"
    # Extra pipeline() arguments the saved model wants, shown in the run's load hint, e.g. 'aggregation_strategy="simple"'.
    pipeline_options: list[str] = dataclasses.field(default_factory=list)
    # The pipeline() call arguments that make the saved model predict as this run's predictions did, where the
    # pipeline's defaults differ (input max length, generation settings), e.g. {"truncation": True, "max_length": 16};
    # {} when none differ, None when the recipe does not say. run_config.json records them for `finetune-recipes predict`.
    pipeline_call_kwargs: dict[str, Any] | None = None
    # The columns of the data that hold each example's input (text columns; the image or audio column), as
    # run_config.json records them for `finetune-recipes predict`.
    input_columns: list[str] = dataclasses.field(default_factory=list)
    # Set by the fine-tuning toolkit (common.toolkit.finetuning.apply_toolkit): the optimizer's parameter
    # groups (None: Trainer's own), and how the final model is saved ((trainer, dir) -> None; None: save_model).
    optimizer_groups: OptimizerGroups | None = None
    save_model: Callable[[Any, Path], None] | None = None
