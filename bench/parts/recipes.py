"""The recipe table: every recipe on its real data set ($FINETUNE_DATA), with throughput, peak RSS, wall time to a
target and MFU. The SST-2 rows are the padding arms (parts/padding.py)."""

from __future__ import annotations

import statistics
import sys

from harness import (
    CLOTHING_DATA,
    DATA,
    FSDD_DATA,
    MULTI30K_DATA,
    NO_EXTRAS,
    ROOT,
    SEEDS,
    SST2_CONFIG,
    SST2_LR,
    TREC_DATA,
    WORK,
    Budget,
    Context,
    Row,
    Target,
    cap,
    med,
    minilm_shape,
    ok,
    plural,
    shared,
)

from parts.padding import padding_rows


def recipe_rows(budget: Budget, models: dict[str, str]) -> list[Row]:
    runs = budget.runs
    return [
        *padding_rows(budget),
        Row("trec", "text_classification: TREC coarse, MiniLM full fine-tune", "recipes/text_classification.py",
            ["--config", "recipes/configs/text_classification/trec_coarse.yaml", *TREC_DATA, "--max_train_samples",
             str(budget.trec_train), "--num_train_epochs", str(budget.trec_epochs), "--eval_strategy", "epoch",
             *NO_EXTRAS],
            "tokens", Target("accuracy", 0.85, label="validation accuracy"),
            f"{budget.trec_train} questions × {plural(budget.trec_epochs, 'epoch')}, batch 32", runs, "minilm"),
        Row("image", "image_classification: clothing_small, tiny ConvNeXt (random init, 64 px)",
            "recipes/image_classification.py",
            ["--config", "recipes/configs/image_classification/clothing_tiny_convnext.yaml", *CLOTHING_DATA,
             "--model_name_or_path", models["convnext"], "--num_train_epochs", str(budget.image_epochs),
             "--save_augment_preview", "false", *cap("--max_train_samples", budget.image_train),
             *cap("--max_eval_samples", budget.image_eval), *NO_EXTRAS],
            "images", Target("accuracy", 0.20, label="validation accuracy"),
            f"{budget.image_train or 400} images × {plural(budget.image_epochs, 'epoch')}, batch 16, augmented", runs),
        Row("translation", "translation: Multi30k en→de, tiny Marian (random init, d_model 128)",
            "recipes/translation.py",
            ["--config", "recipes/configs/translation/multi30k_tiny_marian.yaml", *MULTI30K_DATA,
             "--model_name_or_path", models["marian"], "--max_train_samples", str(budget.translation_train),
             "--num_train_epochs", "1", "--max_eval_samples", str(budget.translation_eval), "--logging_steps", "20",
             *NO_EXTRAS],
            "tokens", Target("chrf", 10.0, label="validation chrF"),
            f"{budget.translation_train} pairs × 1 epoch, batch 64", runs),
        Row("speech", "speech_recognition: FSDD, tiny wav2vec2 CTC (random init)", "recipes/speech_recognition.py",
            ["--config", "recipes/configs/speech_recognition/fsdd_tiny_ctc.yaml", *FSDD_DATA,
             "--model_name_or_path", models["wav2vec2"], *cap("--max_train_samples", budget.speech_train),
             "--num_train_epochs", str(budget.speech_epochs), *cap("--max_eval_samples", budget.speech_eval),
             *NO_EXTRAS],
            "audio", Target("cer", 0.80, higher_is_better=False, label="validation CER"),
            f"{budget.speech_train or 'all 2415'} clips × {plural(budget.speech_epochs, 'epoch')}, batch 16", runs),
    ]


def build_models(dry_run: bool, quick: bool) -> dict[str, str]:
    """The tiny config-built models the configs name (random weights; no download), built once into WORK.

    Quick mode trains the Marian vocabulary on 2000 lines per language instead of all of Multi30k, into its own
    folder, so a full run never picks it up."""
    where = WORK / ("models-quick" if quick else "models")
    models = {"convnext": where / "tiny-convnext", "marian": where / "tiny-marian-multi30k",
              "wav2vec2": where / "tiny-wav2vec2-ctc"}
    if not dry_run:
        sys.path.insert(0, str(ROOT))
        from common.data.parallel import read_lines
        from common.models import tiny as tiny_models

        if not (models["convnext"] / "config.json").is_file():
            tiny_models.tiny_convnext(models["convnext"], image_size=64)
        if not (models["marian"] / "config.json").is_file():
            lines = 2000 if quick else None
            corpus = [*read_lines(DATA / "multi30k_en_de" / "train.en", "en")[:lines],
                      *read_lines(DATA / "multi30k_en_de" / "train.de", "de")[:lines]]
            tiny_models.tiny_marian(models["marian"], corpus, vocab_size=4000, d_model=128)
        if not (models["wav2vec2"] / "config.json").is_file():
            tiny_models.tiny_wav2vec2_ctc(models["wav2vec2"], hidden_size=64)
    return {k: str(v.relative_to(ROOT)) for k, v in models.items()}


