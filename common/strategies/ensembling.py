"""Ensembles of fine-tuned models: soft vote, hard vote, and stacking with a logistic-regression meta-learner.

Members are the cross-validation fold models (--cv_folds K --ensemble ...) or any saved model dirs
(--ensemble_models DIR DIR ...; nothing is trained then). Members must share the recipe's labels and its
tokenizer/processor, since they predict on the recipe's preprocessed splits: `check_member_processors`
loads the tokenizer or image processor saved in each member dir and refuses, before any member predicts, a
member whose processor would encode the same input differently from another member's or from the recipe's
(tokenizer: vocabulary, special tokens, the encoding of a probe text; image processor: resize, crop,
rescale, normalization and resampling settings).

- soft_vote: the mean of the members' probabilities (for regression, the mean prediction).
- hard_vote: the majority class; a tie goes to the class with the higher mean probability.
- stack: a scikit-learn LogisticRegression fitted on the out-of-fold class probabilities of the CV run.
  Each train row's features come from the one fold model that never trained on it, so the meta-learner
  sees no prediction made on a model's own training rows. At prediction time it reads the members' mean
  probabilities. Without out-of-fold predictions there is nothing leak-free to fit on, so stacking
  refuses --ensemble_models and asks for --cv_folds.

Hard vote and stacking are for single-label classification; multi-label and regression use soft_vote.
A recipe whose outputs are not classes of a whole input (a tag per word, an answer span) gives the labels its
members vote over in `Task.vote_labels`, with a problem type of its own: those ensembles soft-vote over the
members' scores at each position and are scored with the recipe's own `compute_metrics`.

`run_ensemble` scores every member and the ensemble on the validation and test splits side by side in
`ensemble_results.json` and `ensemble.png`, writes test predictions, and saves `ensemble.json` (method,
member dirs, meta-learner coefficients as JSON numbers). `load_ensemble(dir).predict(inputs)` reloads it
and predicts raw inputs through each member's pipeline.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from scipy.special import logit
from sklearn.linear_model import LogisticRegression
from transformers import (
    AutoConfig,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainingArguments,
)
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.image_processing_utils import BaseImageProcessor
from transformers.pipelines import check_task
from transformers.trainer_utils import PredictionOutput

from common.core.errors import RecipeInputError, nearest
from common.data.labels import MULTI, PROBLEM_TYPES, REGRESSION, SINGLE, LabelSpec
from common.models.runtime import inference_pipeline
from common.training.metrics import (
    first_output,
    predictions_from_scores,
    score_predictions,
    scores_from_logits,
)
from common.training.reliability import plain_value
from common.training.reporting import plot_bars, write_json
from common.training.single_run import build_trainer

logger = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_METHODS = ("soft_vote", "hard_vote", "stack")


@dataclass
class EnsembleArguments:
    ensemble: str | None = field(
        default=None, metadata={"help": "Combine models: soft_vote | hard_vote | stack (CV folds or --ensemble_models)."}
    )
    ensemble_models: list[str] | None = field(
        default=None, metadata={"help": "Fine-tuned model directories to ensemble, instead of the CV folds."}
    )

    def check(self) -> None:
        if self.ensemble:
            check_method(self.ensemble)


def check_method(method: str, problem_type: str | None = None) -> None:
    """A known method, and one that fits the problem type (hard vote and stacking need single-label classes)."""
    if method not in ENSEMBLE_METHODS:
        raise RecipeInputError(f"--ensemble {method}: choose one of {', '.join(ENSEMBLE_METHODS)}"
                               f"{nearest(method, ENSEMBLE_METHODS)}.")
    if problem_type is not None and problem_type != SINGLE and method != "soft_vote":
        raise RecipeInputError(f"--ensemble {method} is for single-label classification; use soft_vote for {problem_type}.")


def check_ensemble_options(task, finetune_args: EnsembleArguments) -> None:
    """Refuse impossible --ensemble / --ensemble_models combinations before anything trains (`finetune_args`
    holds the whole toolkit's options: CV folds and HPO trials bear on them)."""
    method, models = finetune_args.ensemble, finetune_args.ensemble_models
    if not method:
        if models:
            raise RecipeInputError("--ensemble_models needs --ensemble soft_vote or hard_vote to say how to combine them.")
        return
    check_method(method, ensemble_labels(task).problem_type)
    if finetune_args.cv_folds and models:
        raise RecipeInputError("give either --cv_folds (ensemble the fold models) or --ensemble_models, not both.")
    if not finetune_args.cv_folds and not models:
        raise RecipeInputError(
            f"--ensemble {method} needs members: --cv_folds K ensembles the K fold models, or list saved model "
            "dirs with --ensemble_models DIR DIR ..."
        )
    if models:
        if method == "stack":
            raise RecipeInputError(
                "--ensemble stack fits its meta-learner on out-of-fold predictions, which only cross-validation "
                "provides: use --cv_folds K --ensemble stack, or soft_vote/hard_vote with --ensemble_models."
            )
        if len(models) < 2:
            raise RecipeInputError(f"--ensemble_models lists {len(models)} model; an ensemble needs at least 2.")
        if finetune_args.hpo_trials:
            raise RecipeInputError("--hpo_trials with --ensemble_models: nothing is trained, so there is nothing to tune.")
        for path in models:
            _check_model_dir(path, "--ensemble_models")


def ensemble_labels(task) -> LabelSpec:
    """What the members must predict alike: the task's classes, or the labels its recipe votes over."""
    spec = task.label_spec or task.vote_labels
    if spec is None:
        raise RecipeInputError(f"--ensemble: the {task.name} recipe gives no labels for its members to vote over, "
                               "so it cannot ensemble.")
    return spec


PROBE = ("Héllo WORLD, naïve café-au-lait: 12,345 ÜBER déjà-vu!", "a Second SEGMENT")  # case, accents, pairs
# Image processor settings that change what the model sees; a step that is off makes its settings moot.
IMAGE_FIELDS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "crop_pct", "do_rescale",
                "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb", "do_pad", "pad_size",
                "size_divisor")
