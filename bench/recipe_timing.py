"""Time a recipe run from inside: epochs, evaluations, training batches, the feature-cache build, a profile.

The recipes build their Trainer inside `common.training.single_run`; `timed_run` wraps `build_trainer` for the duration of
one run and attaches `RunTimer`, and times the feature cache's `cached_task` (as `common.toolkit.finetuning` calls it) the same way. It runs as a probe
around a recipe script, which is how bench/run.py and bench/freezing.py run every recipe, in a subprocess, through
the script's own command line:

    python bench/recipe_timing.py --timing t.json [--profile 10:3:prof.json] -- recipes/sentiment.py --flags ...

The script runs as `__main__`; t.json gets the timings (seconds from process start) and the training-batch
counts below. `--profile START:STEPS:FILE` records torch.profiler over optimizer steps START..START+STEPS: FILE gets
the ops as JSON, FILE with .txt its table.
"""

from __future__ import annotations

import os
import sys
import time

START = time.perf_counter()  # process start, near enough: before torch and transformers are imported

import json  # noqa: E402
import runpy  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import TrainerCallback  # noqa: E402

import common.toolkit.finetuning  # noqa: E402
import common.training.single_run  # noqa: E402


def now() -> float:
    return time.perf_counter() - START


class BatchCounter:
    """Wraps the training collator: counts what each batch holds before and after padding, and times it.

    Only the train dataloader gets it, so evaluation batches are not counted. With dataloader workers the
    collator runs in the workers and the counts stay there: the probe keeps them at 0 (the recipes' default).
    """

    def __init__(self, collator, sampling_rate: int | None):
        self.collator, self.sampling_rate = collator, sampling_rate
        self.counts = {"batches": 0, "examples": 0, "tokens": 0, "padded_tokens": 0, "attention_positions": 0,
                       "audio_seconds": 0.0, "padded_audio_seconds": 0.0, "collate_seconds": 0.0}
        self.sample = None  # the first full batch, for counting FLOPs after the run

    def __call__(self, rows):
        start = time.perf_counter()
        batch = self.collator(rows)
        c = self.counts
        c["collate_seconds"] += time.perf_counter() - start
        c["batches"] += 1
        c["examples"] += len(rows)
        first = rows[0]
        if "input_ids" in first:  # text: real tokens per row; padded: what the model computes on
            c["tokens"] += sum(sum(r["attention_mask"]) if "attention_mask" in r else len(r["input_ids"]) for r in rows)
            c["padded_tokens"] += int(batch["input_ids"].numel())
            c["attention_positions"] += int(batch["input_ids"].shape[0] * batch["input_ids"].shape[1] ** 2)
            labels = batch.get("labels")
            if labels is not None and labels.dim() == 2 and not labels.is_floating_point():  # seq2seq targets
                c["tokens"] += int((labels != -100).sum())
                c["padded_tokens"] += int(labels.numel())
        elif "input_values" in first and self.sampling_rate:  # raw waveforms (wav2vec2-style CTC)
            c["audio_seconds"] += sum(len(r["input_values"]) for r in rows) / self.sampling_rate
            c["padded_audio_seconds"] += batch["input_values"].numel() / self.sampling_rate
        if self.sample is None:
            self.sample = batch
        return batch

    def sample_share(self) -> float:
        """The first batch's share of all the training work, in the unit that FLOPs grow with."""
        c, batch = self.counts, self.sample
        if c["padded_tokens"]:
            labels = batch.get("labels")
            tokens = batch["input_ids"].numel()
            if labels is not None and labels.dim() == 2 and not labels.is_floating_point():
                tokens += labels.numel()
            return tokens / c["padded_tokens"]
        if c["padded_audio_seconds"]:
            return batch["input_values"].numel() / self.sampling_rate / c["padded_audio_seconds"]
        return len(next(iter(batch.values()))) / c["examples"]


