"""Fine-tuning versus training from scratch for translation (Multi30k en->de), from a start pretrained offline.

No pretrained translation checkpoint is available offline, so the pretrained start is made here, by the
translation recipe itself: a config-built Marian (`common.models.tiny.tiny_marian`, random weights, one BPE
vocabulary trained on the Multi30k training text of both languages) is trained on Multi30k train rows that
the fine-tuning never sees, either in the same direction (en->de) or the reverse one (de->en). Then
`finetune-recipes compare translation` fine-tunes that model on the first --train_samples rows and trains the
same architecture from random weights (--from_scratch), with the same data, seed, epochs and learning rate;
both are scored on Multi30k val (validation) and test_2016_flickr (test).

    python bench/translation_pretraining.py [--train_samples 2000] [--epochs 5] [--variants same reverse]

Writes bench/translation_pretraining.md; the runs stay in bench/runs/translation_pretraining/.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import data

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = data("multi30k_en_de")
RESULTS = Path(__file__).with_name("translation_pretraining.md")
DIRECTIONS = {"same": ("en", "de"), "reverse": ("de", "en")}
ROWS = [("eval_bleu", "validation BLEU"), ("eval_chrf", "validation chrF"), ("eval_loss", "validation loss"),
        ("test_bleu", "test BLEU (test_2016_flickr)"), ("test_chrf", "test chrF"), ("eval_gen_len", "validation gen_len"),
        ("train_loss", "train loss (mean over the run)")]


def write_slice(dest: Path, start: int, end: int | None) -> tuple[Path, Path]:
    """Rows [start, end) of Multi30k train as a pair of line-aligned files (the recipe caps only from the top)."""
    from common.data.parallel import read_lines

    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for lang in ("en", "de"):
        lines = read_lines(MULTI30K / f"train.{lang}", lang)[start:end]
        path = dest / f"train.{lang}"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def recipe_args(model_dir: str, train: dict[str, Path], source: str, target: str, output_dir: Path, epochs: int,
                learning_rate: float, batch_size: int, eval_samples: int, test: bool) -> list[str]:
    args = ["--model_name_or_path", model_dir,
            "--train_source_file", str(train[source]), "--train_target_file", str(train[target]),
            "--validation_source_file", str(MULTI30K / f"val.{source}"),
            "--validation_target_file", str(MULTI30K / f"val.{target}"),
            "--max_eval_samples", str(eval_samples), "--generation_max_length", "64",
            "--output_dir", str(output_dir), "--num_train_epochs", str(epochs), "--learning_rate", str(learning_rate),
            "--per_device_train_batch_size", str(batch_size), "--logging_steps", "50", "--disable_tqdm", "true",
            "--overwrite_output_dir"]
    if test:
        args += ["--test_source_file", str(MULTI30K / f"test_2016_flickr.{source}"),
                 "--test_target_file", str(MULTI30K / f"test_2016_flickr.{target}"),
                 "--max_predict_samples", str(eval_samples)]
    else:
        args += ["--eval_strategy", "no", "--do_predict", "false"]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_samples", type=int, default=2000, help="fine-tuning rows: the first N of train")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--pretrain_samples", type=int, default=None, help="pretraining rows (default: all the rest)")
    parser.add_argument("--pretrain_epochs", type=int, default=2)
    parser.add_argument("--pretrain_learning_rate", type=float, default=5e-3)
    parser.add_argument("--eval_samples", type=int, default=300)
    parser.add_argument("--d_model", type=int, default=64)
    parser.add_argument("--vocab_size", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", choices=list(DIRECTIONS), default=["same", "reverse"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "runs" / "translation_pretraining"))
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from common.data.parallel import read_lines
    from common.models.tiny import tiny_marian
    from common.strategies.comparison import compare
    from recipes import translation

    out = Path(options.out)
    corpus = read_lines(MULTI30K / "train.en", "en") + read_lines(MULTI30K / "train.de", "de")
    init = tiny_marian(out / "init", corpus, vocab_size=options.vocab_size, d_model=options.d_model)
    end = options.train_samples + options.pretrain_samples if options.pretrain_samples else None
    pretrain_en, pretrain_de = write_slice(out / "pretrain_data", options.train_samples, end)
    finetune_en, finetune_de = write_slice(out / "finetune_data", 0, options.train_samples)
    pretrain_rows = len(read_lines(pretrain_en, "en"))

    sections = []
    for variant in options.variants:
        source, target = DIRECTIONS[variant]
        start = time.time()
        pretrained_dir = out / f"pretrained_{source}_{target}"
        pretrain = translation.main(recipe_args(
            init, {"en": pretrain_en, "de": pretrain_de}, source, target, pretrained_dir, options.pretrain_epochs,
            options.pretrain_learning_rate, 64, options.eval_samples, test=False))
        pretrain_time = time.time() - start

        start = time.time()
        summary = compare(translation.main, recipe_args(
            str(pretrained_dir), {"en": finetune_en, "de": finetune_de}, "en", "de", out / f"compare_{variant}",
            options.epochs, options.learning_rate, 32, options.eval_samples, test=True))
        compare_time = time.time() - start
        sections.append(report(variant, source, target, pretrain, pretrain_time, pretrain_rows, summary, compare_time,
                               options))

    header = [
        "# Fine-tuning versus from scratch: Multi30k en->de, tiny Marian",
        "",
        f"Command: `python bench/translation_pretraining.py --train_samples {options.train_samples} --epochs "
        f"{options.epochs} --learning_rate {options.learning_rate} --pretrain_epochs {options.pretrain_epochs} "
        f"--pretrain_learning_rate {options.pretrain_learning_rate} --variants {' '.join(options.variants)}"
        f"{f' --pretrain_samples {options.pretrain_samples}' if options.pretrain_samples else ''}`",
        "",
        f"Model: config-built Marian (`common.models.tiny.tiny_marian`): d_model {options.d_model}, 2 encoder and 2 "
        f"decoder layers, one BPE vocabulary of {options.vocab_size} trained on the Multi30k training text of both "
        "languages (shared by every run below). The pretrained start is made by `recipes/translation.py` itself, "
        f"from those random weights, on Multi30k train rows {options.train_samples + 1}-"
        f"{options.train_samples + pretrain_rows}, which the fine-tuning never sees. Fine-tuning uses rows "
        f"1-{options.train_samples}. Scores: sacreBLEU and chrF on the first {options.eval_samples} pairs of `val` "
        "and of `test_2016_flickr`, greedy decoding.",
        "",
    ]
    RESULTS.write_text("\n".join(header + [line for section in sections for line in section]) + "\n")
    print(RESULTS.read_text())


def report(variant: str, source: str, target: str, pretrain: dict, pretrain_time: float, pretrain_rows: int,
           summary: dict, compare_time: float, options) -> list[str]:
    runs, key = summary["runs"], summary["metric_key"]
    lines = [
        f"## Pretraining {'in the same direction' if variant == 'same' else 'in the reverse direction'} "
        f"({source}->{target})",
        "",
        f"{pretrain_rows} pairs, {options.pretrain_epochs} epochs, learning rate {options.pretrain_learning_rate}, "
        f"batch 64: {source}->{target} validation BLEU **{pretrain['eval_bleu']:.2f}** (chrF "
        f"{pretrain['eval_chrf']:.1f}), {pretrain_time:.0f} s.",
        "",
        f"Then `finetune-recipes compare translation` on {options.train_samples} en->de pairs: both runs "
        f"{options.epochs} epochs, learning rate {options.learning_rate}, batch 32, seed 42; {compare_time:.0f} s "
        "for both.",
        "",
        f"| metric | pretrained ({source}->{target}) | from scratch |",
        "|---|---:|---:|",
    ]
    for metric, label in ROWS:
        if metric in runs["pretrained"]:
            lines.append(f"| {label} | {runs['pretrained'][metric]:.2f} | {runs['from_scratch'][metric]:.2f} |")
    gap = runs["pretrained"][key] - runs["from_scratch"][key]
    lines += ["", f"The pretrained start is **{gap:+.2f}** {key} {'ahead of' if gap > 0 else 'behind'} training "
              "from scratch.", ""]
    return lines


if __name__ == "__main__":
    main()
