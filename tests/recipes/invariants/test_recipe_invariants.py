"""Invariants every recipe of `recipes.RECIPES` keeps, each checked on every recipe (tiny models, a few dozen rows
written by `cases.py`), so that a recipe that breaks any of them fails here:

- re-scoring: every test and validation metric in all_results.json equals the field's reference implementation
  (sklearn, seqeval, sacrebleu, jiwer) on the predictions the run wrote and the gold data;
- resume: a run resumed from a checkpoint inside its second epoch ends with the uninterrupted run's weights;
- coverage: under 2-process DDP, each epoch trains every train row, the processes never the same one (the padding
  that evens out the last batches aside, and counted);
- predict parity: `finetune-recipes predict` on the run's test input writes the run's own predictions;
- export parity: the fp32 export passes its check on the validation split, and predict with --runtime onnx
  writes predict's PyTorch rows, scores to 1e-4;
- label issues: where each row has one class, every judged train row carries its input and given label into
  oof_predictions.parquet and label_issues.csv; elsewhere --find_label_issues is refused before training;
- counts: for every split, the rows read = the rows used + every row skipped or filtered, in all_results.json.

One main run per recipe (2 epochs, --do_predict, a checkpoint inside the second epoch) serves all but coverage,
which launches every recipe in one pair of DDP processes.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cases import CASES, Case, Models, read_table
from conftest import ROOT, fast_args, subprocess_env
from helpers import assert_same_run

from common import cli
from common.core.errors import RecipeInputError
from recipes import RECIPES

pytestmark = pytest.mark.usefixtures("one_thread")

LAUNCHER = Path(__file__).with_name("record_train_indices.py")
# Per split: the all_results.json key of the rows it used, and the prefix of its metrics.
USED = {"train": "train_samples", "validation": "eval_samples", "test": "test_samples"}
PREFIX = {"validation": "eval", "test": "test"}
# How the keys that count the rows a split dropped begin; they end in _<split> (--dedupe adds duplicates_<split>).
DROPPED = ("skipped_", "duration_filtered_")
NOT_METRICS = ("_samples", "_runtime", "_per_second")  # counts and timings beside a split's metrics


def run_args(case: Case, out: Path, **extra) -> list[str]:
    """Two epochs with a checkpoint one step into the second, the recipe's default sampler and augmentation."""
    return [*case.args, *fast_args(out, num_train_epochs=2, per_device_train_batch_size=case.batch_size,
                                   learning_rate=case.learning_rate, save_strategy="steps",
                                   save_steps=case.steps_per_epoch + 1, skip_bad_examples="true",
                                   max_bad_fraction=0.2, eval_before_training="false", **extra)]


def run_recipe(recipe: str, argv: list[str]) -> dict:
    return importlib.import_module(f"recipes.{recipe}").main(argv)


class Runs:
    """Each recipe's case and main run, made on first use; a failed main run fails every test that needs it."""

    def __init__(self, root: Path):
        self.root, self.models = root, Models(root / "models")
        self.cases: dict[str, Case] = {}
        self.outputs: dict[str, Path | Exception] = {}

    def case(self, recipe: str) -> Case:
        if recipe not in CASES:
            pytest.fail(f"recipe {recipe} has no invariant case: add one to CASES in tests/recipes/invariants/cases.py (its "
                        "data, flags and re-scorer)")
        if recipe not in self.cases:
            (self.root / recipe).mkdir(parents=True)
            self.cases[recipe] = CASES[recipe](self.root / recipe, self.models)
        return self.cases[recipe]

    def main(self, recipe: str) -> Path:
        case = self.case(recipe)
        if recipe not in self.outputs:
            out = self.root / f"{recipe}-main"
            try:
                run_recipe(recipe, run_args(case, out))
                self.outputs[recipe] = out
            except Exception as err:  # noqa: BLE001 - kept, so the other tests of the recipe fail without a rerun
                self.outputs[recipe] = err
        output = self.outputs[recipe]
        if isinstance(output, Exception):
            pytest.fail(f"the main run of {recipe} failed: {type(output).__name__}: {output}")
        return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("invariants"))


def _results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def test_every_recipe_of_the_registry_has_an_invariant_case():
    """A recipe added to recipes.RECIPES is covered by this suite from the day it is added: without its case
    here, this test fails, and so does every invariant test of that recipe."""
    missing = [recipe for recipe in RECIPES if recipe not in CASES]
    assert not missing, (f"recipes without an invariant case: {', '.join(missing)}. Add each to CASES in "
                         "tests/recipes/invariants/cases.py: the data it writes, its flags and how to re-score its "
                         "predictions.")
    assert not set(CASES) - set(RECIPES), f"cases of recipes no longer registered: {set(CASES) - set(RECIPES)}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_reported_metric_equals_its_rescoring_from_the_written_predictions(runs, recipe):
    """Each test metric in all_results.json (and each validation metric, where errors.csv lists every validation
    row) equals the reference implementation's score of the run's written predictions against the gold data:
    to 1e-6, counts exactly. A metric the re-scorer cannot reproduce, or that the run leaves out, fails too."""
    case, out = runs.case(recipe), runs.main(recipe)
    problems = rescoring_problems(case, out)
    assert not problems, f"{recipe}: " + "; ".join(problems)


