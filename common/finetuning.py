"""Apply the fine-tuning toolkit to a freshly loaded model: freezing or PEFT, then a parameter report."""

from __future__ import annotations

import logging
from collections.abc import Callable

from transformers import PreTrainedModel

from common.config import FinetuneArguments

logger = logging.getLogger(__name__)


def prepare_model(load: Callable[[], PreTrainedModel], finetune_args: FinetuneArguments) -> PreTrainedModel:
    """`load()` a model, then apply --peft, or --freeze/--unfreeze_schedule, and log what trains."""
    from common.freezing import apply_freezing, log_parameter_table

    model = load()
    if finetune_args.peft:
        from common.adapters import apply_peft

        model = apply_peft(model, finetune_args)
    else:
        apply_freezing(model, finetune_args)
    log_parameter_table(model)
    return model
