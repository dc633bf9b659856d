"""Feature cache: the frozen backbone with and without --cache_features, per epoch after the first."""

from __future__ import annotations

import statistics

from harness import NO_EXTRAS, SST2_CONFIG, SST2_DATA, Budget, Row, Target, cap, ok, plural, verdict

TARGET_CACHE = 10.0  # --cache_features over the frozen backbone, per epoch after the first


def cache_rows(budget: Budget) -> list[Row]:
    """The frozen backbone with and without --cache_features; only that flag differs between the two.

    Random order for both: the config's group_by_length cannot size cached features (they have no input_ids),
    and transformers then fails building the evaluation loader."""
    flags = ["--config", SST2_CONFIG, *SST2_DATA, "--freeze", "backbone", "--learning_rate", "2e-3",
             "--max_train_samples", str(budget.cache_train), "--num_train_epochs", str(budget.cache_epochs),
             "--per_device_train_batch_size", "32", "--train_sampling_strategy", "random", "--eval_strategy", "no",
             *cap("--max_eval_samples", budget.sst2_eval), *NO_EXTRAS]
    words = f"{budget.cache_train} sentences × {plural(budget.cache_epochs, 'epoch')}, batch 32"
    target = Target("accuracy", 0.0, label="dev accuracy")
    return [Row("cache_off", "frozen backbone", "recipes/sentiment.py", flags, "tokens", target, words, 1,
                seeds=(42,)),
            Row("cache_on", "frozen backbone + --cache_features", "recipes/sentiment.py",
                [*flags, "--cache_features", "true"], "tokens", target, words, 1, seeds=(42,))]


def cache_section(caching: list[Row], verdicts: list) -> list[str]:
    if not caching or not all(ok(r.results) for r in caching):
        return []
    plain, cached = (ok(r.results)[0] for r in caching)
    later = statistics.median(plain["epochs"][1:]) / statistics.median(cached["epochs"][1:])
    first = plain["epochs"][0] / (cached["cache_build"] + cached["epochs"][0])
    epochs = len(plain["epochs"])
    lines = ["## Feature cache: the frozen backbone with and without --cache_features (SST-2, MiniLM)", "",
             f"{caching[0].budget}, `--freeze backbone --learning_rate 2e-3 --train_sampling_strategy random`, "
             "seed 42; one run each: the "
             f"per-epoch figure is the median over the {epochs - 1} epochs after the first. Epoch times exclude "
             "evaluation.", "",
             "| run | cache build (s) | " + " | ".join(f"epoch {i + 1} (s)" for i in range(epochs))
             + " | dev accuracy |", "|---|---:|" + "---:|" * epochs + "---:|"]
    for row, r in zip(caching, (plain, cached)):
        lines.append(f"| {row.recipe} | {r['cache_build']:.1f} | " + " | ".join(f"{s:.3g}" for s in r["epochs"])
                     + f" | {r['final']:.4f} |")
    lines += ["", f"- **Per epoch after the first: {later:.0f}× faster with the cache** (target ≥ "
              f"{TARGET_CACHE:g}×). {verdict(later >= TARGET_CACHE)} The first epoch, cache build included: "
              f"{first:.1f}×.", "- The cache build runs the backbone once over train and dev, in eval mode; the "
              "head then trains on the stored features.", ""]
    verdicts.append((f"feature cache ≥ {TARGET_CACHE:g}× per epoch after the first", f"{later:.0f}×",
                     later >= TARGET_CACHE))
    return lines
