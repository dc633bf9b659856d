"""Train, evaluate and predict for any recipe, and leave the results in the output dir.

A recipe describes its job as a `Task`; `run` then does the rest the same way for every modality:
hyperparameter search, cross-validation and ensembling when asked, otherwise one train/eval/predict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
import transformers
from transformers import EarlyStoppingCallback, PreTrainedModel, TrainingArguments
from transformers.trainer_utils import PredictionOutput

from common import inspection
from common.baseline import constant_baseline, judge_run, model_card_warning
from common.config import FinetuneArguments, RunArguments
from common.data.labels import SINGLE, LabelSpec
from common.errors import Preempted, RecipeInputError
from common.metrics import scores_from_logits
from common.reliability import (
    RUN_RECORD_ATTR,
    STAGING_NAME,
    OutputDirLock,
    RunRecord,
    carry_run_record,
    check_output_lock,
    check_resume,
    clear_preemption,
    last_complete_checkpoint,
    preempted,
    publish,
    run_fingerprint,
    write_training_args,
)
from common.reporting import format_metrics, plot_confusion_matrix, plot_training_curves, write_json
from common.trainer import FinetuneTrainer

if TYPE_CHECKING:
    from common.augment import TrainAugmentation

logger = logging.getLogger(__name__)


@dataclass
class Task:
    """Everything `run` needs from a recipe."""

    name: str
    model_init: Callable[[], PreTrainedModel]  # a fresh model with the fine-tuning options applied
    train_dataset: datasets.Dataset | None
    eval_dataset: datasets.Dataset | None
    test_dataset: datasets.Dataset | None
    data_collator: Callable | None
    compute_metrics: Callable | None
    processing_class: Any  # tokenizer / processor saved beside the model
    main_metric: str  # eval metric that ranks runs (HPO, best model, plots)
    pipeline_task: str
    model_name: str = ""
    greater_is_better: bool = True  # False for error rates such as WER
    label_spec: LabelSpec | None = None
    trainer_class: type = FinetuneTrainer
    # Writes the predictions on `predicted_split(splits)` in the recipe's format: (output, output dir) -> None.
    write_predictions: Callable[[PredictionOutput, Path], None] | None = None
    # Row labels of the train split, for stratified CV folds (None: plain k-fold).
    stratify: list | None = None
    groups: list | None = None
    # Per train row, its 0-based data row in the train file as loaded (`common.cross_validation.number_rows`):
    # the `row` of oof_predictions.parquet. None: rows are numbered as the train split holds them.
    source_rows: list[int] | None = None
    # On-the-fly augmentation of the train split (each CV fold's too); eval and test data stay as they are.
    augmentation: TrainAugmentation | None = None
    # Trainer's compute_loss_func: (outputs, labels, num_items_in_batch) -> loss, e.g. for MixUp soft targets.
    compute_loss_func: Callable | None = None
    # Extra TrainerCallbacks, e.g. outputs that must wait until training really starts (every check passed).
    callbacks: list = dataclasses.field(default_factory=list)
    # Facts about the data (skipped bad rows, truncation, class counts) written with the run's results.
    data_results: dict = dataclasses.field(default_factory=dict)
    # The constant baseline of tasks that common.baseline cannot derive from label_spec (translation, speech):
    # () -> its metrics on the eval split plus a "description", e.g. partial(common.baseline.speech_baseline, ...).
    baseline: Callable[[], dict[str, float | str]] | None = None


def setup_run(training_args: TrainingArguments, run_args: RunArguments) -> None:
    """Logging, then the output-dir guard and the resume check: all before any data or model is loaded.

    The fingerprint of the run (common.reliability.run_fingerprint: the options parse_args built, through
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
    from accelerate import PartialState

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
    setattr(training_args, RUN_RECORD_ATTR, RunRecord(fingerprint, resumed))


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


def build_trainer(task: Task, args: TrainingArguments, finetune_args: FinetuneArguments, **overrides: Any):
    callbacks = list(task.callbacks)
    if finetune_args.early_stopping_patience:
        callbacks.append(
            EarlyStoppingCallback(finetune_args.early_stopping_patience, finetune_args.early_stopping_threshold)
        )
    if finetune_args.unfreeze_schedule:
        from common.freezing import GradualUnfreezingCallback

        callbacks.append(GradualUnfreezingCallback(finetune_args))
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
    )
    kwargs.update(overrides)
    return task.trainer_class(**kwargs)