MOOT_WHEN_OFF = {"crop_size": "do_center_crop", "rescale_factor": "do_rescale", "image_mean": "do_normalize",
                 "image_std": "do_normalize", "pad_size": "do_pad"}
# Bookkeeping in a saved feature extractor config that does not change its output.
IDENTITY_FIELDS = {"feature_extractor_type", "image_processor_type", "processor_class", "_processor_class", "auto_map",
                   "name_or_path", "_name_or_path"}
AUTO_CLASSES = {"tokenizer": "AutoTokenizer", "image processor": "AutoImageProcessor",
                "feature extractor": "AutoFeatureExtractor"}


def _processor_kind(processor: Any) -> str | None:
    if isinstance(processor, PreTrainedTokenizerBase):
        return "tokenizer"
    if isinstance(processor, BaseImageProcessor):
        return "image processor"
    if isinstance(processor, FeatureExtractionMixin):
        return "feature extractor"
    return None


def processor_fields(processor: Any) -> dict[str, str]:
    """What decides the model inputs a tokenizer or processor makes, field -> a comparable description."""

    kind = _processor_kind(processor)
    if kind == "tokenizer":
        vocab = sorted(processor.get_vocab().items())
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
        special = {name: plain_value(token) for name, token in sorted(processor.special_tokens_map.items())}
        ids = processor(*PROBE)["input_ids"]
        return {"vocabulary": f"{len(vocab)} entries (sha256 {digest})",
                "special tokens": json.dumps(special, ensure_ascii=False),
                f"encoding of the probe text {PROBE!r}": " ".join(processor.convert_ids_to_tokens(ids))}
    settings = processor.to_dict()
    if kind == "image processor":
        plain = {k: plain_value(settings.get(k)) for k in IMAGE_FIELDS}
        plain.update({k: bool(v) for k, v in plain.items() if k.startswith("do_")})  # unset: not done
        return {k: json.dumps(v, sort_keys=True) for k, v in plain.items()
                if not (k in MOOT_WHEN_OFF and not plain[MOOT_WHEN_OFF[k]])}
    return {k: json.dumps(plain_value(v), sort_keys=True) for k, v in sorted(settings.items())
            if k not in IDENTITY_FIELDS}


