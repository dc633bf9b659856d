"""Trainer subclasses that carry the fine-tuning options into optimizer construction."""

from __future__ import annotations

import torch
from transformers import Seq2SeqTrainer, Trainer

from common.config import FinetuneArguments


class FinetuneTrainerMixin:
    """Adds `finetune_args`; builds per-layer optimizer groups when LLRD or gradual unfreezing asks for them."""

    def __init__(self, *args, finetune_args: FinetuneArguments | None = None, **kwargs):
        self.finetune_args = finetune_args or FinetuneArguments()
        super().__init__(*args, **kwargs)

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
