"""Reliability under faults, the same for every recipe.

- `OutputDirLock`: `run.lock` (PID, host, start) in the output dir while a run writes there; a second run is
  refused, a lock whose process is gone is taken over.
- `publish`: the final model is written to a staging folder and moved into the output dir, `config.json`
  last, so a save cut short never leaves a model that looks complete.
- `last_complete_checkpoint`: `--resume_from_checkpoint latest` skips a checkpoint a crash left half-written.
- `load_checkpoint_weights`: resuming reloads weights that transformers 5 renamed (ViT) through `from_pretrained`.
- `NonFiniteSkips`: the steps skipped by the NaN/inf guard of `FinetuneTrainerMixin` (`--nan_policy`).
- `PreemptionCallback`: on SIGTERM, a checkpoint at the end of the current optimizer step, then a clean stop.
- `run_fingerprint` / `check_resume`: every checkpoint keeps `run_fingerprint.json` (the options that shape
  training and the data files' sizes and hashes); `--resume_from_checkpoint` refuses a run whose options or data
  differ from the checkpoint's, naming each change, unless `--resume_ignore_changes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from common.core.config import ArgumentGroups, RunArguments
from common.core.errors import RecipeInputError
from common.models.loading import ModelArguments

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
STAGING_NAME = ".final_model.partial"
CONFIG_NAME = "config.json"
# Written by transformers' own JIT checkpointing while a checkpoint is in progress.
INCOMPLETE_MARKER = "checkpoint-is-incomplete.txt"
# _save_checkpoint writes it after the weights, optimizer, scheduler and RNG states.
TRAINER_STATE_NAME = "trainer_state.json"


# --- lock file ---------------------------------------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), which tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the fields after the ")" of the name start at 3


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in the lock; {} while another run is still writing it; None when there is no lock."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return True  # a lock being written, or one taken on another machine: it cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, run by another user
    recorded, started = holder.get("process_start"), process_start(pid)
    return recorded is None or started is None or recorded == started


def _refusal(out: Path, path: Path, holder: dict[str, Any]) -> str:
    who = (
        f"process {holder['pid']} on {holder.get('host', '?')} (started {holder.get('started', '?')})"
        if "pid" in holder
        else "a run that is taking the lock right now"
    )
    return (
        f"output_dir {out} is in use by another run: {who} holds the lock file {path}. Wait for it to "
        f"finish or choose another --output_dir; if that process is gone, delete {path}."
    )


def check_output_lock(output_dir: str | Path) -> None:
    """Refuse early, before any data is loaded, when a live run holds the output dir. Writes nothing."""
    out = Path(output_dir)
    holder = _read_lock(out / LOCK_NAME)
    if holder is not None and _alive(holder):
        raise RecipeInputError(_refusal(out, out / LOCK_NAME, holder))


class OutputDirLock:
    """`run.lock` in the output dir for the length of a run; the main process alone takes it."""

    def __init__(self, output_dir: str | Path):
        self.out = Path(output_dir)
        self.path = self.out / LOCK_NAME
        self.held = False
        self._made_dir = False

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self._made_dir = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "process_start": process_start(os.getpid()),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        for _ in range(3):
            try:
                # O_EXCL: of two runs creating the lock at once, exactly one succeeds.
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(self.path)
                if holder is None:
                    continue  # released in the meantime
                if _alive(holder):
                    self._drop_made_dir()
                    raise RecipeInputError(_refusal(self.out, self.path, holder)) from None
                logger.warning(
                    "taking over the stale lock %s: its process %s (%s) is no longer running",
                    self.path,
                    holder.get("pid"),
                    holder.get("started"),
                )
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(me, file)
            self.held = True
            return
        raise RecipeInputError(f"could not take the lock file {self.path}: other runs keep taking it.")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = _read_lock(self.path)
        if holder and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self._drop_made_dir()

    def _drop_made_dir(self) -> None:
        # A run that failed before writing anything leaves no trace, not even the folder it created for the lock.
        if self._made_dir:
            with contextlib.suppress(OSError):  # not empty: something else is in it
                self.out.rmdir()


# --- atomic final save ------------------------------------------------------------------------------------------


def publish(staging: Path, out: Path) -> None:
    """Move everything in `staging` into `out`, `config.json` last, then drop `staging`.

    `from_pretrained` and `pipeline()` need `config.json`, so its absence marks a model as incomplete: the old
    one is removed first, and a move cut short leaves a folder that does not load rather than a mix of two models.
    """
    (out / CONFIG_NAME).unlink(missing_ok=True)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_NAME):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def write_training_args(folder: Path, args) -> None:
    """training_args.json in place of Trainer's training_args.bin: the same settings, readable, and no pickle.

    A resumed run adds `resumed` (the checkpoint, and the option changes --resume_ignore_changes let through,
    which the checkpoint's optimizer and scheduler state overrode); a checkpoint also gets run_fingerprint.json.
    """
    (folder / "training_args.bin").unlink(missing_ok=True)
    record: RunRecord | None = getattr(args, RUN_RECORD_ATTR, None)
    text = args.to_json_string()
    if record is not None and record.resumed is not None:
        text = json.dumps({"resumed": record.resumed, **json.loads(text)}, indent=2) + "\n"
    (folder / "training_args.json").write_text(text, encoding="utf-8")
    if record is not None and _CHECKPOINT.match(folder.name):
        (folder / FINGERPRINT_NAME).write_text(json.dumps(record.fingerprint, indent=2) + "\n", encoding="utf-8")


# --- checkpoints ------------------------------------------------------------------------------------------------

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(path: Path) -> bool:
    return (path / TRAINER_STATE_NAME).is_file() and not (path / INCOMPLETE_MARKER).exists()


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N in output_dir that was written to the end; half-written ones are skipped (logged)."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    for _, path in reversed(found):
        if is_complete_checkpoint(path):
            return str(path)
        logger.warning("skipping %s: it has no %s, so its save was cut short", path, TRAINER_STATE_NAME)
    return None


def load_checkpoint_weights(model: torch.nn.Module, checkpoint: str | Path) -> Any | None:
    """Load a checkpoint's weights into `model` through `from_pretrained`, when its keys are not the model's own.

    transformers 5 renames some models' modules (ViT's encoder.layer.N.attention.attention.query became
    layers.N.attention.q_proj) and `save_pretrained` writes the original names back, but Trainer resumes and
    reloads the best model with a bare `load_state_dict`, which then leaves every renamed weight as initialised
    (transformers issue #43701). `from_pretrained` applies the renaming. Returns load_state_dict's result, or
    None when every saved key is one of the model's (tied weights are saved once) or the model is not a plain
    PreTrainedModel: then Trainer's own loading is right.
    """
    weights, index = Path(checkpoint) / "model.safetensors", Path(checkpoint) / "model.safetensors.index.json"
    if not isinstance(model, PreTrainedModel) or getattr(model, "_hf_peft_config_loaded", False):
        return None
    if weights.is_file():
        with safe_open(str(weights), framework="pt") as file:
            saved_keys = set(file.keys())
    elif index.is_file():  # sharded: the index maps every key to its shard
        saved_keys = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    else:
        return None
    if saved_keys <= set(model.state_dict()):
        return None
    saved = type(model).from_pretrained(
        str(checkpoint), config=model.config, dtype=next(model.parameters()).dtype
    )
    return model.load_state_dict(saved.state_dict(), strict=False)


# --- resume guard ----------------------------------------------------------------------------------------------

FINGERPRINT_NAME = "run_fingerprint.json"
FINGERPRINT_VERSION = 1
# setup_run hangs a RunRecord on the TrainingArguments under this name; write_training_args reads it back.
RUN_RECORD_ATTR = "run_record"
# The TrainingArguments that shape the optimisation. Output, logging, evaluation and save cadence, reporting,
# dataloader workers and the resume options themselves may change between a checkpoint and its resumption.
TRAINING_OPTIONS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "auto_find_batch_size", "num_train_epochs",
    "max_steps", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args",
    "optim_target_modules", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "label_smoothing_factor", "average_tokens_across_devices", "neftune_noise_alpha", "bf16", "fp16", "tf32",
    "seed", "data_seed", "full_determinism", "train_sampling_strategy", "length_column_name",
    "dataloader_drop_last", "remove_unused_columns", "label_names",
)
# Fields of the data, model and fine-tuning groups that do not shape training.
NOT_FINGERPRINTED = frozenset({"preprocessing_num_workers", "cache_dir"})
# Options of the data groups that name local files or folders: compared by content, not by path.
_PATH_OPTION = re.compile(r"(_file|_dir|_folder)$|^dataset_name$")
HASH_LIMIT = 256 * 2**20  # bigger files are compared by size and modification time


@dataclasses.dataclass
class RunRecord:
    fingerprint: dict[str, Any]
    resumed: dict[str, Any] | None = None  # set when the run resumed from a checkpoint
    command: list[str] | None = None  # how the run was started, when known (RunArguments.command)
    options: dict[str, Any] | None = None  # every option the run set, as a YAML config takes them (RunArguments.options)
    given: frozenset[str] = frozenset()  # the options the user set, in the config or on the command line


def carry_run_record(source, target) -> None:
    """Keep the record on TrainingArguments rebuilt with dataclasses.replace (which drops extra attributes)."""
    record = getattr(source, RUN_RECORD_ATTR, None)
    if record is not None:
        setattr(target, RUN_RECORD_ATTR, record)


def plain_value(value: Any) -> Any:
    """A setting as JSON data, for comparing and recording: enums by value, containers as dicts and lists, any
    other object as its text."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and content hash of a data file (size and mtime above HASH_LIMIT); for a folder, its files' names,
    sizes and modification times (hidden entries aside)."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        found = {"path": str(path.resolve()), "kind": "file", "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if stat.st_size <= HASH_LIMIT:
            found["sha256"] = _sha256(path)
        return found
    listing, times, count, size = hashlib.sha256(), hashlib.sha256(), 0, 0
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            file = Path(root) / name
            with contextlib.suppress(OSError):  # a dangling link is no data
                stat = file.stat()
                relative = file.relative_to(path).as_posix()
                listing.update(f"{relative}\t{stat.st_size}\n".encode())
                times.update(f"{relative}\t{stat.st_mtime_ns}\n".encode())
                count, size = count + 1, size + stat.st_size
    return {"path": str(path.resolve()), "kind": "folder", "files": count, "size": size,
            "listing_sha256": listing.hexdigest(), "mtimes_sha256": times.hexdigest()}


def run_fingerprint(training_args, arguments: tuple[Any, ...], processes: int) -> dict[str, Any]:
    """What a checkpoint was trained with: every data, model, fine-tuning and augmentation option (a few aside),
    the TRAINING_OPTIONS, the number of processes, and the content of each local data file or folder named."""
    options: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for group in arguments:
        if isinstance(group, (TrainingArguments, RunArguments)) or not dataclasses.is_dataclass(group):
            continue
        data_group = not isinstance(group, (ModelArguments, ArgumentGroups))  # the fine-tuning options
        for item in dataclasses.fields(group):
            if not item.init or item.name in NOT_FINGERPRINTED:
                continue
            value = getattr(group, item.name)
            options[item.name] = plain_value(value)
            if data_group and isinstance(value, str) and _PATH_OPTION.search(item.name) and Path(value).exists():
                data[item.name] = data_fingerprint(value)
    settings = training_args.to_dict()
    options.update({name: plain_value(settings[name]) for name in TRAINING_OPTIONS if name in settings})
    return {"version": FINGERPRINT_VERSION, "processes": processes, "options": options, "data": data}


def _show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value) if not isinstance(value, str) else value


