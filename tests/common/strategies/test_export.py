"""`finetune-recipes export`: the exported model is checked against the PyTorch one on the run's validation split,
and refused (exit 2, the drop named, nothing exported) when its metric falls past --max_metric_drop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import fast_args
from onnx import numpy_helper

from common import cli
from common.models.runtime import ONNX_FILE
from common.strategies import export as export_module
from common.training.html_report import RUN_CONFIG_FILE
from recipes import text_classification

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sms_run(tmp_path_factory, test_data) -> str:
    """A tiny BERT trained to tell spam from ham on 200 SMS messages, validated on 60 (which it mostly gets right)."""
    from common.models.tiny import tiny_bert

    data = tmp_path_factory.mktemp("sms")
    table = pd.read_csv(test_data / "sms_spam/train.tsv", sep="\t")
    table[:200].to_csv(data / "train.csv", index=False)
    table[200:260].to_csv(data / "validation.csv", index=False)
    out = data / "run"
    text_classification.main([
        "--model_name_or_path", tiny_bert(data / "bert"), "--train_file", str(data / "train.csv"),
        "--validation_file", str(data / "validation.csv"), "--max_seq_length", "32", "--eval_strategy", "no",
        *fast_args(out, num_train_epochs=4, learning_rate=3e-3, per_device_train_batch_size=16),
    ])
    return str(out)


def export_cli(*argv: str) -> None:
    cli.main(["export", *argv])


def refusal(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit:
        export_cli(*argv)
    assert exit.value.code == 2
    return capsys.readouterr().err


def test_a_corrupted_weight_is_refused_with_the_drop_named(sms_run, tmp_path, capsys, monkeypatch):
    """One weight matrix of the exported graph scaled by -1 turns the classifier around: the export exits 2 with
    the metric before and after, writes no export dir, and the run's export_report.json keeps the failed check."""
    real = export_module._export_onnx

    def corrupted(model, task, args, staging, precision):
        real(model, task, args, staging, precision)
        graph = onnx.load(staging / ONNX_FILE)
        weight = next(w for w in graph.graph.initializer if "classifier" in w.name and len(w.dims) == 2)
        weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
        onnx.save(graph, staging / ONNX_FILE)

    monkeypatch.setattr(export_module, "_export_onnx", corrupted)
    target = tmp_path / "export"
    message = refusal(capsys, sms_run, "--output", str(target))
    assert "export refused: accuracy on the validation split fell from" in message
    assert "over --max_metric_drop 0.1" in message
    assert not target.exists()
    recorded = json.loads((Path(sms_run) / "export_report.json").read_text())["export"]
    assert not recorded["passed"] and recorded["metric_drop"] > 10
    assert recorded["top1_agreement"] < 0.5


def test_fp32_export_agrees_and_int8_stays_within_its_limit(sms_run, tmp_path):
    export_cli(sms_run, "--output", str(tmp_path / "fp32"))
    fp32 = json.loads((tmp_path / "fp32" / "export_report.json").read_text())
    assert fp32["passed"] and fp32["max_abs_logit_diff"] < 1e-4 and fp32["top1_agreement"] == 1.0
    assert fp32["torch"]["accuracy"] == fp32["exported"]["accuracy"] > 0.8
    assert fp32["validation_rows"] == 60 and fp32["precision"] == "fp32" and fp32["max_metric_drop"] == 0.1
    export_cli(sms_run, "--quantize", "int8", "--output", str(tmp_path / "int8"))
    int8 = json.loads((tmp_path / "int8" / "export_report.json").read_text())
    assert int8["passed"] and int8["max_metric_drop"] == 1.0 and int8["metric_drop"] <= 1.0
    kinds = {node.op_type for node in onnx.load(tmp_path / "int8" / ONNX_FILE).graph.node}
    assert "MatMulInteger" in kinds and "MatMulInteger" not in {
        node.op_type for node in onnx.load(tmp_path / "fp32" / ONNX_FILE).graph.node}
    # The run's report shows both exports.
    page = (Path(sms_run) / "report.html").read_text()
    assert "Export" in page and "int8" in page and "fp32" in page


def test_the_export_reads_nothing_from_training_but_the_output_dir(sms_run, tmp_path, caplog):
    """A copy of the run dir without checkpoints, trainer state or results, whose run_config.json is an earlier
    version's (an option since removed, no pipeline call arguments), exports as the original does."""
    copy = tmp_path / "copy"
    shutil.copytree(sms_run, copy, ignore=shutil.ignore_patterns("checkpoint-*", "trainer_state.json",
                                                                  "all_results.json", "export_report.json", "*-results*"))
    record = json.loads((copy / RUN_CONFIG_FILE).read_text())
    record["options"]["retired_option"] = 3
    del record["pipeline_call_kwargs"]
    (copy / RUN_CONFIG_FILE).write_text(json.dumps(record))
    export_cli(str(copy), "--output", str(tmp_path / "export"))
    assert "retired_option=3, which the recipe no longer has: left out" in caplog.text
    assert json.loads((tmp_path / "export" / "export_report.json").read_text())["passed"]


def test_bad_run_dirs_and_options_fail_clearly(sms_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty} holds no {RUN_CONFIG_FILE}" in refusal(capsys, str(empty))
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    shutil.copy(Path(sms_run) / RUN_CONFIG_FILE, no_model)
    assert "holds no model (config.json)" in refusal(capsys, str(no_model))
    shutil.copy(Path(sms_run) / "config.json", no_model)
    assert "holds a config.json but no weights" in refusal(capsys, str(no_model))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    assert "already exists" in refusal(capsys, sms_run, "--output", str(taken))
    assert "choose from 'int8'" in refusal(capsys, sms_run, "--quantize", "int4")


def test_predict_with_the_onnx_runtime_needs_an_export(sms_run, tmp_path, capsys):
    inputs = tmp_path / "in.csv"
    pd.DataFrame({"sentence": ["win a free prize now", "see you at lunch"]}).to_csv(inputs, index=False)
    with pytest.raises(SystemExit) as exit:
        cli.main(["predict", str(tmp_path), "--runtime", "onnx", "--input", str(inputs), "--output", str(tmp_path / "o.csv")])
    assert exit.value.code == 2
    fresh = tmp_path / "run"
    shutil.copytree(sms_run, fresh, ignore=shutil.ignore_patterns("onnx*", "export*"))
    with pytest.raises(SystemExit) as exit:
        cli.main(["predict", str(fresh), "--runtime", "onnx", "--input", str(inputs), "--output", str(tmp_path / "o.csv")])
    assert exit.value.code == 2 and "holds no export" in capsys.readouterr().err
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir()), ["in.csv", "run"])
