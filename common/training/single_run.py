"""One fine-tuning run of a `Task`, the same for every modality: set up, train, evaluate, predict, save and
report, leaving the results in the output dir. Strategies that run many (common.strategies) call it per run.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import PartialState
from transformers import EarlyStoppingCallback, TrainingArguments, enable_full_determinism, set_seed
from transformers.trainer_utils import PredictionOutput

from common.core.config import RunArguments
from common.core.errors import Preempted, RecipeInputError
from common.data.labels import SINGLE
from common.training import inspection
from common.training.baseline import constant_baseline, judge_run, model_card_warning
from common.training.html_report import PIPELINE_CALL_KWARGS, REPORT_FILE, write_html_report, write_run_config
from common.training.metrics import first_output, scores_from_logits
from common.training.reliability import (
    RUN_RECORD_ATTR,
    STAGING_NAME,
    RunRecord,
    check_output_lock,
    check_resume,
    clear_preemption,
    last_complete_checkpoint,
    preempted,
    publish,
    run_fingerprint,
    write_training_args,
)
from common.training.reporting import format_metrics, plot_confusion_matrix, plot_training_curves, write_json
from common.training.task import Task
from common.training.trainer import TrainingLoopArguments

logger = logging.getLogger(__name__)


def setup_run(training_args: TrainingArguments, run_args: RunArguments) -> None:
    """Logging, then the output-dir guard and the resume check: all before any data or model is loaded.

    The fingerprint of the run (common.training.reliability.run_fingerprint: the options parse_args built, through
    run_args.arguments, and the data files) rides on training_args to every checkpoint; a resumed run must match
    its checkpoint's, unless --resume_ignore_changes.
    """
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)]
    )
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.getLogger("common").setLevel(level)
    logging.getLogger("recipes").setLevel(level)
    logging.getLogger("__main__").setLevel(level)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()

    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    logger.info("precision %s (%s)", precision, run_args.precision_reason)

    state = PartialState()
    processes = state.num_processes  # known before Trainer exists, unlike a fresh TrainingArguments
    scale = processes * training_args.gradient_accumulation_steps
    if run_args.scale_lr_with_batch and scale > 1:
        training_args.learning_rate *= scale
        logger.info("--scale_lr_with_batch: learning_rate x%d = %.3g", scale, training_args.learning_rate)
    logger.info(
        "effective batch %d = %d per device x %d processes x %d accumulation steps",
        training_args.per_device_train_batch_size * scale, training_args.per_device_train_batch_size,
        processes, training_args.gradient_accumulation_steps,
    )
    check_trackers(training_args)
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # pinning needs an accelerator; avoids a warning per loader

    if inspection.active():  # a dry run writes nothing, so the output dir and checkpoints are not its concern
        return
    out = Path(training_args.output_dir)
    if state.is_main_process:  # the main process alone takes the lock, in run()
        check_output_lock(out)
    resume = training_args.resume_from_checkpoint
    if resume:
        training_args.resume_from_checkpoint = resolve_checkpoint(resume, out)
    elif out.is_dir() and any(out.iterdir()) and not run_args.overwrite_output_dir:
        raise RecipeInputError(
            f"output_dir {out} already exists and is not empty. Choose another --output_dir, pass "
            "--overwrite_output_dir to write into it, or --resume_from_checkpoint latest to continue its run."
        )
    fingerprint = run_fingerprint(training_args, run_args.arguments, processes)
    resumed = (check_resume(training_args.resume_from_checkpoint, fingerprint, run_args.resume_ignore_changes)
               if resume else None)
    setattr(training_args, RUN_RECORD_ATTR, RunRecord(fingerprint, resumed, run_args.command, run_args.options, run_args.given))


TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def check_trackers(training_args: TrainingArguments) -> None:
    """--report_to trackers are installed: refused before any data loads, not when Trainer starts."""
    for tracker in training_args.report_to:
        modules = TRACKER_MODULES.get(tracker, ())
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise RecipeInputError(f"--report_to {tracker}: the {modules[0]} package is not installed. Install the "
                                   "trackers with `pip install -e '.[tracking]'`, or leave --report_to out.")


def resolve_checkpoint(value: str, output_dir: Path) -> str:
    """'latest' (or 'true') means the newest checkpoint-* in output_dir; anything else is a path."""
    if value.lower() in ("latest", "true"):  # a checkpoint that a crash cut short is passed over
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise RecipeInputError(
                f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}. Give a checkpoint "
                "directory, or leave the option out to start afresh."
            )
        return last
    if not Path(value).is_dir():
        raise RecipeInputError(f"--resume_from_checkpoint {value} is not a checkpoint directory.")
    return value


def build_trainer(task: Task, args: TrainingArguments, finetune_args: TrainingLoopArguments, **overrides: Any):
    """The task's trainer, building its model with `task.model_init` (a search's trials need fresh copies);
    pass model= and model_init=None to hand it a built one."""
    callbacks = list(task.callbacks)
    if finetune_args.early_stopping_patience:
        callbacks.append(
            EarlyStoppingCallback(finetune_args.early_stopping_patience, finetune_args.early_stopping_threshold)
        )
    train_dataset = task.train_dataset
    if task.augmentation is not None and train_dataset is not None:
        train_dataset = task.augmentation.wrap(train_dataset)
        callbacks.append(train_dataset.callback)
    kwargs = dict(
        model_init=task.model_init,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=task.eval_dataset,
        data_collator=task.data_collator,
        compute_metrics=task.compute_metrics,
        compute_loss_func=task.compute_loss_func,
        processing_class=task.processing_class,
        callbacks=callbacks,
        finetune_args=finetune_args,
        optimizer_groups=task.optimizer_groups,
    )
    kwargs.update(overrides)
    return task.trainer_class(**kwargs)


def fresh_model(task: Task, args: TrainingArguments):
    """The task's model, built after seeding as Trainer seeds for model_init (its new weights, such as a head,
    follow args.seed). A run builds it once and hands it to the trainer: given model_init, Trainer would build it
    in __init__ and again in train(), loading the checkpoint twice."""
    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)
    return task.model_init()


def save_final_model(trainer, output_dir: str | Path, save: Callable[[Any, Path], None] | None = None) -> None:
    """The fine-tuned model, ready for `pipeline(model=output_dir)`.

    Written to a staging folder inside output_dir, then moved into place with config.json last (`publish`): a
    save that fails or is killed midway never leaves a model that looks complete.
    """
    out = Path(output_dir)
    staging = out / STAGING_NAME
    writer = trainer.args.should_save
    if writer:
        shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
    try:
        if save is not None:  # the toolkit's own format, e.g. a merged PEFT model (Task.save_model)
            save(trainer, staging)
        else:
            trainer.save_model(str(staging))
    except BaseException:
        if writer:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if writer and staging.is_dir():  # PEFT saves on the global main process only, even with save_on_each_node
        write_training_args(staging, trainer.args)
        publish(staging, out)


def train_evaluate_predict(
    task: Task, args: TrainingArguments, finetune_args: TrainingLoopArguments, report: bool = True,
    test_prefix: str = "test",
) -> dict[str, float]:
    """One fine-tuning run: metrics before training, train, save, evaluate, predict, report. `test_prefix` names
    the metrics of `task.test_dataset` (a cross-validation fold's is its held-out fold, not the test split)."""
    trainer = build_trainer(task, args, finetune_args, model=fresh_model(task, args), model_init=None)
    main = trainer.is_world_process_zero()
    out = Path(args.output_dir)
    results: dict[str, float] = {}

    # Every run states what a model that ignores its input would score, so a collapsed model cannot pass for
    # a trained one; fitted on train labels, it is known before training and costs no forward pass.
    baseline = constant_baseline(task) if args.do_eval and task.eval_dataset is not None else None
    if baseline is not None:
        logger.info("constant baseline (%s): %s", baseline.description, baseline.summary())
    if args.do_train and args.do_eval and task.eval_dataset is not None and finetune_args.eval_before_training:
        before = trainer.evaluate(metric_key_prefix="before")
        logger.info("before fine-tuning: %s", format_metrics(before, ["loss", task.main_metric]))
        results.update(before)
    if args.do_train:
        train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        if preempted():
            clear_preemption()
            raise Preempted(
                f"SIGTERM received: saved checkpoint-{trainer.state.global_step} in {out} at global step "
                f"{trainer.state.global_step} of {trainer.state.max_steps} and stopped. To continue, run the "
                "same command with --resume_from_checkpoint latest."
            )
        results.update(train_result.metrics)
        # Callbacks that change the model once training ends (checkpoint averaging) do so before it is saved.
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "finish_training"):
                results.update(callback.finish_training(trainer))
        if finetune_args.nan_policy == "skip":
            results["train_nan_skipped_steps"] = len(trainer.nan_skipped_steps)
        results["train_samples"] = len(task.train_dataset)
        if torch.cuda.is_available():
            results["train_peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        save_final_model(trainer, out, task.save_model)
        if main:
            trainer.save_state()
    eval_output = None
    if args.do_eval and task.eval_dataset is not None:
        eval_output = trainer.predict(task.eval_dataset, metric_key_prefix="eval")
        results.update(eval_output.metrics)
        results["eval_samples"] = len(task.eval_dataset)
        logger.info("after fine-tuning: %s", format_metrics(eval_output.metrics, ["loss", task.main_metric]))
        if baseline is not None:
            results.update(judge_run(baseline, eval_output, task, args.learning_rate,
                                     trainer.state.global_step if args.do_train else None, before=results))
    if args.do_predict and task.test_dataset is not None:
        test_output = trainer.predict(task.test_dataset, metric_key_prefix=test_prefix)
        results.update({k: v for k, v in test_output.metrics.items() if not k.endswith(("_runtime", "_per_second"))})
        results[f"{test_prefix}_samples"] = len(task.test_dataset)
        if main and task.write_predictions is not None:
            task.write_predictions(test_output, out)
    elif main and eval_output is not None and task.test_dataset is None and task.write_predictions is not None:
        task.write_predictions(eval_output, out)  # no test split: the validation predictions are the ones to read

    results.update(task.data_results)
    if main and report:
        write_report(trainer, task, results, eval_output, out, finetune_args.error_examples)
    trainer.results = results
    return results


def predicted_split(splits) -> str | None:
    """The split whose predictions a run writes: test, or validation when there is no test split."""
    return next((name for name in ("test", "validation") if name in splits), None)


def write_report(trainer, task: Task, results: dict, eval_output: PredictionOutput | None, out: Path,
                 error_examples: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if eval_output is not None and task.error_analysis is not None and error_examples:
        analysis = task.error_analysis(eval_output, error_examples)
        if analysis is not None:
            analysis.write(out)
            results["error_analysis"] = analysis.description
    write_json(out / "all_results.json", results)
    if trainer.state.log_history:
        plot_training_curves(trainer.state.log_history, task.main_metric, out / "training_curves.png")
    spec = task.label_spec
    if eval_output is not None and spec is not None and spec.problem_type == SINGLE and eval_output.label_ids is not None:
        predicted = scores_from_logits(first_output(eval_output.predictions), spec.problem_type).argmax(-1)
        plot_confusion_matrix(np.asarray(eval_output.label_ids), predicted, spec.names, out / "confusion_matrix.png")
    try:
        trainer.create_model_card(model_name=out.name, finetuned_from=task.model_name or None, tasks=task.pipeline_task)
    except Exception as err:  # noqa: BLE001 - a card is a nicety; its Hub look-ups may fail offline
        logger.warning("model card not written: %s", err)
    warning = model_card_warning(results, task.output_noun)
    if warning is not None:  # the card travels with the model, so the warning must too (even without a card)
        with open(out / "README.md", "a", encoding="utf-8") as card:
            card.write(warning)
    # Callbacks that planned the run (the time budget) add what they planned and what happened.
    entries = {key: value for callback in trainer.callback_handler.callbacks
               if hasattr(callback, "run_config_entries") for key, value in callback.run_config_entries().items()}
    write_summary(task, trainer.args, out, entries)
    logger.info("results, plots and model written to %s; open %s", out, out / REPORT_FILE)


def write_summary(task: Task, args: TrainingArguments, out: Path, entries: dict[str, Any] | None = None) -> None:
    """run_config.json (the recipe and every option, for `finetune-recipes predict`, plus `entries`) and
    report.html."""
    record: RunRecord | None = getattr(args, RUN_RECORD_ATTR, None)
    write_run_config(out, {"recipe": task.name, "pipeline_task": task.pipeline_task, "model_name_or_path": task.model_name,
                           "main_metric": task.main_metric, "input_columns": task.input_columns,
                           "options": record.fingerprint["options"] if record is not None else {},
                           PIPELINE_CALL_KWARGS: task.pipeline_call_kwargs, **(entries or {})})
    write_html_report(out)


def log_load_hint(task: Task, output_dir: str) -> None:
    """How to load the model the run saved into `output_dir` (nothing when it saved none: a search worker, CV
    folds, an ensemble)."""
    if (Path(output_dir) / "config.json").is_file():
        options = "".join(f", {option}" for option in task.pipeline_options)
        logger.info('load it: from transformers import pipeline; pipe = pipeline("%s", model="%s"%s)',
                    task.pipeline_task, output_dir, options)
        if task.pipeline_call_kwargs:  # without them the pipeline cuts or generates otherwise than the run
            logger.info("predict as the run did: pipe(inputs, %s)",
                        ", ".join(f"{key}={value!r}" for key, value in task.pipeline_call_kwargs.items()))
