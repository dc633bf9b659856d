"""`finetune-recipes compare`: pretrained and from-scratch runs on the same data, one table and one plot."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fast_args
from safetensors.torch import load_file

from common.cli import main as cli
from common.core.errors import RecipeInputError
from common.strategies.comparison import compare
from recipes import text_classification


def test_compare_writes_table_and_plot(tiny_bert, tmp_path, csv_file):
    rows = [{"sentence": f"{'good fine' if i % 2 else 'bad poor'} film {i}", "label": i % 2} for i in range(24)]
    train, dev = csv_file(rows[:16], "train.csv"), csv_file(rows[16:], "dev.csv")
    out = tmp_path / "compare"
    cli(["compare", "text_classification", "--model_name_or_path", tiny_bert, "--train_file", train,
         "--validation_file", dev, "--do_predict", "false", *fast_args(out, num_train_epochs=2, seed=1)])

    summary = json.loads((out / "comparison.json").read_text())
    assert summary["main_metric"] == "accuracy" and summary["metric_key"] == "eval_accuracy"
    for name in ("pretrained", "from_scratch"):
        assert "eval_accuracy" in summary["runs"][name] and "train_loss" in summary["runs"][name]
        assert (out / name / "config.json").is_file()
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0] == "| metric | pretrained | from scratch |" and table[2].startswith("| **eval_accuracy** |")
    assert (out / "comparison.png").stat().st_size > 0
    page = (out / "report.html").read_text()  # the comparison's page links each run's own report
    assert 'id="comparison"' in page and "data:image/png;base64," in page
    assert all(f'href="{name}/report.html"' in page and (out / name / "report.html").is_file()
               for name in ("pretrained", "from_scratch"))
    # Same architecture, but only the pretrained run started from the checkpoint's weights.
    start = load_file(f"{tiny_bert}/model.safetensors")
    key = next(k for k in start if k.endswith("word_embeddings.weight"))
    finals = {name: load_file(out / name / "model.safetensors") for name in ("pretrained", "from_scratch")}
    final_key = next(k for k in finals["pretrained"] if k.endswith("word_embeddings.weight"))
    assert finals["pretrained"][final_key].shape == finals["from_scratch"][final_key].shape
    drift = {name: (w[final_key] - start[key]).abs().mean().item() for name, w in finals.items()}
    assert drift["pretrained"] < 1e-2 < drift["from_scratch"]
    assert torch.isfinite(finals["from_scratch"][final_key]).all()


def test_compare_refuses_from_scratch_in_its_arguments(capsys):
    with pytest.raises(RecipeInputError, match="drop --from_scratch"):
        compare(text_classification.main, ["--from_scratch"])
    with pytest.raises(SystemExit) as exit_:
        cli(["compare", "text_clasification"])
    assert exit_.value.code != 0 and "no recipe named 'text_clasification'" in capsys.readouterr().err
