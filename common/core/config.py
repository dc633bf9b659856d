"""Arguments for every recipe: dataclasses with help text, read from a YAML config plus the command line.

Precedence, lowest first: the recipe's built-in defaults, the YAML file given with ``--config``,
then command-line flags. Unknown keys are errors that name the key and its nearest valid spelling.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

from common.core.errors import RecipeInputError, UnknownOption, nearest

# Extra spellings accepted for TrainingArguments fields, on the command line and in YAML.
ALIASES = {"label_smoothing": "label_smoothing_factor", "epochs": "num_train_epochs", "num_beams": "generation_num_beams"}

# TrainingArguments defaults shared by every recipe; each recipe adds its output_dir and what differs for its
# modality. Evaluating every epoch without checkpoints leaves a plain run's output dir holding only the final
# model (--early_stopping_patience turns saving back on: StoppingArguments.apply_policies).
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
    # On SIGTERM, checkpoint at the next step boundary and stop (common.training.reliability.PreemptionCallback).
    "enable_jit_checkpoint": True,
}


def input_loader_defaults() -> dict[str, Any]:
    """Data loader workers for the recipes that decode and augment each batch (images, audio).

    With a GPU, workers prepare batches while it steps: up to 4 per process, one core left to the process
    itself, kept across epochs (the augmentation's epoch is shared with them). Without one, loading and the
    step share the same cores: on the 2-core CPU of bench/RESULTS.md one worker made both the image and the
    speech recipe slower end to end, so loading stays in the main process there.
    """
    if not torch.cuda.is_available():
        return {}
    cores = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = max(0, min(4, cores - 1))
    return {"dataloader_num_workers": workers, "dataloader_persistent_workers": True} if workers else {}


class ArgumentGroups:
    """Base of a dataclass composed of option groups (dataclasses beside the code that reads them): building it
    runs every group's `check(self)`, and `apply_policies` every group's `policies(options)`, the settings its
    options imply, which parse_args applies before TrainingArguments validates itself. The composition needs to
    know nothing of its groups' insides, and one --help lists them all."""

    def __post_init__(self) -> None:
        for group in reversed(type(self).__mro__):
            if "check" in vars(group):
                vars(group)["check"](self)

    @classmethod
    def apply_policies(cls, options: dict[str, Any]) -> None:
        for group in reversed(cls.__mro__):
            if "policies" in vars(group):
                vars(group)["policies"].__func__(options)


# Field metadata of an option that names local data: one given on the command line replaces a --dataset_name that
# only the YAML names (parse_args), e.g. field(default=None, metadata={"help": ..., LOCAL_DATA: True}).
LOCAL_DATA = "local_data"

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
    # How this run was started (program and options), when known: an HPO study records it so that its summary
    # prints the command that retrains the best trial.
    command: list[str] | None = field(default=None, init=False, repr=False, compare=False)
    # Every option this run set (the recipe's defaults, --config and the command line, before the policies), as
    # a YAML config takes them: such a config repeats the run (an HPO study writes its best trial's as best.yaml).
    options: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    # The options the user set, in --config or on the command line (not the recipe's defaults): a plan that fills
    # in settings (--time_budget) keeps these.
    given: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    # The other argument groups parse_args built with this one (data, model, fine-tuning, training), so that
    # setup_run can fingerprint what shapes training for the checkpoints (common.training.reliability.run_fingerprint).
    arguments: tuple[Any, ...] = field(default=(), init=False, repr=False, compare=False)


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

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field):
        # The LOCAL_DATA mark is for parse_args; argparse takes the rest of the metadata as add_argument's arguments.
        if LOCAL_DATA in field.metadata:
            field = copy.copy(field)
            field.metadata = {k: v for k, v in field.metadata.items() if k != LOCAL_DATA}
        HfArgumentParser._parse_dataclass_field(parser, field)

    def error(self, message: str):
        option = message.split("argument ", 1)[-1].split("/")[0].split(":")[0]
        action = self._option_string_actions.get(option)
        origin = getattr(self, "from_config", {}).get(action.dest) if action is not None else None
        where = f" (set in {origin})" if origin else ""
        raise RecipeInputError(f"{message}{where}. See --help for every option and its type.")


def read_yaml(path: str) -> dict[str, Any]:
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
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _Parser(dataclass_types, allow_abbrev=False, prog=prog, description=description)
    parser.add_argument("--config", default=None, help="YAML file of options; command-line flags override it.")
    actions = {action.dest: action for action in parser._actions}
    if "report_to" in actions:  # several trackers at once, as TrainingArguments takes: --report_to tensorboard mlflow
        actions["report_to"].nargs = "+"
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
        for key, value in read_yaml(config_path).items():
            if key not in dests or key == "config":
                raise UnknownOption(key, f"unknown key '{key}' in {config_path}{nearest(key, dests)}.")
            values[dests[key]] = value
            from_config[dests[key]] = config_path
    given = {dests.get(token[2:].split("=")[0]) for token in argv if token.startswith("--")}
    # Local data named on the command line replaces a Hub dataset that only the YAML names.
    local_data = {f.name for group in dataclass_types for f in dataclasses.fields(group) if f.metadata.get(LOCAL_DATA)}
    if given & local_data and "dataset_name" in from_config and "dataset_name" not in given:
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
    configured = {dest: options[dest] for dest in (*values, *given) if dest in options and dest != "config"}
    # Each argument group may fix settings its options imply, before TrainingArguments validates itself.
    for dtype in dataclass_types:
        if hasattr(dtype, "apply_policies"):
            dtype.apply_policies(options)
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
            instances[-1].command = launch_command(argv, from_sys_argv)
            instances[-1].options = configured
            instances[-1].given = frozenset({*from_config, *given} - {None, "config"})
    for instance in instances:
        if isinstance(instance, RunArguments):
            instance.arguments = tuple(other for other in instances if other is not instance)
    return tuple(instances)


def launch_command(argv: list[str], from_sys_argv: bool) -> list[str] | None:
    """The command line that started this run: `python script.py ...` or `finetune-recipes run recipe ...`;
    None when a caller handed main() its options (a test, a notebook)."""
    program = Path(sys.argv[0]) if sys.argv else None
    if from_sys_argv and program is not None and program.suffix == ".py":
        return ["python", str(program), *argv]
    if program is not None and program.name == "finetune-recipes" and sys.argv[1:2] == ["run"]:
        return ["finetune-recipes", "run", sys.argv[2], *argv]
    return None


def choose_precision(options: dict[str, Any]) -> tuple[str, str]:
    """(precision, why): explicit flags, then accelerate's mixed_precision, then what the hardware does well."""

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


def _apply_policies(options: dict[str, Any]) -> str:
    """Settings implied by others, fixed before TrainingArguments validates itself; returns the precision reason."""

    processes = world_size()
    if not torch.cuda.is_available() and processes > 1:
        options["use_cpu"] = True  # several processes without a GPU: DDP on CPU over gloo, not N lone copies
    precision, reason = choose_precision(options)
    options["bf16"], options["fp16"] = precision == "bf16", precision == "fp16"
    if options.get("output_dir") is None:
        options["output_dir"] = "outputs/run"
    return reason