def _member_processor(path: str | Path, kind: str) -> Any:
    try:
        return getattr(transformers, AUTO_CLASSES[kind]).from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - whatever the loader raises, the member cannot be checked
        raise RecipeInputError(
            f"ensemble member {path}: cannot load the {kind} saved with it ({err}). Members must carry their {kind} "
            f"(the recipes save it beside the model), so that they can be checked against each other and predict "
            "through pipeline()."
        ) from None


def _first_difference(a: dict[str, str], b: dict[str, str]) -> tuple[str, str, str] | None:
    for key in list(a) + [k for k in b if k not in a]:
        if a.get(key) != b.get(key):
            return key, a.get(key, "(not set)"), b.get(key, "(not set)")
    return None


def check_member_processors(task, members: list[str]) -> None:
    """Refuse members whose saved tokenizer/processor differs from another member's or from the recipe's.

    Every member predicts on the splits as the recipe's processor encoded them, so a member with a different
    vocabulary or image size would score inputs that mean something else to it, and the ensemble would
    average silently wrong predictions. Nothing is combined when this fails.
    """
    kind = _processor_kind(task.processing_class)
    if kind is None:
        if task.processing_class is not None:
            logger.warning("ensemble: cannot compare the members' %s with the recipe's; make sure they match",
                           type(task.processing_class).__name__)
        return
    first, first_fields = None, None
    for path in members:
        fields = processor_fields(_member_processor(path, kind))
        if first is None:
            first, first_fields = path, fields
            continue
        difference = _first_difference(first_fields, fields)
        if difference is not None:
            field_name, ours, theirs = difference
            raise RecipeInputError(
                f"ensemble members {first} and {path} have different {kind}s: {field_name} differs ({ours} in "
                f"{first}; {theirs} in {path}). Every member predicts on inputs encoded by one {kind}, so members "
                f"with different ones would be combined on inputs that mean something else to some of them. "
                f"Ensemble models fine-tuned from the same base model (the same {kind})."
            )
    recipe = getattr(task.processing_class, "name_or_path", None) or task.model_name or "the recipe's model"
    difference = _first_difference(first_fields, processor_fields(task.processing_class)) if first else None
    if difference is not None:
        field_name, ours, theirs = difference
        raise RecipeInputError(
            f"ensemble member {first} has a different {kind} from the recipe's ({recipe}, from --model_name_or_path "
            f"/ --tokenizer_name): {field_name} differs ({ours} in {first}; {theirs} in the recipe's). The members "
            f"predict on the data as the recipe's {kind} encodes it: pass --model_name_or_path {first}, or the base "
            "model the members were fine-tuned from."
        )


