"""Apply the fine-tuning toolkit: to a freshly loaded model (freezing or PEFT, then a parameter report), and to
a `Task` (the feature cache, gradual unfreezing, layer-wise learning rates, how the model is saved)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from transformers import PreTrainedModel, TrainingArguments

from common.core.config import ArgumentGroups
from common.core.errors import RecipeInputError
from common.toolkit.adapters import PeftArguments, apply_peft, save_peft_model
from common.toolkit.averaging import AveragingArguments, CheckpointAveraging, averaging_choice
from common.toolkit.feature_cache import FeatureCacheArguments, cached_task, save_full_model
from common.toolkit.freezing import (
    FreezingArguments,
    GradualUnfreezingCallback,
    apply_freezing,
    log_parameter_table,
    optimizer_groups,
)
from common.training.task import Task

logger = logging.getLogger(__name__)


@dataclass
class ToolkitArguments(ArgumentGroups, AveragingArguments, FeatureCacheArguments, PeftArguments, FreezingArguments):
    """What is trained and how: freezing, PEFT, the feature cache and checkpoint averaging (the recipes'
    FinetuneArguments adds the rest)."""


def prepare_model(load: Callable[[], PreTrainedModel], finetune_args: ToolkitArguments) -> PreTrainedModel:
    """`load()` a model, then apply --peft, or --freeze/--unfreeze_schedule, and log what trains."""
    model = load()
    freeze_unsaved(model)
    if finetune_args.peft:
        model = apply_peft(model, finetune_args)
    else:
        apply_freezing(model, finetune_args)
    log_parameter_table(model)
    return model


def freeze_unsaved(model: PreTrainedModel) -> None:
    """Freeze the parameters that `save_pretrained` leaves out (`_keys_to_ignore_on_save`, e.g. Marian's sinusoidal
    positions): the model rebuilds them when loaded, so it must not train them. transformers 5 loads them trainable;
    trained, they would make the saved model and every checkpoint differ from the model that was trained and scored
    (a resumed run, `pipeline` and `predict` would compute with other weights). Never thawed: --freeze and gradual
    unfreezing leave parameters that were frozen before them alone."""
    unsaved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    for name, parameter in model.named_parameters():
        if name in unsaved:
            parameter.requires_grad_(False)


def apply_toolkit(task: Task, args: TrainingArguments, finetune_args: ToolkitArguments) -> Task:
    """The task as the toolkit options train it; every run of a strategy (HPO trials, CV folds) shares it."""
    if finetune_args.cache_features:
        task = cached_task(task, args)
        task = dataclasses.replace(task, save_model=save_full_model)
        if args.train_sampling_strategy == "group_by_length":
            # A cached row is one feature vector: there is no length to group by, and no padding to save.
            logger.info("--cache_features: train_sampling_strategy group_by_length -> random")
            args.train_sampling_strategy = "random"
    if finetune_args.peft:
        task = dataclasses.replace(task, save_model=partial(save_peft_model, merge=finetune_args.merge_adapter))
    callbacks = list(task.callbacks)
    if finetune_args.unfreeze_schedule:
        callbacks.append(GradualUnfreezingCallback(finetune_args))
    if finetune_args.average_checkpoints:
        if args.load_best_model_at_end:
            raise RecipeInputError("--average_checkpoints replaces the final weights with an average, and "
                                   "load_best_model_at_end (set by --early_stopping_patience) with the best checkpoint: "
                                   "use one of the two.")
        method, k = averaging_choice(finetune_args.average_checkpoints)
        callbacks.append(CheckpointAveraging(method, k, task.main_metric, task.greater_is_better))
    return dataclasses.replace(task, callbacks=callbacks, optimizer_groups=optimizer_groups(finetune_args))
