"""Reliability under faults, the same for every recipe.

- `OutputDirLock`: `run.lock` (PID, host, start) in the output dir while a run writes there; a second run is
  refused, a lock whose process is gone is taken over.
- `publish`: the final model is written to a staging folder and moved into the output dir, `config.json`
  last, so a save cut short never leaves a model that looks complete.
- `last_complete_checkpoint`: `--resume_from_checkpoint latest` skips a checkpoint a crash left half-written.
- `load_checkpoint_weights`: resuming reloads weights that transformers 5 renamed (ViT) through `from_pretrained`.
- `NonFiniteSkips`: the steps skipped by the NaN/inf guard of `FinetuneTrainerMixin` (`--nan_policy`).
- `PreemptionCallback`: on SIGTERM, a checkpoint at the end of the current optimizer step, then a clean stop.
"""

from __future__ import annotations

import contextlib
import datetime
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
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from common.errors import RecipeInputError

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
    """training_args.json in place of Trainer's training_args.bin: the same settings, readable, and no pickle."""
    (folder / "training_args.bin").unlink(missing_ok=True)
    (folder / "training_args.json").write_text(args.to_json_string(), encoding="utf-8")


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
    from safetensors import safe_open
    from transformers import PreTrainedModel

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
        if _agreed(_SIGTERM.is_set(), args):
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


def _agreed(flag: bool, args) -> bool:
    """True on every process when any of them got the signal: they must save and stop at the same step."""
    if args.world_size <= 1 or not torch.distributed.is_initialized():
        return flag
    value = torch.tensor(float(flag), device=args.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())