def _check_model_dir(path: str | Path, where: str) -> None:
    if not any((Path(path) / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise RecipeInputError(f"{where}: {path} is not a saved model directory (no config.json or adapter_config.json).")


def logits_from_scores(scores: np.ndarray, problem_type: str) -> np.ndarray:
    """The inverse of `scores_from_logits`, so ensemble scores go through the recipes' prediction writers."""
    if problem_type == REGRESSION:
        return scores.reshape(-1, 1)
    clipped = np.clip(scores, 1e-12, 1 - 1e-12)
    return logit(clipped) if problem_type == MULTI else np.log(clipped)


@dataclass
class Ensemble:
    method: str
    members: list[str]  # model directories
    problem_type: str
    label_names: list[str] | None
    pipeline_task: str
    meta_learner: dict[str, list] | None = None  # LogisticRegression classes, coef, intercept
    # The members' pipeline() call arguments, as the recipe's Task.pipeline_call_kwargs (texts cut at the run's
    # --max_seq_length); None: not recorded (an ensemble saved before they were), texts cut at the model's maximum.
    pipeline_call_kwargs: dict[str, Any] | None = None
    _pipelines: list | None = field(default=None, repr=False)

    def fit_stacker(self, oof_scores: np.ndarray, oof_labels: np.ndarray, seed: int) -> None:
        """Fit the meta-learner on out-of-fold class probabilities (one row per train row)."""

        meta = LogisticRegression(max_iter=1000, random_state=seed).fit(oof_scores, oof_labels)
        self.meta_learner = {"classes": meta.classes_.tolist(), "coef": meta.coef_.tolist(),
                             "intercept": meta.intercept_.tolist()}

    def combine(self, member_scores: np.ndarray) -> np.ndarray:
        """Members' scores (members, rows[, classes]) -> the ensemble's scores (rows[, classes])."""
        mean = member_scores.mean(axis=0)
        if self.method == "soft_vote":
            return mean
        if self.method == "hard_vote":
            count, classes = len(member_scores), member_scores.shape[-1]
            votes = np.eye(classes)[member_scores.argmax(-1)].sum(axis=0)
            # Half the mean probability is under one vote, so it only breaks ties; the sum stays a distribution.
            return (votes + 0.5 * mean) / (count + 0.5)
        return self._meta_scores(mean)

    def score(self, labels: np.ndarray, scores: np.ndarray,
              compute_metrics: Callable[[EvalPrediction], dict] | None = None) -> dict[str, float]:
        """The metrics of scores (one member's, or combined) against the labels: the built-in ones for classes and
        values, the recipe's `compute_metrics` for the outputs it votes over itself."""
        if self.problem_type in PROBLEM_TYPES:  # classes of a whole input; other outputs are their recipe's
            return score_predictions(labels, scores, self.problem_type)
        if compute_metrics is None:
            raise RecipeInputError(f"an ensemble of {self.problem_type} outputs is scored by its recipe's metrics.")
        return compute_metrics(EvalPrediction(predictions=logits_from_scores(scores, self.problem_type),
                                              label_ids=labels))

    def _meta_scores(self, features: np.ndarray) -> np.ndarray:
        if self.meta_learner is None:
            raise RecipeInputError("this stacking ensemble has no fitted meta-learner.")
        meta = LogisticRegression()
        meta.classes_ = np.asarray(self.meta_learner["classes"])
        meta.coef_ = np.asarray(self.meta_learner["coef"])
        meta.intercept_ = np.asarray(self.meta_learner["intercept"])
        meta.n_features_in_ = meta.coef_.shape[1]
        scores = np.zeros((len(features), len(self.label_names)))
        scores[:, meta.classes_] = meta.predict_proba(features)
        return scores

    def save(self, directory: str | Path) -> None:
        """ensemble.json; members inside `directory` are stored relative to it, so the folder can move."""
        directory = Path(directory).resolve()
        members = []
        for member in self.members:
            path = Path(member).resolve()
            members.append(os.path.relpath(path, directory) if path.is_relative_to(directory) else str(path))
        write_json(directory / ENSEMBLE_FILE, {
            "method": self.method, "members": members, "problem_type": self.problem_type,
            "label_names": self.label_names, "pipeline_task": self.pipeline_task, "meta_learner": self.meta_learner,
            "pipeline_call_kwargs": self.pipeline_call_kwargs,
        })

    def predict_scores(self, inputs: list, batch_size: int = 32) -> np.ndarray:
        """Ensemble scores for raw inputs (texts, images, audio: whatever the members' pipeline takes)."""

        if self.problem_type not in PROBLEM_TYPES:
            raise RecipeInputError(f"an ensemble of {self.problem_type} outputs predicts through its recipe: "
                                   "finetune-recipes predict ENSEMBLE_DIR --input FILE --output FILE.")
        if self._pipelines is None:
            device = 0 if torch.cuda.is_available() else -1
            self._pipelines = [inference_pipeline(self.pipeline_task, m, device) for m in self.members]
        extra = self.pipeline_call_kwargs or {}  # None: an ensemble saved before they were recorded
        per_member = []
        for pipe in self._pipelines:
            outputs = pipe(list(inputs), top_k=None, batch_size=batch_size, **extra)
            if self.problem_type == REGRESSION:
                per_member.append(np.array([row[0]["score"] for row in outputs]))
            else:
                index = {name: i for i, name in enumerate(self.label_names)}
                scores = np.zeros((len(outputs), len(self.label_names)))
                for r, row in enumerate(outputs):
                    for entry in row:
                        scores[r, index[entry["label"]]] = entry["score"]
                per_member.append(scores)
        return self.combine(np.stack(per_member))

    def predict(self, inputs: list, batch_size: int = 32) -> list[dict[str, Any]]:
        """One dict per input: the predicted label(s) and every class score (the value for regression)."""
        scores = self.predict_scores(inputs, batch_size)
        if self.problem_type == REGRESSION:
            return [{"score": float(s)} for s in scores]
        predicted = predictions_from_scores(scores, self.problem_type)
        rows = []
        for p, row in zip(predicted, scores):
            named = dict(zip(self.label_names, map(float, row)))
            if self.problem_type == MULTI:
                rows.append({"labels": [n for n, on in zip(self.label_names, p) if on], "scores": named})
            else:
                rows.append({"label": self.label_names[p], "score": float(row[p]), "scores": named})
        return rows


def load_ensemble(directory: str | Path) -> Ensemble:
    """The ensemble saved in `directory` (its ensemble.json), ready to `predict`."""
    file = Path(directory) / ENSEMBLE_FILE
    if not file.is_file():
        raise RecipeInputError(f"{directory} holds no {ENSEMBLE_FILE}: run a recipe with --ensemble into it first.")
    saved = json.loads(file.read_text())
    members = [str((Path(directory) / m).resolve()) for m in saved["members"]]
    for member in members:
        _check_model_dir(member, str(file))
    return Ensemble(saved["method"], members, saved["problem_type"], saved["label_names"], saved["pipeline_task"],
                    saved.get("meta_learner"), saved.get("pipeline_call_kwargs"))


def load_member(path: str | Path, task) -> PreTrainedModel:
    """A member model, with the auto class of the recipe's pipeline task (or, for a pipeline transformers no
    longer ships, the member's own architecture), checked against the recipe's labels."""
    try:
        model_class = check_task(task.pipeline_task)[1]["pt"][0]
    except KeyError:
        model_class = getattr(transformers, AutoConfig.from_pretrained(str(path)).architectures[0])
    model = model_class.from_pretrained(str(path))
    spec = ensemble_labels(task)
    if spec.problem_type != REGRESSION and spec.names is not None:  # None: a recipe's outputs without class names
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if names != spec.names:
            raise RecipeInputError(f"ensemble member {path} predicts labels {names}, but this task has {spec.names}.")
    return model


def member_scores(task, args: TrainingArguments, finetune_args: EnsembleArguments, members: list[str],
                  datasets: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Scores of every member on every split, split -> array (members, rows[, positions][, classes]); and the
    labels of the splits that have them, as the predictions align them (token labels padded with -100)."""
    scores: dict[str, list[np.ndarray]] = {split: [] for split in datasets}
    problem_type = ensemble_labels(task).problem_type
    vote_scores = task.vote_scores or (lambda predictions: scores_from_logits(first_output(predictions), problem_type))
    labels: dict[str, np.ndarray] = {}
    for path in members:
        model = load_member(path, task)
        trainer = build_trainer(task, args, finetune_args, model=model, model_init=None, callbacks=[],
                                compute_metrics=None)
        for split, dataset in datasets.items():
            output = trainer.predict(dataset)
            if output.label_ids is not None:
                labels[split] = np.asarray(output.label_ids)
            scores[split].append(vote_scores(output.predictions))
        del trainer, model
        gc.collect()
    return {split: np.stack(values) for split, values in scores.items()}, labels


def _member_names(members: list[str]) -> list[str]:
    names = [Path(m).name for m in members]
    return names if len(set(names)) == len(names) else [str(m) for m in members]


def ensemble_splits(task, args: TrainingArguments) -> dict[str, Any]:
    """The splits an ensemble is scored on: validation when evaluating, test when predicting."""
    splits = {}
    if args.do_eval and task.eval_dataset is not None:
        splits["eval"] = task.eval_dataset
    if args.do_predict and task.test_dataset is not None:
        splits["test"] = task.test_dataset
    return splits


def run_ensemble(task, args: TrainingArguments, finetune_args: EnsembleArguments, members: list[str],
                 oof_scores: np.ndarray | None = None, oof_labels: np.ndarray | None = None) -> dict[str, float]:
    """Combine `members`, score them and the ensemble side by side, save the ensemble into the output dir."""
    check_ensemble_options(task, finetune_args)
    check_member_processors(task, list(members))  # before any member predicts
    spec = ensemble_labels(task)
    ensemble = Ensemble(finetune_args.ensemble, list(members), spec.problem_type, spec.names, task.pipeline_task,
                        pipeline_call_kwargs=task.pipeline_call_kwargs)
    out = Path(args.output_dir)
    splits = ensemble_splits(task, args)
    scores, labels = member_scores(task, args, finetune_args, ensemble.members, splits)  # every process takes part
    if args.process_index != 0:
        return {}

    def write_test(combined: np.ndarray) -> None:
        task.write_predictions(PredictionOutput(logits_from_scores(combined, spec.problem_type), None, {}), out)

    return report_ensemble(ensemble, scores, labels, task.main_metric, out,
                           write_test if task.write_predictions is not None else None, oof_scores, oof_labels, args.seed,
                           task.compute_metrics)


def report_ensemble(ensemble: Ensemble, scores: dict[str, np.ndarray], labels: dict[str, np.ndarray], main_metric: str,
                    out: Path, write_test: Callable[[np.ndarray], None] | None = None,
                    oof_scores: np.ndarray | None = None, oof_labels: np.ndarray | None = None,
                    seed: int = 0, compute_metrics: Callable[[EvalPrediction], dict] | None = None) -> dict[str, float]:
    """Fit the stacker if any, then score every member and the ensemble per split (`scores`: split -> array
    (members, rows[, classes])): ensemble_results.json, ensemble.png, ensemble.json and the test predictions."""
    if ensemble.method == "stack":
        ensemble.fit_stacker(oof_scores, oof_labels, seed)
    names = _member_names(ensemble.members)
    report: dict[str, Any] = {"method": ensemble.method, "members": names, "main_metric": main_metric}
    flat: dict[str, float] = {}
    for split, split_scores in scores.items():
        combined = ensemble.combine(split_scores)
        if split == "test" and write_test is not None:
            write_test(combined)
        if split not in labels:
            continue
        truth = labels[split]
        per_member = {n: ensemble.score(truth, s, compute_metrics) for n, s in zip(names, split_scores)}
        member_mean = {k: float(np.mean([m[k] for m in per_member.values()])) for k in next(iter(per_member.values()))}
        report[split] = {"members": per_member, "member_mean": member_mean,
                         "ensemble": ensemble.score(truth, combined, compute_metrics)}
        flat.update({f"ensemble_{split}_{k}": v for k, v in report[split]["ensemble"].items()})
        flat.update({f"ensemble_{split}_member_mean_{k}": v for k, v in member_mean.items()})
        logger.info("%s on %s: ensemble %s %.4f, members %s", ensemble.method, split, main_metric,
                    report[split]["ensemble"][main_metric],
                    ", ".join(f"{m[main_metric]:.4f}" for m in per_member.values()))

    write_json(out / "ensemble_results.json", report)
    ensemble.save(out)
    shown = next((report[s] for s in ("eval", "test") if s in report), None)
    if shown is not None:
        values = {n: m[main_metric] for n, m in shown["members"].items()}
        values["member mean"] = shown["member_mean"][main_metric]
        values[ensemble.method] = shown["ensemble"][main_metric]
        split = "eval" if "eval" in report else "test"
        plot_bars(values, None, main_metric, f"Ensemble ({ensemble.method}) versus its members: {split} {main_metric}",
                  out / "ensemble.png")
    return flat
