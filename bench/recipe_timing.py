"""Run the text-classification recipe on SST-2 and time every training epoch (shared by the freezing benches).

The recipe builds its Trainer inside `common.runner`; a timing callback is attached by wrapping
`build_trainer` for the duration of one run, and the feature-cache build is timed the same way.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import TrainerCallback  # noqa: E402

import common.feature_cache  # noqa: E402
import common.runner  # noqa: E402

SST2 = ROOT.parent / "shared" / "data" / "sst2"


class EpochTimer(TrainerCallback):
    """Wall-clock seconds of each training epoch (evaluation excluded: it runs after on_epoch_end)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)


@contextmanager
def timed_run():
    """Yield {'epochs': [...], 'cache_build': s}; filled by the recipe run made inside the block."""
    timing: dict = {"epochs": [], "cache_build": 0.0}
    build_trainer, cached_task = common.runner.build_trainer, common.feature_cache.cached_task

    def build_with_timer(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        timer = EpochTimer()
        timer.seconds = timing["epochs"]  # HPO/CV would build several trainers; one list collects all
        trainer.add_callback(timer)
        return trainer

    def timed_cached_task(*args, **kwargs):
        start = time.perf_counter()
        task = cached_task(*args, **kwargs)
        timing["cache_build"] += time.perf_counter() - start
        return task

    common.runner.build_trainer, common.feature_cache.cached_task = build_with_timer, timed_cached_task
    try:
        yield timing
    finally:
        common.runner.build_trainer, common.feature_cache.cached_task = build_trainer, cached_task


def sst2_flags(output_dir: Path, model: str, train_samples: int, epochs: int, **options) -> list[str]:
    """Recipe flags for an SST-2 run: `train_samples` sentences, the whole dev set, no checkpoints."""
    flags = ["--model_name_or_path", model, "--train_file", str(SST2 / "train.tsv"),
             "--validation_file", str(SST2 / "dev.tsv"), "--max_train_samples", str(train_samples),
             "--output_dir", str(output_dir), "--overwrite_output_dir", "--num_train_epochs", str(epochs),
             "--per_device_train_batch_size", "32", "--eval_strategy", "no", "--save_strategy", "no",
             "--do_predict", "false", "--logging_steps", "50", "--disable_tqdm", "true", "--seed", "0"]
    for key, value in options.items():
        flags += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return flags


def run_recipe(flags: list[str]) -> tuple[dict, dict, float]:
    """(results, timing, wall seconds) of one text-classification run."""
    from recipes import text_classification

    start = time.perf_counter()
    with timed_run() as timing:
        results = text_classification.main(flags)
    return results, timing, time.perf_counter() - start