def counted_flops(model, batch) -> float:
    """FLOPs of one training step's forward and backward on `batch`, by torch's FlopCounterMode.

    Counts matmuls and convolutions (and fused attention kernels where torch has a formula: not the CPU flash
    kernel, so attention is missed when the model runs it; a small share for the models here)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


class RunTimer(TrainerCallback):
    """Wall-clock marks of one Trainer: training begin/end, epochs, every evaluation with its metrics."""

    def __init__(self, profile: tuple[int, int, str] | None = None):
        self.marks: dict = {"epochs": [], "evaluations": [], "train_begin": None, "train_end": None}
        self.profile, self.profiler = profile, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks["train_begin"] = now()

    def on_train_end(self, args, state, control, **kwargs):
        self.marks["train_end"] = now()
        self.marks["global_step"] = state.global_step
        self.marks["epoch"] = state.epoch

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_start = now()

    def on_epoch_end(self, args, state, control, **kwargs):  # before the epoch's evaluation, so it excludes it
        self.marks["epochs"].append(now() - self.epoch_start)

    def _evaluated(self, state, metrics):
        runtime = next((v for k, v in metrics.items() if k.endswith("_runtime")), 0.0)
        self.marks["evaluations"].append({"end": now(), "runtime": runtime, "step": state.global_step,
                                          "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)}})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._evaluated(state, metrics or {})

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._evaluated(state, metrics or {})

    def on_step_begin(self, args, state, control, **kwargs):
        if self.profile and state.global_step == self.profile[0] and self.profiler is None:
            from torch.profiler import ProfilerActivity, profile

            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()
            self.profile_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None and state.global_step == self.profile[0] + self.profile[1]:
            self.profiler.__exit__(None, None, None)
            seconds = time.perf_counter() - self.profile_start
            events = sorted(self.profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            ops = [{"name": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in events]
            path = Path(self.profile[2])
            path.write_text(json.dumps({"steps": self.profile[1], "wall": seconds, "ops": ops}, indent=1))
            table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
            path.with_suffix(".txt").write_text(f"{self.profile[1]} steps, {seconds:.2f} s wall\n{table}\n")
            self.profiler, self.profile = None, None


@contextmanager
def timed_run(profile: tuple[int, int, str] | None = None):
    """Yield {'epochs': [...], 'cache_build': s, 'trainers': [marks...], 'batches': {...}}, filled by the run."""
    timing: dict = {"epochs": [], "cache_build": 0.0, "trainers": [], "batches": None, "_live": {}}
    build_trainer, cached_task = common.training.single_run.build_trainer, common.toolkit.finetuning.cached_task

    def build_with_timer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        timer = RunTimer(profile)
        timer.marks["epochs"] = timing["epochs"]  # HPO/CV would build several trainers; one list collects all
        timing["trainers"].append(timer.marks)
        trainer.add_callback(timer)
        get_train_dataloader = trainer.get_train_dataloader

        def counted_train_dataloader(*a, **kw):
            collator = trainer.data_collator
            extractor = getattr(trainer.processing_class, "feature_extractor", trainer.processing_class)
            counter = BatchCounter(collator, getattr(extractor, "sampling_rate", None))
            timing["batches"] = counter.counts
            timing["_live"] = {"trainer": trainer, "counter": counter}  # objects for the probe, not for JSON
            trainer.data_collator = counter  # the loader keeps the collator it was built with
            try:
                return get_train_dataloader(*a, **kw)
            finally:
                trainer.data_collator = collator

        trainer.get_train_dataloader = counted_train_dataloader
        return trainer

    def timed_cached_task(*args, **kwargs):
        start = time.perf_counter()
        task = cached_task(*args, **kwargs)
        timing["cache_build"] += time.perf_counter() - start
        return task

    common.training.single_run.build_trainer, common.toolkit.finetuning.cached_task = build_with_timer, timed_cached_task
    try:
        yield timing
    finally:
        common.training.single_run.build_trainer, common.toolkit.finetuning.cached_task = build_trainer, cached_task


def probe(argv: list[str]) -> int:
    """Run a recipe script as __main__ under `timed_run`; write the timings as JSON. Returns its exit code."""
    import argparse

    import torch

    split = argv.index("--")
    parser = argparse.ArgumentParser(description="time a recipe script run")
    parser.add_argument("--timing", required=True, help="JSON file for the timings")
    parser.add_argument("--profile", default=None, help="START:STEPS:FILE, torch.profiler over those steps")
    options = parser.parse_args(argv[:split])
    script, *flags = argv[split + 1:]
    profile = None
    if options.profile:
        first, steps, file = options.profile.split(":", 2)
        profile = (int(first), int(steps), file)

    code = 0
    sys.argv = [script, *flags]
    with timed_run(profile) as timing:
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_:  # run_main exits with the recipe's status
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    timing["end"] = now()
    timing["torch_threads"] = torch.get_num_threads()
    live = timing.pop("_live")
    if code == 0 and live and live["counter"].sample is not None:
        flops = counted_flops(live["trainer"].model, live["counter"].sample)
        timing["training_flops"] = flops / live["counter"].sample_share()
    Path(options.timing).write_text(json.dumps(timing, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(probe(sys.argv[1:]))