# --- the table ------------------------------------------------------------------------------------------------


def throughput(row: Row, done: list[dict]) -> str:
    if row.unit == "images":
        return f"{med(done, 'samples_per_s'):.1f} images/s"
    if row.unit == "audio":
        return f"{med(done, 'audio_per_s'):.1f} audio s/s"
    real, padded = med(done, "tokens_per_s"), med(done, "padded_tokens_per_s")
    return f"{padded:,.0f} tokens/s ({real:,.0f} non-pad)"


def target_cell(row: Row, done: list[dict]) -> str:
    """Median time over the runs that reached the target (how many did), and each run's final value."""
    reached = [r["reached_s"] for r in done if r["reached_s"] is not None]
    finals = ", ".join(f"{r['final']:.3g}" for r in done)
    if reached:
        return f"{row.target}: **{statistics.median(reached):.0f} s** ({len(reached)} of {len(done)} runs; final {finals})"
    pick = max if row.target.higher_is_better else min
    best = pick(r["best"] for r in done)
    better = f"; best {best:.3g}" if best != pick(r["final"] for r in done) else ""
    return f"{row.target}: not reached in this budget (final {finals}{better})"


def runs_words(budget: Budget) -> str:
    if budget.runs == 1:
        return "one run (seed 42)"
    return (f"{budget.runs} runs (seeds {', '.join(map(str, SEEDS[: budget.runs]))}), and each cell is "
            "the median over them")


def recipes_section(ctx: Context, rows: list[Row]) -> list[str]:
    if not rows:
        return []
    shape = minilm_shape()
    lines = ["## Recipes on their real data", "",
             f"Each row runs the recipe script through its command line: {runs_words(ctx.budget)}. Train samples/s "
             "and throughput count training alone (the evaluations inside the training loop are taken out). Wall "
             "time to target runs from the recipe process's start (imports, data, tokenization, model load and "
             "the evaluation before training all included) to the end of the first evaluation that meets the "
             "target.", "",
             "| recipe: data, model | budget | runs | train samples/s | throughput | peak RSS | wall time to target "
             "| MFU |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for row in rows:
        done = ok(row.results)
        if not done:
            lines.append(f"| {row.recipe} | {row.budget} | 0 of {len(row.results)} | failed | | | | |")
            continue
        runs = f"{len(done)}" + ("" if len(done) == len(row.results) else f" of {len(row.results)}")
        lines.append(f"| {row.recipe} | {row.budget} | {runs} | {med(done, 'samples_per_s'):.2f} | "
                     f"{throughput(row, done)} | {med(done, 'rss') / 2**30:.2f} GiB | {target_cell(row, done)} "
                     f"| {100 * ctx.mfu(done):.1f}% |")
    lines += ["", "- **MFU** = training FLOP/s ÷ the matmul rate above. MiniLM rows: training FLOPs = 6·N·tokens + "
              "12·L·H·Σ(batch·seq²) (the second term is attention's 12·L·H·seq per token), with N = "
              f"{shape['params'] / 1e6:.2f}M encoder-layer parameters (the embeddings are lookups; pooler and head "
              f"see one token per sentence), L = {shape['layers']}, H = {shape['hidden']}, and tokens the positions "
              "the model computes on, padding included. Other rows: forward + backward FLOPs of one training "
              "batch counted by `torch.utils.flop_counter.FlopCounterMode`, scaled to the run by that batch's "
              "share of the padded tokens, padded audio or images.",
              "- **Throughput**: tokens/s counts the positions computed (translation: source plus target), the "
              "non-padding ones in brackets; audio s/s is seconds of speech, unpadded, per second.",
              "- **Peak RSS**: ru_maxrss of the recipe process (os.wait4).",
              f"- SST-2 rows: `{SST2_CONFIG}` on the SST-2 files in {shared()} with `--learning_rate {SST2_LR}` "
              "(its 8e-5 is for 3 epochs of 2000 sentences), evaluated on all of dev before training, after every "
              "epoch and once more at the end (the runner's final `predict`).",
              "- The image, translation and speech models are tiny, config-built and start from random weights (no "
              "pretrained checkpoint offline): their budgets are sized for throughput, and their targets are "
              "modest.", ""]
    minilm = [r for r in rows if r.flops == "minilm" and ok(r.results)]
    if minilm:
        lines += ["Formula against the counter (first run of each MiniLM row): " + "; ".join(
            f"{r.key} {ok(r.results)[0]['flops'] / 1e12:.2f} versus {ok(r.results)[0]['counter_flops'] / 1e12:.2f} "
            "TFLOP" for r in minilm) + ".", ""]
    return lines