def rescoring_problems(case: Case, out: Path) -> list[str]:
    """Each reported test (and validation) metric that its re-scoring from the written predictions does not match."""
    results = _results(out)
    files = {"test": out / case.predictions}
    if case.validation_predictions:
        files["validation"] = out / "errors.csv"
        listed, rows = len(read_table(files["validation"])), results["eval_samples"]
        assert listed == rows, f"errors.csv lists {listed} of {rows} validation rows: raise --error_examples"
    problems = []
    for split, path in files.items():
        prefix = PREFIX[split] + "_"
        reported = {k[len(prefix):]: v for k, v in results.items()
                    if k.startswith(prefix) and not k.endswith(NOT_METRICS)}
        rescored = case.rescore(path, case.gold[split])
        assert reported and rescored, f"no {split} metrics in all_results.json, or none re-scored from {path.name}"
        unchecked = sorted(set(reported) - set(rescored) - set(case.not_rescored))
        unreported = sorted(set(rescored) - set(reported))
        problems += [f"{prefix}{k}: no re-scoring in cases.py" for k in unchecked]
        problems += [f"{prefix}{k}: {rescored[k]:.6g} by the reference, not in all_results.json" for k in unreported]
        problems += [f"{prefix}{k}: reported {reported[k]:.8g}, {path.name} re-scored {rescored[k]:.8g}"
                     for k in sorted(set(reported) & set(rescored))
                     if not math.isclose(reported[k], rescored[k], rel_tol=0, abs_tol=1e-6)]
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_a_budgeted_run_probes_plans_and_trains_its_plan(runs, recipe, tmp_path, monkeypatch):
    """--time_budget on every recipe: each strategy is probed (or named not applicable, with the reason), the
    run trains the planned steps of the strategy it picked (a budget far longer than the run: no deadline stop),
    here two seeded runs whose weights are averaged, records the plan in run_config.json, and its
    reported metrics re-score from what it wrote."""
    from common.strategies import budget
    from common.training import deadline

    start = deadline.time.time()
    monkeypatch.setattr(deadline, "process_start", lambda: start)  # the budget counts from here, not pytest's start
    monkeypatch.setattr(budget, "MAX_EPOCHS", 2)  # plans of two epochs, as the main run trains
    monkeypatch.setattr(budget, "RUN_EPOCHS", 1)
    monkeypatch.setattr(budget, "MAX_RUNS", 2)
    case, out = runs.case(recipe), tmp_path / "budgeted"
    argv = [*case.args, "--time_budget", "30m", *fast_args(
        out, per_device_train_batch_size=case.batch_size, learning_rate=case.learning_rate, skip_bad_examples="true",
        max_bad_fraction=0.2)]
    at = argv.index("--num_train_epochs")
    del argv[at:at + 2]  # fast_args' epoch count: the plan sets the length
    results = run_recipe(recipe, argv)
    record = json.loads((out / "run_config.json").read_text())["time_budget"]
    assert record == results["time_budget"]
    candidates = {c["name"]: c for c in record["candidates"]}
    assert list(candidates) == ["full", "lora", "cache"]
    assert all(c["step_s"] and c["step_s"] > 0 or c["note"].startswith("not applicable") for c in candidates.values())
    assert candidates[record["strategy"]]["step_s"] > 0 and candidates["full"]["step_s"] > 0
    assert record["planned"]["max_steps"] == record["actual"]["steps"] == 2 * case.steps_per_epoch
    assert not record["actual"]["stopped_by_deadline"]
    assert record["strategy"] == "full" and record["planned"]["seeded_runs"] == 2
    [first] = record["actual"]["seeded_runs_before_the_last"]
    assert first["seed"] == 1 and first["steps"] == 2 * case.steps_per_epoch  # fast_args' seed 0, then 1
    assert results["averaging_method"].endswith("soup of 2 seeded runs")
    assert results["averaged_seeds"] in ([0], [1], [0, 1])
    problems = rescoring_problems(case, out)
    assert not problems, f"{recipe}: " + "; ".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_resume_inside_the_second_epoch_ends_with_the_uninterrupted_weights(runs, recipe, tmp_path):
    """The main run's checkpoint one step into its second epoch, copied into a fresh output dir and resumed, ends
    bit for bit where the uninterrupted run ended, with the same metrics (default sampler and augmentation)."""
    case, reference = runs.case(recipe), runs.main(recipe)
    checkpoint = reference / f"checkpoint-{case.steps_per_epoch + 1}"
    epoch = json.loads((checkpoint / "trainer_state.json").read_text())["epoch"]
    assert 1 < epoch < 2, f"{checkpoint.name} is at epoch {epoch}, not inside the second"
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed / checkpoint.name)
    run_recipe(recipe, [*run_args(case, resumed), "--resume_from_checkpoint", "latest"])
    assert_same_run(reference, resumed)


