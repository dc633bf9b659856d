"""Arguments for every recipe: dataclasses with help text, read from a YAML config plus the command line.

Precedence, lowest first: the recipe's built-in defaults, the YAML file given with ``--config``,
then command-line flags. Unknown keys are errors that name the key and its nearest valid spelling.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from common.data.options import check_reader_options
from common.errors import RecipeInputError, nearest

# Extra spellings accepted for TrainingArguments fields, on the command line and in YAML.
ALIASES = {"label_smoothing": "label_smoothing_factor", "epochs": "num_train_epochs", "num_beams": "generation_num_beams"}

# TrainingArguments defaults shared by every recipe; each recipe adds its output_dir and what differs for its
# modality. Evaluating every epoch without checkpoints leaves a plain run's output dir holding only the final
# model (--early_stopping_patience turns saving back on, see _apply_policies).
TRAINING_DEFAULTS: dict[str, Any] = {
    "do_train": True,
    "do_eval": True,
    "do_predict": True,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 10,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 5e-5,
    "num_train_epochs": 3,
    "warmup_steps": 0.1,  # below 1: a fraction of the training steps
    "weight_decay": 0.01,
    "report_to": "none",  # no tracker is installed or reachable by default
    # Recipe losses are per-example means; token averaging across devices would rescale them under DDP.
    "average_tokens_across_devices": False,
    # On SIGTERM, checkpoint at the next step boundary and stop (common.reliability.PreemptionCallback).
    "enable_jit_checkpoint": True,
}
PEFT_METHODS = ("lora", "ia3")
ENSEMBLE_METHODS = ("soft_vote", "hard_vote", "stack")

UNFREEZE_UNDER_DDP = (
    "--unfreeze_schedule needs a single process, but {processes} are running: DistributedDataParallel "
    "builds its gradient reducer when it wraps the model, from the parameters that require grad at that "
    "moment, so parameters unfrozen later would never be all-reduced and the replicas would drift apart. "
    "Run on one process (python recipes/...), or keep several processes and use --freeze bottom:N and/or "
    "--layer_lr_decay instead."
)


# Options naming local data; one given on the command line overrides a --dataset_name from the YAML (parse_args).
LOCAL_DATA_OPTIONS = frozenset({
    "train_file", "validation_file", "test_file", "train_dir", "validation_dir", "test_dir", "audio_folder",
    *(f"{split}_{side}_file" for split in ("train", "validation", "test") for side in ("source", "target")),
})

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


@dataclass
class DataArguments:
    """Data options every recipe shares; each recipe subclasses this with its own columns."""

    _argument_group_name = "data"

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name (instead of local files)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "Training data: csv, tsv, json, jsonl or parquet."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, same formats."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, same formats; labels optional."})
    validation_split: float = field(
        default=0.1,
        metadata={"help": "Fraction of train held out (stratified) when there is no validation split. In (0, 1)."},
    )
    delimiter: str | None = field(
        default=None,
        metadata={"help": "Field delimiter of csv/tsv/txt (or extension-less) tables: any single character, '\\t' for "
                          "tab. Default: tab for .tsv, comma for .csv, sniffed for .txt and files without extension."},
    )
    column_names: list[str] | None = field(
        default=None,
        metadata={"help": "Column names, in order, for header-less csv/tsv/txt files (e.g. label,title,body); "
                          "the first line is then read as data."},
    )
    quoting: str | None = field(
        default=None,
        metadata={"help": "Quote handling of delimited tables, as the csv module: minimal | all | nonnumeric | none. "
                          "Default: none for tab-delimited files (quotes are text), minimal otherwise."},
    )
    data_field: str | None = field(
        default=None,
        metadata={"help": "JSON/JSONL: the field holding the records (a list in a .json document, or a nested "
                          "object per line whose keys become the columns)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training rows: a seeded random sample, stratified "
                                        "by class for single-label classification."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many validation rows (sampled as above)."})
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many test rows (sampled as above)."})
    dedupe: bool = field(
        default=False,
        metadata={"help": "Drop validation rows that repeat a train row verbatim, and test rows that repeat train or "
                          "validation (they are counted and logged either way)."},
    )
    skip_bad_examples: bool = field(
        default=False,
        metadata={"help": "Drop bad rows (empty text, unparsable labels, unreadable or empty files) instead of "
                          "failing; they are counted per split in all_results.json."},
    )
    max_bad_fraction: float = field(
        default=0.05,
        metadata={"help": "With --skip_bad_examples, fail anyway when more than this fraction of a split is bad."},
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for dataset .map()."})

    def __post_init__(self) -> None:
        if not 0.0 < self.validation_split < 1.0:
            raise RecipeInputError(
                f"--validation_split {self.validation_split} is outside (0, 1): give the fraction of train to hold "
                "out, e.g. --validation_split 0.1."
            )
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise RecipeInputError(f"--max_bad_fraction {self.max_bad_fraction} is outside [0, 1]: give a fraction "
                                   "of a split, e.g. 0.05.")
        check_reader_options(self)


@dataclass
class RunArguments:
    _argument_group_name = "run"

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into a non-empty output_dir (otherwise it is refused)."}
    )
    metric: str | None = field(
        default=None,
        metadata={"help": "Extra `evaluate` metric id (needs the Hub), computed beside the built-in offline metrics."},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | fp32 | bf16 | fp16. auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU. "
            "An explicit --bf16/--fp16 or accelerate's mixed_precision wins."
        },
    )
    scale_lr_with_batch: bool = field(
        default=False,
        metadata={"help": "Multiply learning_rate by processes x gradient_accumulation_steps (linear scaling rule)."},
    )
    resume_ignore_changes: bool = field(
        default=False,
        metadata={"help": "With --resume_from_checkpoint: resume even when options or data files differ from those "
                          "the checkpoint was trained with (each change is logged and recorded in "
                          "training_args.json). Without it such a resume is refused."},
    )
    precision_reason: str = field(default="", init=False, repr=False)  # why `precision` was chosen, for the log
    # The other argument groups parse_args built with this one (data, model, fine-tuning, training), so that
    # setup_run can fingerprint what shapes training for the checkpoints (common.reliability.run_fingerprint).
    arguments: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)


@dataclass
class FinetuneArguments:
    """The fine-tuning toolkit: every recipe gets these options."""

    _argument_group_name = "fine-tuning"

    freeze: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "What to freeze: none | backbone | embeddings | bottom:N | encoder | decoder | feature_encoder, "
            "or regex patterns on parameter names."
        },
    )
    unfreeze_patterns: list[str] = field(
        default_factory=list, metadata={"help": "Regex patterns of parameters kept trainable despite --freeze."}
    )
    train_norm_layers: bool = field(
        default=False, metadata={"help": "Keep LayerNorm/BatchNorm trainable inside frozen parts."}
    )
    unfreeze_schedule: str | None = field(
        default=None,
        metadata={
            "help": "Gradual unfreezing from the top: 'epoch' unfreezes one block group per epoch, "
            "or a comma list of epochs, e.g. '1,2,3'. Starts from --freeze backbone unless --freeze says otherwise."
        },
    )
    layer_lr_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise LR decay: block at depth d from the head gets lr * decay**d."}
    )
    cache_features: bool = field(
        default=False,
        metadata={"help": "With --freeze backbone: run the backbone once, cache pooled features, train the head only."},
    )
    peft: str | None = field(default=None, metadata={"help": "Parameter-efficient method: lora | ia3."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt; default: peft's mapping for the architecture."}
    )
    merge_adapter: bool = field(
        default=False, metadata={"help": "With --peft, save only the merged model. Without it the output dir holds the merged model "
                          "(for pipeline()) plus the adapter alone in adapter/."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement; keeps the best model."}
    )
    early_stopping_threshold: float = field(default=0.0, metadata={"help": "Minimum improvement that counts."})
    text_augment: list[str] = field(
        default_factory=list,
        metadata={"help": "Text augmentation ops with probabilities, e.g. swap=0.1 delete=0.1 insert=0.1 unk=0.1."},
    )
    hpo_trials: int = field(default=0, metadata={"help": "Hyperparameter search trials (optuna); 0 = off."})
    hpo_space: str | None = field(
        default=None, metadata={"help": "Search space as YAML/JSON (usually a mapping under hpo_space: in the config)."}
    )
    cv_folds: int = field(default=0, metadata={"help": "k-fold cross-validation over train; 0 = off."})
    cv_group_column: str | None = field(default=None, metadata={"help": "Column whose groups never span folds."})
    ensemble: str | None = field(
        default=None, metadata={"help": "Combine models: soft_vote | hard_vote | stack (CV folds or --ensemble_models)."}
    )
    ensemble_models: list[str] | None = field(
        default=None, metadata={"help": "Fine-tuned model directories to ensemble, instead of the CV folds."}
    )
    nan_policy: str = field(
        default="stop",
        metadata={
            "help": "A NaN or inf training loss (or gradient): stop = end training with an error naming the "
            "step, before the optimizer update, so no checkpoint holds NaN weights; skip = drop that step's "
            "optimizer update (weights and optimizer state untouched) and count it (train_nan_skipped_steps)."
        },
    )

    def __post_init__(self) -> None:
        if self.nan_policy not in ("stop", "skip"):
            hint = nearest(self.nan_policy, ["stop", "skip"])
            raise RecipeInputError(f"--nan_policy {self.nan_policy}: use stop or skip{hint}.")
        # Checks that need no model run here, at parse time, so a typo fails in seconds, not after the data
        # has been tokenized or decoded; the module-level imports would be circular.
        from common.freezing import check_options, freeze_strategies
        from common.hpo import parse_space

        freeze_strategies(self)
        check_options(self)
        if self.peft and self.peft.lower() not in PEFT_METHODS:
            raise RecipeInputError(f"--peft {self.peft} is not supported: use one of {', '.join(PEFT_METHODS)}"
                                   f"{nearest(self.peft, PEFT_METHODS)}.")
        if self.ensemble and self.ensemble not in ENSEMBLE_METHODS:
            raise RecipeInputError(f"--ensemble {self.ensemble}: choose one of {', '.join(ENSEMBLE_METHODS)}"
                                   f"{nearest(self.ensemble, ENSEMBLE_METHODS)}.")
        if self.hpo_space:
            parse_space(self.hpo_space)


def _dests(parser: HfArgumentParser) -> dict[str, str]:
    """Map every accepted key (option name without dashes) to its destination field."""
    keys: dict[str, str] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:]] = action.dest
    return keys


class _Parser(HfArgumentParser):
    """Bad values (a wrong type, an unknown choice) raise RecipeInputError, like every other bad input.

    argparse would print the whole usage (hundreds of TrainingArguments options) and call sys.exit,
    which a caller of main() cannot tell from success without catching SystemExit.
    """

    from_config: dict[str, str]  # dest -> YAML file, for values the command line did not override

    def error(self, message: str):
        option = message.split("argument ", 1)[-1].split("/")[0].split(":")[0]
        action = self._option_string_actions.get(option)
        origin = getattr(self, "from_config", {}).get(action.dest) if action is not None else None
        where = f" (set in {origin})" if origin else ""
        raise RecipeInputError(f"{message}{where}. See --help for every option and its type.")


def _read_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise RecipeInputError(f"config file {path} does not exist. Check the path, or list configs with `finetune-recipes list`.")
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise RecipeInputError(f"config file {path} is not valid YAML; fix it where the parser points: {err}") from None
    except UnicodeDecodeError as err:
        raise RecipeInputError(
            f"config file {path} is not valid UTF-8: byte 0x{err.object[err.start]:02x} at byte offset {err.start}. "
            "Re-encode it as UTF-8."
        ) from None
    if not isinstance(content, dict):
        raise RecipeInputError(f"config file {path} must be a mapping of option: value, not {type(content).__name__}.")
    return content


def parse_args(
    dataclass_types: tuple[type, ...],
    argv: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    prog: str | None = None,
    description: str | None = None,
) -> tuple[Any, ...]:
    """Build one instance of each dataclass from defaults < YAML (--config) < command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(dataclass_types, allow_abbrev=False, prog=prog, description=description)
    parser.add_argument("--config", default=None, help="YAML file of options; command-line flags override it.")
    actions = {action.dest: action for action in parser._actions}
    for alias, target in ALIASES.items():
        if target in actions:
            parser.add_argument(
                f"--{alias}", dest=target, type=actions[target].type, default=argparse.SUPPRESS, help=f"Same as --{target}."
            )
    dests = _dests(parser)

    config_path = None
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
        elif token.startswith("--config="):
            config_path = token.split("=", 1)[1]
    values: dict[str, Any] = dict(defaults or {})
    from_config: dict[str, str] = {}
    if config_path:
        for key, value in _read_yaml(config_path).items():
            if key not in dests or key == "config":
                raise RecipeInputError(f"unknown key '{key}' in {config_path}{nearest(key, dests)}.")
            values[dests[key]] = value
            from_config[dests[key]] = config_path
    given = {dests.get(token[2:].split("=")[0]) for token in argv if token.startswith("--")}
    # Local data named on the command line replaces a Hub dataset that only the YAML names.
    if given & LOCAL_DATA_OPTIONS and "dataset_name" in from_config and "dataset_name" not in given:
        for dest in ("dataset_name", "dataset_config_name"):
            if dest not in given:
                values[dest] = None
                from_config.pop(dest, None)
    parser.from_config = {dest: path for dest, path in from_config.items() if dest not in given}
    parser.set_defaults(**values)

    namespace, remaining = parser.parse_known_args(argv)
    unknown = [token for token in remaining if token.startswith("-")] or remaining
    if unknown:
        key = unknown[0].lstrip("-").split("=")[0]
        raise RecipeInputError(f"unknown option '{unknown[0]}'{nearest(key, dests)}. See --help for every option.")

    options = vars(namespace)
    precision_reason = _apply_policies(options)

    instances = []
    for dtype in dataclass_types:
        kwargs = {f.name: options[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in options}
        try:
            instances.append(dtype(**kwargs))
        except RecipeInputError:
            raise
        except (ValueError, TypeError) as err:
            raise RecipeInputError(f"invalid {dtype.__name__}: {err}") from None
        if isinstance(instances[-1], RunArguments):
            instances[-1].precision_reason = precision_reason
    for instance in instances:
        if isinstance(instance, RunArguments):
            instance.arguments = tuple(other for other in instances if other is not instance)
    return tuple(instances)


def choose_precision(options: dict[str, Any]) -> tuple[str, str]:
    """(precision, why): explicit flags, then accelerate's mixed_precision, then what the hardware does well."""
    import torch

    if options.get("bf16") or options.get("fp16"):
        return ("bf16" if options.get("bf16") else "fp16"), "set explicitly with --bf16/--fp16"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched in ("bf16", "fp16"):
        return launched, "set by the accelerate config (mixed_precision)"
    requested = options.get("precision", "auto")
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise RecipeInputError(f"--precision {requested}: use auto, fp32, bf16 or fp16.")
    if requested != "auto":
        return requested, f"--precision {requested}"
    if options.get("use_cpu") or not torch.cuda.is_available():
        return "fp32", "auto: no GPU (bf16 on CPU is far slower than fp32)"
    if torch.cuda.is_bf16_supported():
        return "bf16", f"auto: {torch.cuda.get_device_name()} supports bf16"
    return "fp16", f"auto: {torch.cuda.get_device_name()} lacks bf16, so fp16 with loss scaling"


def world_size() -> int:
    """Processes in this run, as accelerate or torchrun announce them before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_distributed(options: dict[str, Any], processes: int) -> None:
    """Refuse, before anything loads, the options that cannot work when `processes` > 1 train together.

    The rest of the toolkit copes with several processes: early stopping decides on gathered eval metrics, so
    every process stops at the same step; CV runs the folds one after another with every process on each fold;
    HPO lets rank 0 drive optuna while the others follow its trials; the feature cache is written by the main
    process and read by the others.
    """
    if processes > 1 and options.get("unfreeze_schedule"):
        raise RecipeInputError(UNFREEZE_UNDER_DDP.format(processes=processes))


def choose_find_unused_parameters(model: Any, activation_checkpointing: bool = False) -> tuple[bool, str]:
    """(DDP's find_unused_parameters, why): True only where a trainable parameter can miss its gradient.

    DDP's reducer holds only the parameters that require grad when it wraps the model, so frozen weights
    (--freeze, PEFT's base model) never count as unused. True makes DDP walk the autograd graph after every
    forward to find parameters that will get no gradient: wasted time where there are none, and an error
    with reentrant activation checkpointing. False fails the first step where a trainable parameter gets no
    gradient, so True is chosen where that happens by design.
    """
    from transformers import PreTrainedModel

    from common.feature_cache import CachedHeadModel

    if isinstance(model, CachedHeadModel):
        return False, "--cache_features trains the head alone, every weight of it in every step"
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


def _apply_policies(options: dict[str, Any]) -> str:
    """Settings implied by others, fixed before TrainingArguments validates itself; returns the precision reason."""
    import torch

    processes = world_size()
    check_distributed(options, processes)
    if not torch.cuda.is_available() and processes > 1:
        options["use_cpu"] = True  # several processes without a GPU: DDP on CPU over gloo, not N lone copies
    precision, reason = choose_precision(options)
    options["bf16"], options["fp16"] = precision == "bf16", precision == "fp16"
    if options.get("early_stopping_patience"):
        if options.get("eval_strategy") in (None, "no"):
            options["eval_strategy"] = "epoch"
        options["save_strategy"] = options["eval_strategy"]
        options["load_best_model_at_end"] = True
    if options.get("output_dir") is None:
        options["output_dir"] = "outputs/run"
    return reason