def save_final_model(trainer, output_dir: str | Path, finetune_args: FinetuneArguments) -> None:
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
        if finetune_args.peft:
            from common.adapters import save_peft_model

            save_peft_model(trainer, staging, merge=finetune_args.merge_adapter)
        elif finetune_args.cache_features:
            from common.feature_cache import save_full_model

            save_full_model(trainer, staging)
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
    task: Task, args: TrainingArguments, finetune_args: FinetuneArguments, report: bool = True
) -> dict[str, float]:
    """One fine-tuning run: metrics before training, train, save, evaluate, predict, report."""
    trainer = build_trainer(task, args, finetune_args)
    main = trainer.is_world_process_zero()
    out = Path(args.output_dir)
    results: dict[str, float] = {}

    # Every run states what a model that ignores its input would score, so a collapsed model cannot pass for
    # a trained one; fitted on train labels, it is known before training and costs no forward pass.
    baseline = constant_baseline(task) if args.do_eval and task.eval_dataset is not None else None
    if baseline is not None:
        logger.info("constant baseline (%s): %s %.4f", baseline.description, baseline.metric, baseline.value)
    if args.do_train and args.do_eval and task.eval_dataset is not None:
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
        if finetune_args.nan_policy == "skip":
            results["train_nan_skipped_steps"] = len(trainer.nan_skipped_steps)
        results["train_samples"] = len(task.train_dataset)
        if torch.cuda.is_available():
            results["train_peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        save_final_model(trainer, out, finetune_args)
        if main:
            trainer.save_state()
    eval_output = None
    if args.do_eval and task.eval_dataset is not None:
        eval_output = trainer.predict(task.eval_dataset, metric_key_prefix="eval")
        results.update(eval_output.metrics)
        results["eval_samples"] = len(task.eval_dataset)
        logger.info("after fine-tuning: %s", format_metrics(eval_output.metrics, ["loss", task.main_metric]))
        if baseline is not None:
            results.update(judge_run(baseline, eval_output, task.label_spec, args.learning_rate,
                                     trainer.state.global_step if args.do_train else None))
    if args.do_predict and task.test_dataset is not None:
        test_output = trainer.predict(task.test_dataset, metric_key_prefix="test")
        results.update({k: v for k, v in test_output.metrics.items() if not k.endswith(("_runtime", "_per_second"))})
        if main and task.write_predictions is not None:
            task.write_predictions(test_output, out)
    elif main and eval_output is not None and task.test_dataset is None and task.write_predictions is not None:
        task.write_predictions(eval_output, out)  # no test split: the validation predictions are the ones to read

    results.update(task.data_results)
    if main and report:
        write_report(trainer, task, results, eval_output, out)
    trainer.results = results
    return results


def predicted_split(splits) -> str | None:
    """The split whose predictions a run writes: test, or validation when there is no test split."""
    return next((name for name in ("test", "validation") if name in splits), None)


def write_report(trainer, task: Task, results: dict, eval_output: PredictionOutput | None, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "all_results.json", results)
    if trainer.state.log_history:
        plot_training_curves(trainer.state.log_history, task.main_metric, out / "training_curves.png")
    spec = task.label_spec
    if eval_output is not None and spec is not None and spec.problem_type == SINGLE and eval_output.label_ids is not None:
        logits = eval_output.predictions[0] if isinstance(eval_output.predictions, tuple) else eval_output.predictions
        predicted = scores_from_logits(np.asarray(logits), spec.problem_type).argmax(-1)
        plot_confusion_matrix(np.asarray(eval_output.label_ids), predicted, spec.names, out / "confusion_matrix.png")
    try:
        trainer.create_model_card(model_name=out.name, finetuned_from=task.model_name or None, tasks=task.pipeline_task)
    except Exception as err:  # noqa: BLE001 - a card is a nicety; its Hub look-ups may fail offline
        logger.warning("model card not written: %s", err)
    warning = model_card_warning(results)
    if warning is not None:  # the card travels with the model, so the warning must too (even without a card)
        with open(out / "README.md", "a", encoding="utf-8") as card:
            card.write(warning)
    logger.info("results, plots and model written to %s", out)


def run(task: Task, args: TrainingArguments, finetune_args: FinetuneArguments) -> dict[str, float]:
    """Dispatch on the toolkit options: HPO first (then retrain the best), CV (+ ensemble of the folds),
    an ensemble of --ensemble_models (nothing trains), or one run. The main process holds output_dir's lock
    file throughout, and removes it however the run ends."""
    with OutputDirLock(args.output_dir) if args.process_index == 0 else contextlib.nullcontext():
        return _run(task, args, finetune_args)


def _run(task: Task, args: TrainingArguments, finetune_args: FinetuneArguments) -> dict[str, float]:
    from common.ensembling import check_ensemble_options, run_ensemble

    check_ensemble_options(task, finetune_args)
    if finetune_args.cache_features:
        from common.feature_cache import cached_task

        task = cached_task(task, args, finetune_args)
        if args.train_sampling_strategy == "group_by_length":
            # A cached row is one feature vector: there is no length to group by, and no padding to save.
            logger.info("--cache_features: train_sampling_strategy group_by_length -> random")
            args.train_sampling_strategy = "random"
    if finetune_args.hpo_trials:
        from common.hpo import run_hpo

        best = run_hpo(task, args, finetune_args)
        args, searched = dataclasses.replace(args, **best), args
        carry_run_record(searched, args)
    if finetune_args.cv_folds:
        from common.cross_validation import run_cross_validation

        results = run_cross_validation(task, args, finetune_args)
    elif finetune_args.ensemble_models:
        results = run_ensemble(task, args, finetune_args, members=finetune_args.ensemble_models)
    else:
        results = train_evaluate_predict(task, args, finetune_args)
    results["main_metric"] = task.main_metric
    return results


def pipeline_hint(task: Task, output_dir: str) -> str:
    return f'from transformers import pipeline; pipe = pipeline("{task.pipeline_task}", model="{output_dir}")'
