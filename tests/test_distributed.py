"""Two-process DDP on CPU through `accelerate launch`, against one process with the same effective batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, fast_args, subprocess_env

CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    header = path.read_text().splitlines()[1:3]
    assert any("accelerate launch --config_file accelerate_configs/" + path.name in line for line in header)
    if path.stem == "cpu_ddp":
        assert config.use_cpu and config.num_processes == 2


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_json_uses_auto(stage):
    config = json.loads((ROOT / f"accelerate_configs/deepspeed_zero{stage}.json").read_text())
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        assert config[key] == "auto"
    assert config["optimizer"]["params"]["lr"] == "auto"


def _run(launcher: list[str], out: Path, tiny_bert: str, test_data: Path, batch: int) -> dict:
    args = ["--model_name_or_path", tiny_bert, "--train_file", str(test_data / "sms_spam/train.tsv"),
            "--validation_file", str(test_data / "sms_spam/dev.tsv"), "--max_train_samples", "640",
            "--max_eval_samples", "200", "--do_predict", "false",
            *fast_args(out, num_train_epochs=2, learning_rate=2e-3, per_device_train_batch_size=batch)]
    result = subprocess.run([*launcher, "recipes/text_classification.py", *args], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"results": json.loads((out / "all_results.json").read_text()), "log": result.stdout + result.stderr}


def test_two_process_cpu_ddp_matches_single_process(tiny_bert, test_data, tmp_path):
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch",
                  "--config_file", str(ROOT / "accelerate_configs/cpu_ddp.yaml")]
    ddp = _run(accelerate, tmp_path / "ddp", tiny_bert, test_data, batch=8)
    single = _run([sys.executable], tmp_path / "single", tiny_bert, test_data, batch=16)

    assert "effective batch 16 = 8 per device x 2 processes" in ddp["log"]
    assert "ddp_find_unused_parameters=False: every trainable parameter is used" in ddp["log"]
    # Same effective batch, same number of optimizer steps; only the shuffling order differs between the
    # samplers, so eval metrics agree within a small tolerance. Both runs learn (from 0.69), and mid-curve the
    # order moves the eval loss by about 0.12.
    assert ddp["results"]["train_samples"] == single["results"]["train_samples"] == 640
    assert all(run["results"]["eval_loss"] < run["results"]["before_loss"] - 0.1 for run in (ddp, single))
    assert abs(ddp["results"]["eval_loss"] - single["results"]["eval_loss"]) < 0.15
    assert abs(ddp["results"]["eval_accuracy"] - single["results"]["eval_accuracy"]) < 0.06
    # Only the main process wrote: one results file, one model, one set of plots.
    written = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert written.count("all_results.json") == 1 and "model.safetensors" in written
    assert ddp["log"].count("results, plots and model written to") == 1
