"""What to freeze: dev accuracy and training time of each freezing option on SST-2 with MiniLM.

    python bench/freezing.py [--train_samples 800] [--epochs 3]

Same data, seed, batch size (32) and number of epochs for every row but the last, which spends the time the
cache saves on more epochs; whole-model rows use lr 1e-4, head-only rows 1e-2 (a linear head needs a larger
step). Prints a markdown table and writes it to bench/freezing_results.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from recipe_timing import run_recipe, sst2_flags

from common.tiny_models import minilm_dir

RESULTS = Path(__file__).with_name("freezing_results.md")
FULL, HEAD = 1e-4, 1e-2
CONFIGS = [  # name, recipe options
    ("--freeze none (full fine-tuning)", {"learning_rate": FULL}),
    ("--freeze embeddings", {"learning_rate": FULL, "freeze": "embeddings"}),
    ("--freeze bottom:4", {"learning_rate": FULL, "freeze": "bottom:4"}),
    ("--layer_lr_decay 0.8", {"learning_rate": FULL, "layer_lr_decay": 0.8}),
    ("--unfreeze_schedule epoch", {"learning_rate": FULL, "unfreeze_schedule": "epoch"}),
    ("--freeze bottom:4 --layer_lr_decay 0.8 --unfreeze_schedule 1,2",
     {"learning_rate": FULL, "freeze": "bottom:4", "layer_lr_decay": 0.8, "unfreeze_schedule": "1,2"}),
    ("--freeze backbone", {"learning_rate": HEAD, "freeze": "backbone"}),
    ("--freeze backbone --cache_features", {"learning_rate": HEAD, "freeze": "backbone", "cache_features": "true"}),
    ("--freeze backbone --cache_features", {"learning_rate": HEAD, "freeze": "backbone", "cache_features": "true",
                                            "num_train_epochs": 20}),
]


def trainable_share(options: dict) -> str:
    """Trainable parameters at the start of training, as a share of MiniLM's."""
    from transformers import AutoModelForSequenceClassification

    from common.config import FinetuneArguments
    from common.freezing import apply_freezing

    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    keys = ("freeze", "unfreeze_schedule", "layer_lr_decay")
    finetune = {k: ([v] if k == "freeze" else v) for k, v in options.items() if k in keys}
    apply_freezing(model, FinetuneArguments(**finetune))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{100 * trainable / sum(p.numel() for p in model.parameters()):.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_samples", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    options = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(CONFIGS):
            flags = sst2_flags(Path(tmp) / f"run{i}", minilm_dir(), options.train_samples, options.epochs, **extra)
            results, timing, _ = run_recipe(flags)
            train_time = sum(timing["epochs"]) + timing["cache_build"]
            rows.append((name, trainable_share(extra), extra["learning_rate"], len(timing["epochs"]),
                         results["eval_accuracy"], train_time, timing["epochs"][-1]))
            print(f"{name}: dev accuracy {results['eval_accuracy']:.3f}, training {train_time:.0f} s", flush=True)

    lines = [
        f"# Freezing options: SST-2 dev accuracy (872 sentences), all-MiniLM-L6-v2, {options.train_samples} train "
        f"sentences, batch 32, seed 0",
        "",
        "| options | trainable at start | lr | epochs | dev accuracy | training time (s) | last epoch (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, share, lr, epochs, accuracy, seconds, last in rows:
        lines.append(f"| `{name}` | {share} | {lr:g} | {epochs} | {accuracy:.3f} | {seconds:.0f} | {last:.1f} |")
    lines += ["", "Training time is the sum of the epochs plus, with --cache_features, the cache build "
              "(one backbone pass over train and dev). Measured on a shared 2-core CPU: compare rows, not machines."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
