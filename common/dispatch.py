"""Run a recipe's `Task` as its options ask: the fine-tuning toolkit applied, then hyperparameter search (and a
retrain of the best), cross-validation (and an ensemble of the folds), an ensemble of --ensemble_models, or one
train/evaluate/predict. `FinetuneArguments` gathers every option group of the toolkit and the strategies."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainingArguments

from common.strategies.budget import BudgetArguments, TimeBudget
from common.strategies.cross_validation import CrossValidationArguments, run_cross_validation
from common.strategies.ensembling import EnsembleArguments, check_ensemble_options, run_ensemble
from common.strategies.hpo import HpoArguments, run_hpo
from common.strategies.label_issues import LabelIssueArguments, check_label_issue_options, run_label_issues
from common.toolkit.augment.text import TextAugmentArguments
from common.toolkit.finetuning import ToolkitArguments, apply_toolkit
from common.training.inspection import task_taker
from common.training.reliability import OutputDirLock, carry_run_record
from common.training.single_run import log_load_hint, train_evaluate_predict, write_summary
from common.training.task import Task
from common.training.trainer import TrainingLoopArguments


@dataclass
class FinetuneArguments(BudgetArguments, LabelIssueArguments, EnsembleArguments, CrossValidationArguments, HpoArguments,
                        TrainingLoopArguments, TextAugmentArguments, ToolkitArguments):
    """The fine-tuning toolkit and strategies: every recipe gets these options (bases listed last-first, so
    --help shows freezing first)."""

    _argument_group_name = "fine-tuning"


def finetune(task: Task, args: TrainingArguments, finetune_args: FinetuneArguments) -> dict[str, float]:
    """Dispatch on the options. The main process holds output_dir's lock file throughout, and removes it however
    the run ends."""
    if (take := task_taker()) is not None:  # a tool that wants the prepared Task, not a run (common.training.inspection)
        return take(task, args, finetune_args)
    if finetune_args.hpo_storage:  # a worker of a shared search: its trials only, and nothing in output_dir to lock
        run_hpo(apply_toolkit(task, args, finetune_args), args, finetune_args)
        return {"main_metric": task.main_metric, "output_dir": args.output_dir}
    with OutputDirLock(args.output_dir) if args.process_index == 0 else contextlib.nullcontext():
        check_ensemble_options(task, finetune_args)
        check_label_issue_options(task, finetune_args)
        budget = TimeBudget(finetune_args, args) if finetune_args.time_budget else None
        if budget is not None:  # the plan sets toolkit options, so it comes before the toolkit is applied
            task = budget.make_plan(task, args, finetune_args)
        task = apply_toolkit(task, args, finetune_args)
        if finetune_args.hpo_trials:
            best = budget.search(task, args, finetune_args) if budget is not None else run_hpo(task, args, finetune_args)
            args, searched = dataclasses.replace(args, **best), args
            carry_run_record(searched, args)
        if budget is not None:
            budget.train_seeded_runs(task, args, finetune_args)
        if finetune_args.cv_folds:
            results = run_cross_validation(task, args, finetune_args)
            if finetune_args.find_label_issues or finetune_args.drop_label_issues:
                results.update(run_label_issues(task, args, finetune_args))
        elif finetune_args.ensemble_models:
            results = run_ensemble(task, args, finetune_args, members=finetune_args.ensemble_models)
        else:
            results = train_evaluate_predict(task, args, finetune_args)
        if budget is not None and args.process_index == 0:
            results["time_budget"] = budget.finish()
        results["main_metric"], results["output_dir"] = task.main_metric, args.output_dir
        several = (finetune_args.cv_folds and finetune_args.cv_fold_index is None) or finetune_args.ensemble_models
        if several and args.process_index == 0:  # a fold job's own run wrote its page already
            write_summary(task, args, Path(args.output_dir))  # the strategy's page, linking each fold's
        if args.process_index == 0:
            log_load_hint(task, args.output_dir)
        return results