@pytest.mark.parametrize("recipe", RECIPES)
def test_predict_on_the_test_input_writes_the_runs_own_predictions(runs, recipe, tmp_path, capsys):
    """`finetune-recipes predict OUTPUT_DIR --input <the run's test input>` gives every input the run's label or
    text, and its scores to 1e-5."""
    case, out = runs.case(recipe), runs.main(recipe)
    written = tmp_path / case.predictions
    try:
        cli.main(["predict", str(out), "--input", case.predict_input, "--output", str(written)])
    except SystemExit as exit:
        pytest.fail(f"finetune-recipes predict exited {exit.code}: {capsys.readouterr().err.strip()[-400:]}")
    case.same_predictions(out / case.predictions, written)


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_fp32_export_predicts_the_rows_pytorch_predicts(runs, recipe, tmp_path, capsys):
    """`finetune-recipes export OUTPUT_DIR` (fp32) passes its parity check on the validation split, and predict
    with --runtime onnx writes the same labels or texts as --runtime torch, scores to 1e-4."""
    case, out = runs.case(recipe), runs.main(recipe)
    export_dir = tmp_path / "export"
    if not case.exportable:
        with pytest.raises(SystemExit) as refused:
            cli.main(["export", str(out), "--output", str(export_dir)])
        assert refused.value.code == 2 and "export covers" in capsys.readouterr().err
        assert not export_dir.exists()
        return
    written = {runtime: tmp_path / runtime / case.predictions for runtime in ("torch", "onnx")}
    try:
        cli.main(["export", str(out), "--output", str(export_dir)])
        for runtime, path in written.items():
            cli.main(["predict", str(out), "--runtime", runtime, "--export_dir", str(export_dir),
                      "--input", case.predict_input, "--output", str(path)])
    except SystemExit as exit:
        pytest.fail(f"finetune-recipes exited {exit.code}: {capsys.readouterr().err.strip()[-600:]}")
    report = json.loads((export_dir / "export_report.json").read_text())
    assert report["passed"] and report["metric_drop"] <= 0.1 and report["validation_rows"] > 0
    assert report["top1_agreement"] == 1.0
    case.same_predictions(written["torch"], written["onnx"], tolerance=1e-4)


@pytest.mark.parametrize("recipe", RECIPES)
def test_label_issues_quote_each_judged_train_row_or_are_refused_before_training(runs, recipe, tmp_path):
    """--cv_folds 2 --find_label_issues: each out-of-fold row holds the input of a train row (its text or its file)
    with that row's label, and label_issues.csv flags only such rows; a recipe without one class per row refuses
    the option before any fold trains."""
    case = runs.case(recipe)
    out = tmp_path / "cv"
    argv = [*case.args, *fast_args(out, per_device_train_batch_size=case.batch_size, learning_rate=case.learning_rate,
                                   skip_bad_examples="true", max_bad_fraction=0.2, eval_strategy="no",
                                   save_strategy="no", eval_before_training="false", do_predict="false"),
            "--cv_folds", "2", "--find_label_issues", "true"]
    if not case.single_label:
        # Refused by the label-issue check, or before it by the recipe's own refusal of --cv_folds.
        with pytest.raises(RecipeInputError, match="label issues are found among classes of one label per row|--cv_folds"):
            run_recipe(recipe, argv)
        assert not any(out.glob("fold_*"))
        return
    run_recipe(recipe, argv)
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    inputs = [c for c in oof.columns if c.startswith("input_")]
    assert len(inputs) == 1 and len(oof) == case.train_rows and oof["row"].is_unique
    gold = case.gold["train"]
    keys = [value if value in gold else os.path.realpath(value) for value in oof[inputs[0]]]
    assert all(key in gold for key in keys), "an out-of-fold row's input is no train row's"
    issues = pd.read_csv(out / "label_issues.csv", keep_default_na=False)
    assert list(issues.columns) == ["rank", "row", inputs[0].removeprefix("input_"), "given_label",
                                    "suggested_label", "label_quality"]
    by_row = oof.set_index("row")
    for issue in issues.itertuples(index=False):
        assert str(by_row.loc[issue.row, "label"]) == str(issue.given_label)
        assert by_row.loc[issue.row, inputs[0]] == issue[2]