def _data_change(name: str, old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """None when both name the same data; otherwise what differs."""
    where = f"--{name} {old['path']}" + (f" -> {new['path']}" if new["path"] != old["path"] else "")
    if old.get("kind") != new.get("kind"):
        return f"{where}: a {old.get('kind')} then, a {new.get('kind')} now"
    if old["kind"] == "file":
        if old["size"] != new["size"]:
            return f"{where}: different data file ({old['size']} -> {new['size']} bytes)"
        if old.get("sha256") and new.get("sha256"):
            if old["sha256"] != new["sha256"]:
                return f"{where}: different data file (same size, sha256 {old['sha256'][:12]} -> {new['sha256'][:12]})"
            return None
        if old["mtime_ns"] != new["mtime_ns"]:
            return f"{where}: the data file was modified since the checkpoint (same size, newer modification time)"
        return None
    if old["listing_sha256"] != new["listing_sha256"]:
        return (f"{where}: different data folder ({old['files']} files, {old['size']} bytes -> "
                f"{new['files']} files, {new['size']} bytes, or other file names or sizes)")
    if old["mtimes_sha256"] != new["mtimes_sha256"]:
        return f"{where}: files in the data folder were modified since the checkpoint (same names and sizes)"
    return None


def compare_fingerprints(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every difference, one line each: `--option old -> new`, or the data file or folder that changed."""
    changes: list[str] = []
    old_options, new_options = old.get("options", {}), new.get("options", {})
    old_data, new_data = old.get("data", {}), new.get("data", {})
    for name, value in new_options.items():
        if name not in old_options:  # an option the checkpoint's code did not have
            continue
        if name in old_data and name in new_data:
            change = _data_change(name, old_data[name], new_data[name])
            if change:
                changes.append(change)
        elif old_options[name] != value:
            changes.append(f"--{name} {_show(old_options[name])} -> {_show(value)}")
    if old.get("processes") not in (None, new.get("processes")):
        changes.append(f"processes {old['processes']} -> {new.get('processes')} (the effective batch size changes)")
    return changes


def check_resume(checkpoint: str | Path, fingerprint: dict[str, Any], ignore_changes: bool) -> dict[str, Any]:
    """Before any data is loaded: refuse to resume `checkpoint` with other options or data than it was trained
    with, naming each change, unless `ignore_changes` (then a WARNING per change). Returns the `resumed` record."""
    path = Path(checkpoint) / FINGERPRINT_NAME
    resumed: dict[str, Any] = {"from_checkpoint": str(checkpoint)}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning(
            "resuming %s without comparing options: it has no readable %s (written by an older version), so "
            "nothing could be compared. Make sure the data and options are those it was trained with.",
            checkpoint, FINGERPRINT_NAME,
        )
        return {**resumed, "options_compared": False}
    changes = compare_fingerprints(saved, fingerprint)
    if changes and not ignore_changes:
        listed = "".join(f"\n  {change}" for change in changes)
        raise RecipeInputError(
            f"--resume_from_checkpoint {checkpoint}: this run differs from the one that wrote the checkpoint:"
            f"{listed}\nResuming restores the checkpoint's optimizer and learning-rate schedule, so these changes "
            "would not take effect as written (or would silently mix two runs). Resume with the checkpoint's "
            "options and data, start afresh in another --output_dir, or pass --resume_ignore_changes to continue "
            "anyway (training_args.json then records the ignored changes)."
        )
    for change in changes:
        logger.warning("--resume_ignore_changes: resuming %s despite %s", checkpoint, change)
    resumed.update(options_compared=True, ignored_changes=changes)
    if changes:
        resumed["note"] = (
            "Resumed with --resume_ignore_changes: the optimizer and learning-rate scheduler state restored from "
            "the checkpoint governed the learning rate, so where an ignored change concerns the optimisation "
            "(learning_rate, schedule, warmup, steps, batch size), the value in this file is not what trained."
        )
    return resumed


# --- NaN / inf guard --------------------------------------------------------------------------------------------


class NonFiniteSkips(TrainerCallback, ExportableState):
    """The global steps whose optimizer update --nan_policy skip dropped.

    As an ExportableState it is saved in every checkpoint's trainer_state.json, so a resumed run keeps counting.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"steps": list(self.steps)}}


# --- preemption -------------------------------------------------------------------------------------------------

# Process-wide like the signal itself: once it arrives, every trainer of this process (HPO trials included)
# stops at its next step boundary, until the runner reports the preemption.
_SIGTERM = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGTERM.set()


def preempted() -> bool:
    return _SIGTERM.is_set()


def clear_preemption() -> None:
    _SIGTERM.clear()


class PreemptionCallback(TrainerCallback):
    """--enable_jit_checkpoint: on SIGTERM, save a checkpoint at the end of the current optimizer step and stop.

    The checkpoint goes through the Trainer's own save at the step boundary, so it is the same as a periodic one
    (weights, optimizer, scheduler, RNG states) and a resumed run continues exactly. The SIGTERM handler is set
    only while training runs: before and after, SIGTERM ends the process as usual.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # signal.signal works only in the main thread; elsewhere SIGTERM keeps its usual effect.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _on_sigterm)

    def on_step_end(self, args, state, control, **kwargs):
        if any_process(_SIGTERM.is_set(), args):
            _SIGTERM.set()
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
            logger.warning(
                "SIGTERM received: saving checkpoint-%d at the end of step %d, then stopping",
                state.global_step,
                state.global_step,
            )

    def on_epoch_end(self, args, state, control, **kwargs):
        # The checkpoint is written: an epoch-end evaluation or save would only delay the exit.
        if self.stopped_at is not None:
            control.should_evaluate = False
            control.should_save = False

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def any_process(flag: bool, args) -> bool:
    """True on every process when it is true on any of them (a signal, a deadline): they must stop at the same step."""
    return bool(agreed_max(float(flag), args))


def agreed_max(value: float, args) -> float:
    """The largest of the processes' values, on every process."""
    if args.world_size <= 1 or not torch.distributed.is_initialized():
        return value
    tensor = torch.tensor(float(value), device=args.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.item()
