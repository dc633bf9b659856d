"""Per-epoch speed of the frozen-backbone feature cache: SST-2 with MiniLM, head-only training.

    python bench/feature_cache.py [--train_samples 2000] [--epochs 3]

Trains the head of all-MiniLM-L6-v2 twice with --freeze backbone: once running the backbone every step, once
from --cache_features. Prints a table of epoch times and the speedup of the epochs after the first (median
over those epochs), and writes the same to bench/feature_cache_results.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from recipe_timing import run_recipe, sst2_flags

from common.tiny_models import minilm_dir

RESULTS = Path(__file__).with_name("feature_cache_results.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    options = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in [("frozen backbone", {}), ("frozen backbone + cache", {"cache_features": "true"})]:
            flags = sst2_flags(Path(tmp) / name.replace(" ", "_"), minilm_dir(), options.train_samples,
                               options.epochs, freeze="backbone", learning_rate=2e-3, **extra)
            results, timing, wall = run_recipe(flags)
            rows.append((name, timing["epochs"], timing["cache_build"], results["eval_accuracy"], wall))

    (_, plain, _, _, _), (_, cached, build, _, _) = rows
    later = statistics.median(plain[1:]) / statistics.median(cached[1:])
    first = plain[0] / (build + cached[0])
    header = " | ".join(f"epoch {i + 1} (s)" for i in range(options.epochs))
    lines = [
        f"# Feature cache: SST-2, all-MiniLM-L6-v2, {options.train_samples} train sentences, batch 32, "
        f"{options.epochs} epochs, --freeze backbone",
        "",
        f"| run | cache build (s) | {header} | dev accuracy | wall (s) |",
        "|---|---:|" + "---:|" * options.epochs + "---:|---:|",
    ]
    for name, epochs, cache, accuracy, wall in rows:
        times = " | ".join(f"{s:.2f}" for s in epochs)
        lines.append(f"| {name} | {cache:.1f} | {times} | {accuracy:.3f} | {wall:.0f} |")
    lines += [
        "",
        f"Speedup per epoch after the first (median): **{later:.0f}x**. "
        f"First epoch including the cache build: {first:.1f}x.",
        "",
        "The cache build runs the backbone once over train and dev (872 sentences); wall time includes model "
        "loading, tokenization and the evaluations before and after training.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