@pytest.mark.parametrize("recipe", RECIPES)
def test_rows_read_equal_rows_used_plus_rows_dropped_for_every_split(runs, recipe):
    """For every split, the rows its files hold (bad ones included) = the rows it used (`<split>_samples`) + each
    count of rows skipped or filtered from it (`skipped_..._<split>`, `duration_filtered_<split>`); each total of
    such counts is the sum of its per-split counts."""
    case, out = runs.case(recipe), runs.main(recipe)
    results = _results(out)
    dedupe = json.loads((out / "run_config.json").read_text())["options"].get("dedupe")
    dropped_prefixes = (*DROPPED, "duplicates_") if dedupe else DROPPED
    wrong = []
    for split, read in case.rows.items():
        if USED[split] not in results:
            wrong.append(f"all_results.json lacks {USED[split]}, the rows the {split} split used")
            continue
        dropped = {k: v for k, v in results.items() if k.startswith(dropped_prefixes) and k.endswith(f"_{split}")}
        if read != results[USED[split]] + sum(dropped.values()):
            wrong.append(f"{split}: {read} rows read, {results[USED[split]]} used + dropped {dropped}")
    for total, value in results.items():
        parts = [results[f"{total}_{split}"] for split in USED if f"{total}_{split}" in results]
        if total.startswith(dropped_prefixes) and parts and value != sum(parts):
            wrong.append(f"{total} {value} is not the sum of its splits' {parts}")
    assert not wrong, f"{recipe}: " + "; ".join(wrong)


@pytest.fixture(scope="module")
def ddp_records(runs) -> tuple[Path, str]:
    """Every recipe with a case, run for 2 epochs in one `accelerate launch` of 2 CPU processes, each recording
    the train indices its data loader fetched per epoch (record_train_indices.py); the folder and the log."""
    folder = runs.root / "ddp"
    folder.mkdir()
    flags = dict(num_train_epochs=2, do_eval="false", do_predict="false", eval_strategy="no",
                 skip_bad_examples="true", max_bad_fraction=0.2)
    spec = {"out": str(folder), "runs": {}}
    for recipe in (r for r in RECIPES if r in CASES):
        case = runs.case(recipe)
        spec["runs"][recipe] = [*case.args, *fast_args(folder / recipe, per_device_train_batch_size=case.batch_size,
                                                       **flags)]
    (folder / "spec.json").write_text(json.dumps(spec))
    accelerate = [str(Path(sys.executable).parent / "accelerate"), "launch",
                  "--config_file", str(ROOT / "accelerate_configs/cpu_ddp.yaml")]
    result = subprocess.run([*accelerate, str(LAUNCHER), str(folder / "spec.json")], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=600)
    return folder, (result.stdout + result.stderr)[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_ddp_processes_train_every_row_once_per_epoch(runs, ddp_records, recipe):
    """Under 2-process DDP with the recipe's default sampler, each epoch's batches of the two processes cover the
    train split, and no row goes to both: only each process's last batch may repeat rows, and exactly as many as
    evening the processes' batches needs (every process gets the same number of full batches)."""
    case = runs.case(recipe)
    folder, log = ddp_records
    records = [json.loads(p.read_text()) for p in sorted(folder.glob(f"{recipe}.*.json"))]
    assert len(records) == 2, f"{recipe}: {len(records)} processes recorded their indices; the launch said:\n{log}"
    errors = [r["error"] for r in records if "error" in r]
    assert not errors, f"{recipe} failed under DDP: {errors[0]}"
    rows = records[0]["rows"]
    assert rows == case.train_rows, f"{recipe}: the data loader read {rows} train rows, not {case.train_rows}"
    full = 2 * case.batch_size * math.ceil(rows / (2 * case.batch_size))  # both processes' batches, padded
    for epoch in ("0", "1"):
        batches = [r["epochs"].get(epoch, []) for r in records]
        fetched = [i for process in batches for batch in process for i in batch]
        missed = sorted(set(range(rows)) - set(fetched))
        assert not missed, f"{recipe}, epoch {epoch}: rows never trained on: {missed}"
        before_last = [i for process in batches for batch in process[:-1] for i in batch]
        twice = sorted({i for i in before_last if before_last.count(i) > 1})
        assert not twice, f"{recipe}, epoch {epoch}: rows trained on twice (by both processes?): {twice}"
        assert len(fetched) == full, f"{recipe}, epoch {epoch}: {len(fetched)} rows fetched, {full} with the padding"
