"""Padding: the SST-2 arms (padded to 128, dynamic padding + length grouping, dynamic padding in random order),
and the MFU of the full MiniLM fine-tune at seq 128. The arms are the first rows of the recipe table too."""

from __future__ import annotations

from harness import (
    NO_EXTRAS,
    SST2_CONFIG,
    SST2_DATA,
    SST2_LR,
    Budget,
    Context,
    Row,
    Target,
    cap,
    med,
    ok,
    plural,
    verdict,
)

TARGET_MFU = 0.60  # full MiniLM fine-tune at seq 128, as a share of the matmul rate
TARGET_PADDING = 2.0  # dynamic padding + length grouping over padding to 128, train samples/s
# Equal accuracy: one standard error of an accuracy near 0.85 on SST-2 dev's 872 sentences is 0.012.
EQUAL_ACCURACY = 0.02


def sst2_flags(arm: str, budget: Budget) -> list[str]:
    """SST-2 with MiniLM from the recipe's config; the padding arms differ only in the flags added last."""
    flags = ["--config", SST2_CONFIG, *SST2_DATA, "--max_train_samples", str(budget.sst2_train),
             "--num_train_epochs", str(budget.sst2_epochs), "--learning_rate", SST2_LR, "--eval_strategy", "epoch",
             *cap("--max_eval_samples", budget.sst2_eval), *NO_EXTRAS]
    return flags + {
        # what the common example scripts do: every batch padded to 128, random order
        "pad128": ["--pad_to_max_length", "true", "--max_seq_length", "128", "--train_sampling_strategy", "random"],
        "grouped": ["--train_sampling_strategy", "group_by_length"],  # the config's setting, said explicitly
        "random": ["--train_sampling_strategy", "random"],  # dynamic padding alone
    }[arm]


def padding_rows(budget: Budget) -> list[Row]:
    runs = budget.runs
    sst2 = f"{budget.sst2_train} sentences × {plural(budget.sst2_epochs, 'epoch')}, batch 16"
    dev = Target("accuracy", 0.80, label="dev accuracy")
    return [
        Row("sst2_pad128", "sentiment: SST-2, MiniLM full fine-tune, padded to 128", "recipes/sentiment.py",
            sst2_flags("pad128", budget), "tokens", dev, sst2, runs, "minilm"),
        Row("sst2_dynamic", "sentiment: SST-2, MiniLM full fine-tune, dynamic padding + length grouping",
            "recipes/sentiment.py", sst2_flags("grouped", budget), "tokens", dev, sst2, runs, "minilm"),
        Row("sst2_dynamic_random", "sentiment: SST-2, MiniLM full fine-tune, dynamic padding, random order",
            "recipes/sentiment.py", sst2_flags("random", budget), "tokens", dev, sst2, runs, "minilm"),
    ]


def padding_section(ctx: Context, padding: list[Row], verdicts: list) -> list[str]:
    arms = {r.key: ok(r.results) for r in padding}
    if not (arms.get("sst2_pad128") and arms.get("sst2_dynamic")):
        return []
    padded, dynamic = arms["sst2_pad128"], arms["sst2_dynamic"]
    ratio = med(dynamic, "samples_per_s") / med(padded, "samples_per_s")
    acc_padded, acc_dynamic = med(padded, "final"), med(dynamic, "final")
    equal = acc_dynamic >= acc_padded - EQUAL_ACCURACY
    mfu = ctx.mfu(padded)
    lines = ["## Padding: dynamic padding + length grouping versus padding to 128 (SST-2, MiniLM)", "",
             f"Same budget ({padding[0].budget}), learning rate and seeds. **Padded**: `--pad_to_max_length "
             "true --max_seq_length 128 --train_sampling_strategy random`, what the common example scripts do. "
             "**Dynamic**: the recipe's default collator, which pads each batch to its longest, with "
             "`--train_sampling_strategy group_by_length` (the config's setting). **Dynamic, random order**: "
             "dynamic padding alone, to tell the padding from the ordering.", "",
             "| arm | train samples/s | ratio to padded | dev accuracy: median (per seed) | positions per sentence "
             "(computed / real) | MFU |", "|---|---:|---:|---|---:|---:|"]
    for row in padding:
        done = arms[row.key]
        if not done:
            continue
        computed = med([{"v": r["batches"]["padded_tokens"] / r["batches"]["examples"]} for r in done], "v")
        real = med([{"v": r["batches"]["tokens"] / r["batches"]["examples"]} for r in done], "v")
        seeds = ", ".join(f"{r['final']:.3f}" for r in done)
        lines.append(f"| {row.key} | {med(done, 'samples_per_s'):.2f} | "
                     f"{med(done, 'samples_per_s') / med(padded, 'samples_per_s'):.2f}× | "
                     f"{med(done, 'final'):.4f} ({seeds}) | {computed:.1f} / {real:.1f} | {100 * ctx.mfu(done):.1f}% |")
    lines += ["", f"- **Dynamic padding + length grouping over padding to 128: {ratio:.2f}× train samples/s** "
              f"(target ≥ {TARGET_PADDING:g}×), at dev accuracy {acc_dynamic:.4f} against {acc_padded:.4f} "
              f"(medians). Equal accuracy is taken as the dynamic arm's median no more than {EQUAL_ACCURACY} below "
              "the padded arm's (one standard error of an accuracy near 0.85 on 872 sentences is 0.012): "
              f"{'met' if equal else 'not met'}. {verdict(ratio >= TARGET_PADDING and equal)}",
              f"- **MFU of the full MiniLM fine-tune at seq 128: {100 * mfu:.1f}%** of the measured matmul rate "
              f"(target ≥ {100 * TARGET_MFU:.0f}%). {verdict(mfu >= TARGET_MFU)}",
              "- `group_by_length` (transformers' LengthGroupedSampler) sorts each mega-batch of 50 batches by "
              "length, longest first, and does not shuffle the batches afterwards: every mega-batch runs from the "
              "longest sentences to the shortest, and training ends on the shortest. The random-order arm shows "
              "what the padding alone is worth, without that ordering.", ""]
    verdicts += [(f"dynamic padding ≥ {TARGET_PADDING:g}× padded-to-128 samples/s at equal accuracy",
                  f"{ratio:.2f}×, dev accuracy {acc_dynamic:.3f} vs {acc_padded:.3f}",
                  ratio >= TARGET_PADDING and equal),
                 (f"MiniLM full fine-tune at seq 128 ≥ {100 * TARGET_MFU:.0f}% of the matmul rate",
                  f"{100 * mfu:.1f}%", mfu >= TARGET_MFU)]
    return lines
