"""--report_to tensorboard and mlflow, offline: a short run leaves an event file and an MLflow run (file store)."""

from __future__ import annotations

import json

import pytest
from conftest import fast_args

from common.core.errors import RecipeInputError
from common.training import single_run as run_module
from recipes import sentiment


@pytest.mark.slow
def test_tensorboard_and_mlflow_record_the_run(tiny_bert, tmp_path, monkeypatch, one_thread):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tracking-test")
    out = tmp_path / "run"
    sentiment.main(["--model_name_or_path", tiny_bert, "--report_to", "tensorboard", "mlflow",
                              *fast_args(out, num_train_epochs=2, learning_rate=3e-3, logging_steps=4)])

    # TensorBoard: one event file inside the output dir (not ./runs), with the training and evaluation curves.
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "eval/accuracy", "eval/loss"} <= set(scalars)
    curve = EventAccumulator(str(events[0].parent)).Reload().Scalars("eval/accuracy")
    assert [round(e.step) for e in curve][-1] > 0 and len(curve) >= 2  # the pass before training, then each epoch

    # MLflow: one finished run holding the metrics and the configuration (training options and model config).
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("tracking-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    logged = [e["eval_accuracy"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "eval_accuracy" in e]
    history = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert [m.value for m in sorted(history, key=lambda m: m.step)][-len(logged):] == pytest.approx(logged)
    assert "loss" in run.data.metrics and "before_accuracy" in run.data.metrics
    assert run.data.params["learning_rate"] == "0.003" and run.data.params["model_type"] == "bert"
    assert run.data.params["id2label"] == str({0: "negative", 1: "positive"})


def test_a_tracker_that_is_not_installed_is_refused_before_the_data_loads(tmp_path, monkeypatch):
    monkeypatch.setitem(run_module.TRACKER_MODULES, "tensorboard", ("no_such_tracker_module",))
    with pytest.raises(RecipeInputError, match=r"--report_to tensorboard: .*pip install -e '\.\[tracking\]'"):
        sentiment.main(["--report_to", "tensorboard", "--train_file", str(tmp_path / "missing.csv"),
                        *fast_args(tmp_path / "out")])
