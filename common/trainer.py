"""Trainer subclasses that carry the fine-tuning options into optimizer construction, guard against NaN/inf
losses (--nan_policy) and checkpoint on SIGTERM (--enable_jit_checkpoint)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import Seq2SeqTrainer, Trainer

from common.config import FinetuneArguments, choose_find_unused_parameters
from common.errors import NonFiniteLossError, RecipeInputError
from common.reliability import (
    NonFiniteSkips,
    PreemptionCallback,
    last_complete_checkpoint,
    load_checkpoint_weights,
    write_training_args,
)

logger = logging.getLogger(__name__)


class FinetuneTrainerMixin:
    """Adds `finetune_args`; builds per-layer optimizer groups when LLRD or gradual unfreezing asks for them."""

    def __init__(self, *args, finetune_args: FinetuneArguments | None = None, **kwargs):
        self.finetune_args = finetune_args or FinetuneArguments()
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
        if jit:
            self.add_callback(PreemptionCallback())
        if self.model_init is not None:  # the model did not exist yet when the accelerator was created
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

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5 also length-groups evaluation under group_by_length, which shuffles the rows that
        # predictions.csv pairs with their inputs; evaluation order must be the dataset's order.
        if eval_dataset is None or not hasattr(eval_dataset, "__len__") or self.args.world_size > 1:
            return None  # as Trainer without grouping: accelerate shards the dataset in order
        return torch.utils.data.SequentialSampler(eval_dataset)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        ft = self.finetune_args
        if self.optimizer is not None or not (ft.layer_lr_decay or ft.unfreeze_schedule):
            return super().create_optimizer(model)
        from common.freezing import optimizer_param_groups

        opt_model = self.model if model is None else model
        groups = optimizer_param_groups(
            opt_model,
            learning_rate=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            decay_parameter_names=set(self.get_decay_parameter_names(opt_model)),
            layer_lr_decay=ft.layer_lr_decay or 1.0,
        )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer


class FinetuneTrainer(FinetuneTrainerMixin, Trainer):
    pass


class FinetuneSeq2SeqTrainer(FinetuneTrainerMixin, Seq2SeqTrainer):
    pass
