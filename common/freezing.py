"""Freezing: which parameters train. (Minimal; extended by the toolkit.)"""

from __future__ import annotations

import logging

from torch import nn

from common.config import FinetuneArguments

logger = logging.getLogger(__name__)


def apply_freezing(model: nn.Module, finetune_args: FinetuneArguments) -> None:
    if finetune_args.freeze not in (["none"], []):
        raise NotImplementedError


def log_parameter_table(model: nn.Module) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d", trainable, total)
