"""Parameter-efficient fine-tuning with peft: `--peft lora | ia3`, generic over model families.

The adapter goes on the attention projections peft knows for the architecture (or that
`--lora_target_modules` names); the task head, and anything else the checkpoint did not provide, is
trained in full and saved with the adapter (`modules_to_save`), so a reloaded adapter predicts exactly
like the trained model (peft issues #310, #1070).

What `save_peft_model` leaves in the output dir:

    output_dir/                 the adapter merged into the base weights: a plain model with the task's
                                label names, for `pipeline(task, model=output_dir)` like any other run
    output_dir/adapter/         the adapter alone (kept unless --merge_adapter), for
                                `PeftModel.from_pretrained(base_model, output_dir / "adapter")`

Under DDP the frozen base weights are outside the gradient reducer (it holds only parameters that require
grad), so `ddp_find_unused_parameters` is False for a `PeftModel` unless LayerDrop skips adapted layers
(see `common.training.trainer.choose_find_unused_parameters`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

from peft import IA3Config, LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
)
from torch import nn
from transformers import PreTrainedModel
from transformers.models.auto import modeling_auto

from common.core.errors import RecipeInputError, nearest

logger = logging.getLogger(__name__)

PEFT_METHODS = ("lora", "ia3")


@dataclass
class PeftArguments:
    """Parameter-efficient fine-tuning: an adapter trains, the base model stays frozen."""

    peft: str | None = field(default=None, metadata={"help": "Parameter-efficient method: lora | ia3."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt; default: peft's mapping for the architecture."}
    )
    merge_adapter: bool = field(
        default=False, metadata={"help": "With --peft, save only the merged model. Without it the output dir holds "
                                         "the merged model (for pipeline()) plus the adapter alone in adapter/."}
    )

    def check(self) -> None:
        if self.peft and self.peft.lower() not in PEFT_METHODS:
            raise RecipeInputError(f"--peft {self.peft} is not supported: use one of {', '.join(PEFT_METHODS)}"
                                   f"{nearest(self.peft, PEFT_METHODS)}.")


# peft's task types, by the transformers auto class the model belongs to. Other models (image, audio,
# speech-to-text) go without a task type: peft then wraps them generically and records their class.
TASK_TYPES = {
    TaskType.SEQ_CLS: modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    TaskType.TOKEN_CLS: modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    TaskType.QUESTION_ANS: modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
    TaskType.SEQ_2_SEQ_LM: modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    TaskType.CAUSAL_LM: modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
}

# Query/value projection spellings, the LoRA paper's default, for architectures peft has no mapping for
# (ViT: query/value; wav2vec2, Whisper: q_proj/v_proj; DistilBERT: q_lin/v_lin).
QUERY_VALUE_NAMES = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"),
                     ("query_proj", "value_proj"))


def peft_task_type(model: PreTrainedModel) -> TaskType | None:
    name = type(model).__name__
    for task_type, mapping in TASK_TYPES.items():
        if any(name == value or (isinstance(value, tuple) and name in value) for value in mapping.values()):
            return task_type
    return None


def head_module_names(model: nn.Module) -> list[str]:
    """Modules trained in full and saved with the adapter: the task head, plus newly initialised modules.

    The head is every top-level child outside the base model (`base_model_prefix`) that owns weights
    of its own; a head tied to the input embeddings (a language-model head) is pretrained and stays out.
    Parameters that the checkpoint did not provide (e.g. a pooler missing from it) are random: they
    are trained and saved too, or a reloaded adapter would start from different random values.
    """
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    names = []
    if isinstance(base, nn.Module):
        base_params = {id(p) for p in base.parameters()}
        names = [name for name, child in model.named_children()
                 if child is not base and any(id(p) not in base_params for p in child.parameters())]
    # transformers flags every parameter it loaded from the checkpoint; a model built from its config has none.
    loaded = {name for name, p in model.named_parameters() if getattr(p, "_is_hf_initialized", False)}
    if loaded:
        for name, _ in model.named_parameters():
            module = name.rsplit(".", 1)[0]
            if name not in loaded and not any(module == n or module.startswith(n + ".") for n in names):
                names.append(module)
    return names


def default_target_modules(model: nn.Module, method: str) -> tuple[list[str], list[str]]:
    """(target modules, IA3 feed-forward modules): peft's mapping for the architecture, else query/value."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if method == "lora" and model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]), []
    if method == "ia3" and model_type in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
        return (list(TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[model_type]),
                list(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING[model_type]))
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for pair in QUERY_VALUE_NAMES:
        if set(pair) <= linear:
            return list(pair), []
    raise RecipeInputError(
        f"--peft {method}: peft has no default target modules for model type '{model_type}' and no query/value "
        f"projections were found. Name the layers to adapt with --lora_target_modules, e.g. one of: "
        f"{', '.join(sorted(linear)[:12])}."
    )


def apply_peft(model: PreTrainedModel, finetune_args: PeftArguments) -> PeftModel:
    """Wrap a freshly loaded model in a LoRA or IA3 adapter; the head trains in full.

    `finetune_args` holds the whole toolkit's options: freezing of any kind conflicts with the adapter's own."""
    method = finetune_args.peft.lower()  # a known method: PeftArguments checked it
    others = (getattr(finetune_args, "freeze", ["none"]) not in (["none"], [])
              or getattr(finetune_args, "unfreeze_schedule", None) or getattr(finetune_args, "cache_features", False))
    if others:
        raise RecipeInputError("--peft freezes the base model itself: drop --freeze, --unfreeze_schedule and "
                               "--cache_features, or drop --peft.")
    targets, feedforward = default_target_modules(model, method)
    if finetune_args.lora_target_modules:
        targets = list(finetune_args.lora_target_modules)
        feedforward = [name for name in feedforward if name in targets]
    head = head_module_names(model)
    task_type = peft_task_type(model)
    if method == "lora":
        config = LoraConfig(r=finetune_args.lora_r, lora_alpha=finetune_args.lora_alpha,
                            lora_dropout=finetune_args.lora_dropout, target_modules=targets,
                            modules_to_save=list(head), task_type=task_type)
    else:
        config = IA3Config(target_modules=targets, feedforward_modules=feedforward, modules_to_save=list(head),
                           task_type=task_type)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise RecipeInputError(f"--peft {method} with target modules {targets}: {err} "
                               "Check --lora_target_modules against the model's layer names.") from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("--peft %s on %s (task type %s); trained in full: %s; trainable %d of %d parameters (%.2f%%)",
                method, ", ".join(targets), task_type.value if task_type else "none", ", ".join(head) or "nothing",
                trainable, total, 100 * trainable / total)
    return peft_model


def save_peft_model(trainer, output_dir: str | Path, merge: bool = False) -> None:
    """The merged model (plus tokenizer/processor) in output_dir; the adapter in output_dir/adapter unless merge."""
    if not trainer.is_world_process_zero():
        return
    out = Path(output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(model, PeftModel):
        raise TypeError(f"save_peft_model expects a PeftModel, got {type(model).__name__}")
    if not merge:
        model.save_pretrained(out / "adapter")
    # Merge a copy: the trainer keeps evaluating and predicting with the adapter model after saving.
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(out)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(out)
    logger.info("saved the merged model to %s%s", out, "" if merge else f" and the adapter to {out / 'adapter'}")
