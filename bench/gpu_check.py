"""One short GPU check: each recipe for a few steps in bf16 and fp32, plus MFU of a BERT-base-sized model.

    bash bench/gpu_check.sh          # on a machine with one CUDA GPU; at most ~8 minutes

Prints one table (samples/s and peak GPU memory per recipe and precision) and the MFU line, and writes
them to $OUT/gpu_check.md when OUT is set (else bench/gpu_check.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import DATA

ROOT = Path(__file__).resolve().parents[1]


def matmul_tflops(dtype: torch.dtype, n: int = 8192, repeats: int = 20) -> float:
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def bert_base_mfu(peak_tflops: float, batch: int = 64, seq: int = 128, steps: int = 20) -> tuple[float, float]:
    """Training FLOP/s of a config-built BERT-base (6 x params x tokens) over the measured bf16 matmul rate."""
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig()).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    ids = torch.randint(0, 30000, (batch, seq), device="cuda")
    labels = torch.randint(0, 2, (batch,), device="cuda")
    for step in range(steps + 3):
        if step == 3:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    # 6 N per token for the dense layers, plus attention's 12 * layers * hidden * seq per token.
    config = model.config
    flops = steps * batch * seq * (6 * params + 12 * config.num_hidden_layers * config.hidden_size * seq)
    achieved = flops / elapsed / 1e12
    return achieved, achieved / peak_tflops


def recipe_runs(models: dict[str, str]) -> list[tuple[str, list[str]]]:
    sst2, clothing, multi30k, fsdd = DATA / "sst2", DATA / "clothing_small", DATA / "multi30k_en_de", DATA / "fsdd"
    return [
        ("text_classification", ["--model_name_or_path", models["minilm"], "--train_file", str(sst2 / "train.tsv"),
                                 "--validation_file", str(sst2 / "dev.tsv"), "--per_device_train_batch_size", "64"]),
        ("image_classification", ["--model_name_or_path", models["vit"], "--train_dir", str(clothing / "train"),
                                  "--validation_dir", str(clothing / "validation"), "--per_device_train_batch_size", "32"]),
        ("translation", ["--model_name_or_path", models["marian"], "--train_source_file", str(multi30k / "train.en"),
                         "--train_target_file", str(multi30k / "train.de"), "--validation_source_file",
                         str(multi30k / "val.en"), "--validation_target_file", str(multi30k / "val.de"),
                         "--per_device_train_batch_size", "64"]),
        ("speech_recognition", ["--model_name_or_path", models["ctc"], "--train_file", str(fsdd / "metadata.csv"),
                                "--per_device_train_batch_size", "32"]),
    ]


def main() -> None:
    assert torch.cuda.is_available(), "gpu_check needs a CUDA GPU"
    from common.models import tiny as tiny_models

    out_dir = Path(os.environ.get("OUT", ROOT / "bench"))
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    # One BPE vocabulary over both languages, as the translation configs build it.
    corpus = [line for name in ("train.en", "train.de")
              for line in (DATA / "multi30k_en_de" / name).read_text().splitlines()[:5000]]
    models = {
        "minilm": tiny_models.minilm_dir(),
        "vit": tiny_models.tiny_vit(workdir / "vit"),
        "marian": tiny_models.tiny_marian(workdir / "marian", corpus),
        "ctc": tiny_models.tiny_wav2vec2_ctc(workdir / "ctc"),
    }
    rows = []
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    for recipe, args in recipe_runs(models):
        for precision in ("bf16", "fp32"):
            run_dir = workdir / f"{recipe}-{precision}"
            command = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *args, "--output_dir", str(run_dir),
                       "--max_steps", "30", "--precision", precision, "--do_predict", "false",
                       "--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none",
                       "--max_eval_samples", "64"]
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=150)
            if result.returncode != 0:
                rows.append((recipe, precision, "failed", result.stderr.strip().splitlines()[-1][:80]))
                continue
            results = json.loads((run_dir / "all_results.json").read_text())
            rows.append((recipe, precision, f"{results.get('train_samples_per_second', 0):.1f}",
                         f"{results.get('train_peak_gpu_memory_gb', float('nan')):.2f}"))
    bf16 = matmul_tflops(torch.bfloat16)
    achieved, mfu = bert_base_mfu(bf16)
    lines = [f"# GPU check on {torch.cuda.get_device_name()} ({time.strftime('%Y-%m-%d')})", "",
             "| recipe | precision | train samples/s | peak GPU memory (GB) |", "|---|---|---:|---:|"]
    lines += [f"| {r} | {p} | {s} | {m} |" for r, p, s, m in rows]
    lines += ["", f"bf16 matmul (8192^3): {bf16:.0f} TFLOP/s measured. BERT-base training (bf16 autocast, batch 64 x 128): "
              f"{achieved:.0f} TFLOP/s = **MFU {mfu:.1%}** of the measured matmul rate."]
    text = "\n".join(lines) + "\n"
    print(text)
    (out_dir / "gpu_check.md").write_text(text)


if __name__ == "__main__":
    main()
