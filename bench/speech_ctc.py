"""CTC speech recognition on FSDD for a fixed budget: does a tiny wav2vec2, trained from random weights, learn the words?

    python bench/speech_ctc.py [--epochs 8] [--train_samples 0] [--learning_rate 2e-3] [--threads 1]

Builds the tiny config-built wav2vec2 (`common.models.tiny.tiny_wav2vec2_ctc`, hidden 64, 2 layers, random
weights) and trains it with the speech recipe on the FSDD manifest: the train rows (a seeded 10% held out for
validation; clips over 1 s dropped, 0.7% of them), batch 16, the given epochs; then scores the 300 test clips.
Prints and writes bench/speech_ctc_results.md: the budget, validation WER/CER per epoch, test WER/CER, wall time.
One torch thread by default: a model this small is bound by per-op overhead, and on a busy machine several
OpenMP threads spin against each other (measured here: a training step 14x slower with 2 threads than with 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from harness import data  # noqa: E402

from common.models.tiny import tiny_wav2vec2_ctc  # noqa: E402
from recipes import speech_recognition  # noqa: E402

FSDD = data("fsdd")
RESULTS = Path(__file__).with_name("speech_ctc_results.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train_samples", type=int, default=0, help="0: every train clip")
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_wav2vec2_ctc(Path(tmp) / "model", hidden_size=options.hidden_size)
        out = Path(tmp) / "run"
        flags = ["--model_name_or_path", model, "--train_file", str(FSDD / "metadata.csv"), "--split_column", "split",
                 "--audio_column", "file", "--text_column", "transcript", "--output_dir", str(out),
                 "--max_duration_s", "1.0", "--mask_time_prob", "0", "--num_train_epochs", str(options.epochs),
                 "--learning_rate", str(options.learning_rate), "--per_device_train_batch_size", "16",
                 "--logging_steps", "20", "--disable_tqdm", "true", "--seed", "0"]
        if options.train_samples:
            flags += ["--max_train_samples", str(options.train_samples)]
        start = time.perf_counter()
        results = speech_recognition.main(flags)
        wall = time.perf_counter() - start
        state = json.loads((out / "trainer_state.json").read_text())
        test_clips = len((out / "predictions.tsv").read_text().splitlines()) - 1
    history = state["log_history"]

    per_epoch = [(e["epoch"], e["eval_wer"], e["eval_cer"]) for e in history if "eval_wer" in e]
    budget = (f"{results['train_samples']} train clips x {options.epochs} epochs, batch 16 ({state['global_step']} "
              f"steps), AdamW lr {options.learning_rate:g}, linear decay after 10% warmup")
    lines = [
        "# CTC on FSDD: tiny wav2vec2 from random weights",
        "",
        f"Model: `tiny_wav2vec2_ctc(hidden_size={options.hidden_size})`, 2 transformer layers, 7-layer CNN front end "
        "(32 channels), character vocabulary built from the transcripts. Budget: " + budget + f". CPU, fp32, "
        f"{options.threads} torch thread(s).",
        "",
        "| epoch | validation WER | validation CER |",
        "|---:|---:|---:|",
        f"| 0 (before training) | {results['before_wer']:.3f} | {results['before_cer']:.3f} |",
        *(f"| {epoch:g} | {wer:.3f} | {cer:.3f} |" for epoch, wer, cer in per_epoch),
        "",
        f"Test split ({test_clips} clips, recordings 0-4 of each speaker and digit): **WER {results['test_wer']:.3f}**, CER {results['test_cer']:.3f} "
        f"(raw, unnormalised: WER {results['test_wer_raw']:.3f}).",
        f"Wall time {wall / 60:.1f} min, of which training {results['train_runtime'] / 60:.1f} min.",
        "",
        "WER 1.0 means no word right (a model emitting nothing scores 1.0); each transcript is one word, so "
        "1 - WER is close to the share of clips transcribed exactly.",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
