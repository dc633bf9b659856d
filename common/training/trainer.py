"""Trainer subclasses that take the optimizer's parameter groups from the fine-tuning toolkit, guard against
NaN/inf losses (--nan_policy) and checkpoint on SIGTERM (--enable_jit_checkpoint); the options of the training
loop itself (`TrainingLoopArguments`)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, Seq2SeqTrainer, Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer_pt_utils import get_length_grouped_indices

from common.core.errors import NonFiniteLossError, RecipeInputError, nearest
from common.data.arrow import list_lengths
from common.training.reliability import (
    NonFiniteSkips,
    PreemptionCallback,
    last_complete_checkpoint,
    load_checkpoint_weights,
    write_training_args,
)

logger = logging.getLogger(__name__)

# (model, learning rate, weight decay, names of the parameters that take weight decay) -> optimizer groups
OptimizerGroups = Callable[[torch.nn.Module, float, float, set[str]], list[dict]]


@dataclass
class TrainingLoopArguments:
    """Options of the training loop: the evaluation before it, the error analysis after it, early stopping and
    non-finite losses."""

    eval_before_training: bool = field(
        default=True,
        metadata={"help": "Evaluate the untrained model first, so all_results.json holds before_* metrics beside "
                          "the fine-tuned ones. false skips that pass and starts training sooner."},
    )
    error_examples: int = field(
        default=20,
        metadata={"help": "After evaluation, write the N validation examples the model got most wrong (errors.csv; "
                          "errors.png for images) to the output dir and its report. 0 turns it off."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement; keeps the best model."}
    )
    early_stopping_threshold: float = field(default=0.0, metadata={"help": "Minimum improvement that counts."})
    nan_policy: str = field(
        default="stop",
        metadata={
            "help": "A NaN or inf training loss (or gradient): stop = end training with an error naming the "
            "step, before the optimizer update, so no checkpoint holds NaN weights; skip = drop that step's "
            "optimizer update (weights and optimizer state untouched) and count it (train_nan_skipped_steps)."
        },
    )

    def check(self) -> None:
        if self.error_examples < 0:
            raise RecipeInputError(f"--error_examples {self.error_examples}: give a count, or 0 for no error analysis.")
        if self.nan_policy not in ("stop", "skip"):
            hint = nearest(self.nan_policy, ["stop", "skip"])
            raise RecipeInputError(f"--nan_policy {self.nan_policy}: use stop or skip{hint}.")

    @staticmethod
    def policies(options: dict[str, Any]) -> None:
        # Early stopping needs evaluations to compare and checkpoints to return to the best one.
        if options.get("early_stopping_patience"):
            if options.get("eval_strategy") in (None, "no"):
                options["eval_strategy"] = "epoch"
            options["save_strategy"] = options["eval_strategy"]
            options["load_best_model_at_end"] = True


def choose_find_unused_parameters(model: Any, activation_checkpointing: bool = False) -> tuple[bool, str]:
    """(DDP's find_unused_parameters, why): True only where a trainable parameter can miss its gradient.

    DDP's reducer holds only the parameters that require grad when it wraps the model, so frozen weights
    (--freeze, PEFT's base model) never count as unused. True makes DDP walk the autograd graph after every
    forward to find parameters that will get no gradient: wasted time where there are none, and an error
    with reentrant activation checkpointing. False fails the first step where a trainable parameter gets no
    gradient, so True is chosen where that happens by design.
    """
    # A model that knows it uses every trainable weight in every step says so (the feature cache's head).
    declared = getattr(model, "every_parameter_used", None)
    if declared:
        return False, declared
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, PreTrainedModel):
        return True, f"{type(inner).__name__} is not a transformers model: no parameter is known to be used"
    config = inner.config
    for name in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop"):
        value = getattr(config, name, 0.0) or 0.0
        if value > 0:
            return True, f"{name}={value:g} skips random layers in training, so their weights miss gradients"
    # wav2vec2-like models: the mask embedding exists when either SpecAugment probability is set, but only
    # time masking uses it.
    parameters = inner.named_parameters()
    spec_embed = any(name.endswith("masked_spec_embed") and p.requires_grad for name, p in parameters)
    masks_time = getattr(config, "apply_spec_augment", True) and getattr(config, "mask_time_prob", 0) > 0
    if spec_embed and not masks_time:
        return True, "masked_spec_embed trains only when SpecAugment masks time steps, which never happens here"
    if activation_checkpointing or getattr(inner, "is_activation_checkpointing", False):
        return False, "activation checkpointing, with every trainable parameter used in every step"
    if inner is not model:
        return False, "PEFT: adapter and head weights train, all in every step; the frozen base is outside DDP"
    return False, "every trainable parameter is used in every step; frozen ones are outside DDP's reducer"


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler):
    """group_by_length, with the batches in random order.

    transformers' LengthGroupedSampler sorts each mega-batch (up to 50 batches) longest first and keeps that
    order, so an epoch runs from long to short examples again and again; on a small train split that order
    follows whatever goes with length, often the label. The batches here are the same groups of similar length,
    drawn in random order; the one holding the longest example still comes first, so an OOM shows at once.

    The order is a function of (seed, epoch) alone, as with `DistributedSampler.set_epoch`: a run resumed in a
    later epoch redraws that epoch's order exactly, and under DDP every process draws the same permutation and
    takes its own shard of it. The global torch generator would hold neither: it moves with everything else
    that draws from it (dropout, augmentation), differently in each process and after a resume.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        batches = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        full = len(batches) - (len(indices) % self.batch_size != 0)  # a short last batch stays last
        shuffled = (1 + torch.randperm(max(full - 1, 0), generator=generator)).tolist()
        order = [0, *shuffled, *range(max(full, 1), len(batches))]
        return iter([index for batch in order for index in batches[batch]])


class FinetuneTrainerMixin:
    """Adds the training-loop options (`finetune_args`) and optimizer groups chosen by the toolkit."""

    def __init__(self, *args, finetune_args: TrainingLoopArguments | None = None,
                 optimizer_groups: OptimizerGroups | None = None, **kwargs):
        self.finetune_args = finetune_args or TrainingLoopArguments()
        self.optimizer_groups = optimizer_groups
        # PreemptionCallback stands in for transformers' own JIT checkpointing behind the same flag: that
        # one waits 3 s after SIGTERM, may save between backward and optimizer step (a checkpoint that a
        # resumed run cannot continue exactly), and lets train() return as if training had finished.
        training_args = kwargs.get("args")
        jit = bool(getattr(training_args, "enable_jit_checkpoint", False))
        if jit:
            training_args.enable_jit_checkpoint = False
        try:
            super().__init__(*args, **kwargs)
        finally:
            if jit:
                training_args.enable_jit_checkpoint = True
        if self.finetune_args.nan_policy == "skip" and self.is_deepspeed_enabled:
            raise RecipeInputError(
                "--nan_policy skip drops an optimizer update, but DeepSpeed steps inside backward: use "
                "--nan_policy stop (DeepSpeed skips overflowing fp16 steps itself)."
            )
        self._nonfinite_loss: float | None = None
        self.add_callback(NonFiniteSkips())
        for callback in self.callback_handler.callbacks:
            # TensorBoard picks output_dir/runs/<time_host> when training begins; the evaluation before training
            # logs earlier, and its writer would then default to ./runs in the working directory.
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())
        if jit:
            self.add_callback(PreemptionCallback())
        # The accelerator was created before the model existed (model_init), or before it was known.
        self._set_ddp_find_unused_parameters()

    @property
    def nan_skipped_steps(self) -> list[int]:
        # Looked up each time: resuming swaps in the callback restored from the checkpoint.
        return next(cb.steps for cb in self.callback_handler.callbacks if isinstance(cb, NonFiniteSkips))

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._nonfinite_loss is None and not bool(torch.isfinite(loss).all()):
            self._nonfinite_loss = loss.float().mean().item()
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Trainer takes the gradient norm right before every optimizer step: the guard reads that one.
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self._guard_optimizer_step(model, grad_norm)
        return grad_norm

    def _guard_optimizer_step(self, model: torch.nn.Module, grad_norm) -> None:
        """A NaN/inf loss or gradient in this step stops training or drops its update, per --nan_policy."""
        loss, self._nonfinite_loss = self._nonfinite_loss, None
        # Under fp16 loss scaling inf gradients are routine: the grad scaler skips those steps itself.
        grads_ok = grad_norm is None or math.isfinite(float(grad_norm))
        if loss is None and (self.accelerator.scaler is not None or grads_ok):
            return
        step = self.state.global_step + 1
        what = f"training loss {loss}" if loss is not None else "a NaN/inf gradient"
        if self.finetune_args.nan_policy == "skip":
            # torch optimizers pass over parameters without a gradient: no step count, moment or weight decay
            # update, where zeroed gradients would still move AdamW's weights and moments.
            for param in model.parameters():
                param.grad = None
            self.nan_skipped_steps.append(step)
            logger.warning(
                "%s at global step %d: its optimizer update is skipped (--nan_policy skip; %d so far)",
                what, step, len(self.nan_skipped_steps),
            )
            return
        last = last_complete_checkpoint(self.args.output_dir)
        kept = (
            f"The last good checkpoint is {last}: continue from it with --resume_from_checkpoint latest, "
            "e.g. with a lower --learning_rate." if last else "No checkpoint had been saved yet."
        )
        raise NonFiniteLossError(
            f"{what} at global step {step} (epoch {self.state.epoch or 0:.2f}): training stopped before that "
            f"step's optimizer update, so the weights and every checkpoint are finite. {kept} Otherwise "
            "lower --learning_rate, check the data, or pass --nan_policy skip to skip such steps."
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None):
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled  # they load their own sharded states
        result = None if sharded else load_checkpoint_weights(model or self.model, resume_from_checkpoint)
        if result is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        else:
            self._issue_warnings_after_load(result)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        result = load_checkpoint_weights(self.model, self.state.best_model_checkpoint)
        if result is None:
            return super()._load_best_model()
        logger.info("loaded the best model from %s", self.state.best_model_checkpoint)
        self._issue_warnings_after_load(result)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            write_training_args(Path(output_dir or self.args.output_dir), self.args)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.model is not None:  # a hyperparameter trial rebuilds the accelerator; keep the choice
            self._set_ddp_find_unused_parameters()

    def _set_ddp_find_unused_parameters(self) -> None:
        # Trainer settles find_unused_parameters when it creates the accelerator, before model_init has built
        # the model, so it always falls back to True. DDP reads it only when train() wraps the model: decide
        # from the model now, unless --ddp_find_unused_parameters was given.
        handler = getattr(self.accelerator, "ddp_handler", None)
        explicit = self.args.ddp_find_unused_parameters
        if explicit is not None or handler is None:
            if explicit is not None and self.args.world_size > 1:
                logger.info("ddp_find_unused_parameters=%s (set explicitly)", explicit)
            return
        find_unused, why = choose_find_unused_parameters(self.model, bool(self.args.activation_checkpointing))
        handler.find_unused_parameters = find_unused
        if self.args.world_size > 1:
            logger.info("ddp_find_unused_parameters=%s: %s", find_unused, why)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            lengths = self._train_lengths(dataset)
            if lengths is not None:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
                return ShuffledLengthGroupedSampler(lengths, batch_size, seed)
        return super()._get_train_sampler(train_dataset)

    def _train_lengths(self, dataset) -> list[int] | None:
        """Each train row's length, for group_by_length. Trainer reads every row to measure it, one formatted row
        at a time; Arrow measures the whole column at once. A train split seen through on-the-fly augmentation
        (common.toolkit.augment) knows its lengths: read row by row, every row would be augmented and encoded."""
        column = self.processing_class.model_input_names[0] if self.processing_class is not None else "input_ids"
        if hasattr(dataset, "lengths"):
            return dataset.lengths(column)
        if not isinstance(dataset, datasets.Dataset):
            return None
        if self.args.length_column_name in dataset.column_names:
            return dataset[self.args.length_column_name]
        if column in dataset.column_names:
            return list_lengths(dataset, column)
        return None

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5 also length-groups evaluation under group_by_length, which shuffles the rows that
        # predictions.csv pairs with their inputs; evaluation order must be the dataset's order.
        if eval_dataset is None or not hasattr(eval_dataset, "__len__") or self.args.world_size > 1:
            return None  # as Trainer without grouping: accelerate shards the dataset in order
        return torch.utils.data.SequentialSampler(eval_dataset)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None or self.optimizer_groups is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = self.optimizer_groups(opt_model, self.args.learning_rate, self.args.weight_decay,
                                       set(self.get_decay_parameter_names(opt_model)))
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer


class FinetuneTrainer(FinetuneTrainerMixin, Trainer):
    pass


class FinetuneSeq2SeqTrainer(FinetuneTrainerMixin, Seq2SeqTrainer):
    pass
