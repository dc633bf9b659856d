"""`finetune-recipes export OUTPUT_DIR --format onnx [--quantize int8]`: the fine-tuned model on a serving runtime,
checked against the PyTorch model on the run's own validation split before it is handed over.

- Encoders (text, token, image and audio classification, question answering, CTC speech recognition) go through
  `torch.onnx.export` (the dynamo exporter: the TorchScript one traced BERT's attention mask at the example's
  shape and gave wrong logits for other lengths) into ONNX Runtime; `--quantize int8` is ONNX Runtime's dynamic
  int8 quantization of the exported graph's matrix products.
- Encoder-decoders (translation) go to CTranslate2, whose int8 is its own weight quantization.
- The export needs nothing from training but the output dir and its run_config.json: the recipe reads its data
  again with the recorded options (common.training.inspection.taking_task) up to its Task, whose trainer then
  predicts the validation split with both models. The report gives each one's metrics and rows per second, the
  largest logit difference (or the share of identical generations) and the agreement of top-1 predictions.
- A metric drop over --max_metric_drop (points; default 1 for int8, 0.1 for fp32) refuses the export: exit 2,
  the numbers in the message and in the run's report, and no export dir.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
import yaml
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, TrainingArguments

from common.core.errors import RecipeInputError, UnknownOption
from common.models.runtime import (
    CT2,
    CT2_DIR,
    MASK,
    ONNX,
    ONNX_FILE,
    TARGET_KEYS,
    ExportConfig,
    exported_model,
)
from common.strategies.ensembling import ENSEMBLE_FILE
from common.training.html_report import RUN_CONFIG_FILE, write_html_report
from common.training.inspection import taking_task
from common.training.reporting import write_json
from common.training.single_run import build_trainer
from common.training.task import Task
from common.training.trainer import TrainingLoopArguments

logger = logging.getLogger(__name__)

EXPORT_REPORT = "export_report.json"
FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
DEFAULT_MAX_DROP = {"fp32": 0.1, "int8": 1.0}  # points of the main metric
PREDICTING = TrainingLoopArguments()  # the training-loop options shape training only; prediction runs without them


def export(output_dir: str, fmt: str = "onnx", quantize: str | None = None, output: str | None = None,
           max_metric_drop: float | None = None, batch_size: int = 32, *,
           main_of: Callable[[str], Callable]) -> dict[str, Any]:
    """Export the model of `output_dir`, check it, and return the report (see the module docstring).
    `main_of(recipe name)` gives the recipe's `main`, which reads the validation split."""
    out = Path(output_dir)
    run_config = _check_run_dir(out)
    if fmt not in FORMATS:
        raise RecipeInputError(f"--format {fmt}: the formats are {', '.join(FORMATS)}.")
    if quantize not in (None, *QUANTIZATIONS):
        raise RecipeInputError(f"--quantize {quantize}: give int8, or leave it out for fp32.")
    precision = quantize or "fp32"
    limit = DEFAULT_MAX_DROP[precision] if max_metric_drop is None else max_metric_drop
    export_dir = Path(output) if output else out / ("onnx" if precision == "fp32" else f"onnx-{precision}")
    if export_dir.exists() and any(export_dir.iterdir()):
        raise RecipeInputError(f"{export_dir} already exists; remove it or give --output (export never overwrites).")

    config = AutoConfig.from_pretrained(out)
    architecture = _architecture(config, out)
    if config.is_encoder_decoder and architecture.main_input_name != "input_ids":
        raise RecipeInputError(
            f"{out} holds a {architecture.__name__}, an encoder-decoder over {architecture.main_input_name}: export "
            "covers encoders (ONNX Runtime) and text-to-text encoder-decoders (CTranslate2), not this one. Serve it "
            "with PyTorch.")

    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        task, args = prepared_task(out, run_config, Path(scratch) / "run", batch_size, main_of)
        if task.eval_dataset is None:
            raise RecipeInputError(f"{out}: its run had no validation split, so the export cannot be checked; "
                                   "export the output dir of a run that validated.")
        model = architecture.from_pretrained(out).eval()
        staging = Path(scratch) / "export"
        staging.mkdir()
        runtime = CT2 if model.config.is_encoder_decoder else ONNX
        logger.info("exporting %s (%s) to %s %s", out, type(model).__name__, runtime, precision)
        if runtime == ONNX:
            _export_onnx(model, task, args, staging, precision)
        else:
            _export_ct2(out, model.config, staging, precision)
        # What loads the model without its weights: its config, preprocessing, pipeline class and the run's record.
        model.config.save_pretrained(staging)
        if model.can_generate():
            model.generation_config.save_pretrained(staging)
        task.processing_class.save_pretrained(staging)
        for path in [*out.glob("*.py"), out / RUN_CONFIG_FILE]:
            shutil.copy2(path, staging / path.name)
        report = parity(task, args, model, exported_model(staging))
        report.update(format=fmt, runtime=runtime, precision=precision, source=str(out.resolve()),
                      export_dir=str(export_dir.resolve()), max_metric_drop=limit,
                      passed=report["metric_drop"] <= limit)
        _record(out, report)
        if not report["passed"]:
            raise RecipeInputError(
                f"export refused: {report['main_metric']} on the validation split fell from {report['torch'][report['main_metric']]:.4f} "
                f"(PyTorch) to {report['exported'][report['main_metric']]:.4f} ({runtime} {precision}), a drop of "
                f"{report['metric_drop']:.2f} points, over --max_metric_drop {limit}. Top-1 agreement "
                f"{report['top1_agreement']:.4f}. Nothing was exported; the numbers are in {out / EXPORT_REPORT}.")
        write_json(staging / EXPORT_REPORT, report)
        export_dir.mkdir(parents=True, exist_ok=True)
        for entry in staging.iterdir():
            shutil.move(str(entry), export_dir / entry.name)
    logger.info("exported to %s: %s %s", export_dir, _summary(report), "(passed)")
    return report


def _check_run_dir(out: Path) -> dict[str, Any]:
    config_file = out / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise RecipeInputError(f"{out} holds no {RUN_CONFIG_FILE}: give the output dir of a finetune-recipes run.")
    if (out / ENSEMBLE_FILE).is_file():
        raise RecipeInputError(f"{out} holds an ensemble; export each member's output dir on its own.")
    if not (out / "config.json").is_file():
        raise RecipeInputError(f"{out} holds no model (config.json): export the output dir of a finished run.")
    if not any(out.glob("*.safetensors")) and not any(out.glob("pytorch_model*.bin")):
        raise RecipeInputError(f"{out} holds a config.json but no weights (model.safetensors): export the output dir "
                               "of a finished run, with its model.")
    return json.loads(config_file.read_text(encoding="utf-8"))


def prepared_task(out: Path, run_config: dict[str, Any], scratch: Path, batch_size: int,
                  main_of: Callable[[str], Callable]) -> tuple[Task, TrainingArguments]:
    """The run's Task as its recipe prepares it from the recorded options, the model and tokenizer read from `out`;
    and its training arguments, set to predict in batches of `batch_size`. Nothing is trained or written to `out`."""
    options = {**run_config["options"], "model_name_or_path": str(out), "config_name": None, "tokenizer_name": None,
               "output_dir": str(scratch), "overwrite_output_dir": True, "per_device_eval_batch_size": batch_size,
               "report_to": "none"}
    options = {k: v for k, v in options.items() if v is not None}  # None: the recipe's default
    scratch.mkdir(parents=True)
    config_file = scratch.parent / "run.yaml"
    taken: list = []
    while True:
        config_file.write_text(yaml.safe_dump(options, sort_keys=False), encoding="utf-8")
        try:
            with taking_task(lambda task, args, _: taken.append((task, args))):
                main_of(run_config["recipe"])(["--config", str(config_file)])
            break
        except UnknownOption as unknown:  # a run of an earlier version: an option since renamed or removed
            logger.warning("%s records option %s=%r, which the recipe no longer has: left out", RUN_CONFIG_FILE,
                           unknown.key, options.pop(unknown.key))
    if not taken:
        raise RecipeInputError(f"the {run_config['recipe']} recipe ended before building its task; cannot check the export.")
    task, args = taken[0]
    return task, replace(args, report_to=[], prediction_loss_only=False, disable_tqdm=True)


def _architecture(config: PretrainedConfig, out: Path) -> type[PreTrainedModel]:
    if not config.architectures or not hasattr(transformers, config.architectures[0]):
        raise RecipeInputError(f"{out}/config.json names no transformers architecture; cannot tell what to export.")
    return getattr(transformers, config.architectures[0])


def _example_batch(task: Task, args: TrainingArguments, model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """A batch of the validation split as the trainer collates it, with the inputs the model's forward takes."""
    trainer = build_trainer(task, args, PREDICTING, model=model, model_init=None)
    batch = next(iter(trainer.get_eval_dataloader(task.eval_dataset)))
    accepted = inspect.signature(model.forward).parameters
    inputs = {k: v for k, v in batch.items() if k in accepted and k not in TARGET_KEYS and isinstance(v, torch.Tensor)}
    first = inputs[model.main_input_name]
    if MASK in accepted and MASK not in inputs and first.dim() == 2:
        # A sequence model's pipeline passes a mask where the collator does not (wav2vec2). An image model's forward
        # may name one too (ViT), but nothing passes it one.
        inputs[MASK] = torch.ones(first.shape, dtype=torch.long)
    return inputs


def _export_onnx(model: PreTrainedModel, task: Task, args: TrainingArguments, staging: Path, precision: str) -> None:
    from torch.export import Dim

    batch = _example_batch(task, args, model)
    if len(next(iter(batch.values()))) < 2:
        raise RecipeInputError("the validation split has a single row: the export needs two to leave the batch size free.")
    with torch.no_grad():
        outputs = model(**batch)
    names = [k for k in outputs if k != "loss"]
    target = staging / ONNX_FILE
    fp32 = staging / "fp32.onnx" if precision != "fp32" else target
    # The batch is free, and so is the length of a sequence (token ids, masks, waveforms); images and spectrograms
    # come at the fixed size their processor gives them, which position embeddings may depend on (ViT).
    dims = {name: {axis: Dim.AUTO for axis in range(2 if value.dim() == 2 else 1)} for name, value in batch.items()}
    with _quiet():
        torch.onnx.export(model, (), str(fp32), kwargs=batch, input_names=list(batch), output_names=names,
                          dynamic_shapes=dims, dynamo=True, external_data=False)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _quiet():
            # The matrix products only, as dynamic quantization of transformers goes: ONNX Runtime's integer
            # convolutions ran slower than fp32 ones on ConvNeXt, and it cannot quantize a weight-normed convolution
            # (wav2vec2's positional one) at all.
            quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        fp32.unlink()
    ExportConfig(ONNX, precision, type(model).__name__, f"{type(outputs).__module__}:{type(outputs).__qualname__}",
                 list(batch), names).save(staging)


@contextlib.contextmanager
def _quiet():
    """The exporter prints its progress to stdout and logs each graph pass; the log says what is being done."""
    loggers = [logging.getLogger(), logging.getLogger("onnx_ir")]  # onnxruntime.quantization logs to the root
    levels = [logger.level for logger in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(None):
            yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def _export_ct2(out: Path, config: PretrainedConfig, staging: Path, precision: str) -> None:
    import ctranslate2
    from ctranslate2.converters import transformers as ct2_transformers

    loaders = ct2_transformers._MODEL_LOADERS
    name = type(config).__name__
    if name not in loaders:
        raise RecipeInputError(f"CTranslate2 cannot convert a {config.architectures[0]}; export is not available for it.")
    saved = loaders[name]
    if name == "MarianConfig":  # a fine-tuned Marian starts decoding from <pad>'s trained embedding, not zeros
        loaders[name] = _fine_tuned_marian_loader()
    try:
        ctranslate2.converters.TransformersConverter(str(out), load_as_float16=False).convert(
            str(staging / CT2_DIR), quantization="int8" if precision == "int8" else None, force=True)
    finally:
        loaders[name] = saved
    ExportConfig(CT2, precision, config.architectures[0], "", [], []).save(staging)


def _fine_tuned_marian_loader():
    """CTranslate2's Marian conversion, less the assumption that <pad> (the decoder's first input) embeds to zeros.

    opus-mt checkpoints hold <pad> as the last token with an all-zero embedding, so the stock converter drops it
    and starts decoding from zeros. Fine-tuning moves that row (the output projection is tied to it), and the
    stock conversion then differs from transformers from the first generated token: measured on the tiny Marian,
    0 of 50 greedy translations the same. With <pad> kept and decoding started from it, the two agree."""
    from ctranslate2.converters.transformers import BartLoader, MarianMTLoader

    class FineTunedMarianLoader(MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return BartLoader.get_model_spec(self, model)

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def set_decoder(self, spec, decoder):
            BartLoader.set_decoder(self, spec, decoder)

        def get_vocabulary(self, model, tokenizer):
            return BartLoader.get_vocabulary(self, model, tokenizer)

    return FineTunedMarianLoader()


def timed_predictions(task: Task, args: TrainingArguments, model: PreTrainedModel) -> tuple[Any, float]:
    """The trainer's predictions on the validation split with `model`, and its rows per second."""
    trainer = build_trainer(task, args, PREDICTING, model=model, model_init=None, train_dataset=None)
    started = time.perf_counter()
    output = trainer.predict(task.eval_dataset, metric_key_prefix="eval")
    return output, len(task.eval_dataset) / (time.perf_counter() - started)


def _sequences(predictions: np.ndarray, pad: int | None) -> list[tuple]:
    return [tuple(int(t) for t in row if t >= 0 and t != pad) for row in predictions]


def parity(task: Task, args: TrainingArguments, model: PreTrainedModel, exported: PreTrainedModel) -> dict[str, Any]:
    """Both models' predictions on the validation split: metrics, rows/s, logit difference, top-1 agreement."""
    metric = f"eval_{task.main_metric}"
    reference, reference_speed = timed_predictions(task, args, model)
    candidate, candidate_speed = timed_predictions(task, args, exported)
    if metric not in reference.metrics or metric not in candidate.metrics:
        raise RecipeInputError(f"the validation split has no labels to score {task.main_metric}; cannot check the export.")
    report: dict[str, Any] = {"main_metric": task.main_metric, "validation_rows": len(task.eval_dataset)}
    for name, output, speed in (("torch", reference, reference_speed), ("exported", candidate, candidate_speed)):
        report[name] = {k.removeprefix("eval_"): v for k, v in output.metrics.items()
                        if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second", "_loss", "_preparation_time"))}
        report[name]["rows_per_s"] = round(speed, 2)
    report["speedup"] = round(candidate_speed / reference_speed, 3)
    a, b = reference.predictions, candidate.predictions
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    if model.config.is_encoder_decoder:  # generated token ids
        pad = model.config.pad_token_id
        same = [x == y for x, y in zip(_sequences(a, pad), _sequences(b, pad))]
        report["identical_generations"] = report["top1_agreement"] = float(np.mean(same))
    elif np.issubdtype(np.asarray(a).dtype, np.integer):  # already reduced to ids (CTC frames)
        report["top1_agreement"] = float(np.mean(np.asarray(a) == np.asarray(b)))
    else:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        finite = np.isfinite(a) & np.isfinite(b)  # padded positions (-100, -inf) are no logits
        report["max_abs_logit_diff"] = float(np.abs(a - b)[finite].max()) if finite.any() else 0.0
        valid = finite.all(axis=-1) if a.ndim > 1 else finite
        top_a, top_b = (a.argmax(-1), b.argmax(-1)) if a.ndim > 1 else (a, b)
        report["top1_agreement"] = float(np.mean((top_a == top_b)[valid.reshape(top_a.shape)])) if a.ndim > 1 else 1.0
    scale = 100.0 / task.metric_scale  # points of the metric's own scale
    difference = (report["torch"][task.main_metric] - report["exported"][task.main_metric]) * scale
    report["metric_drop"] = round(difference if task.greater_is_better else -difference, 4)
    if not math.isfinite(report["metric_drop"]):
        report["metric_drop"] = math.inf
    return report


def _summary(report: dict[str, Any]) -> str:
    metric = report["main_metric"]
    diff = (f"; max |logit difference| {report['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in report else
            f"; identical generations {report['identical_generations']:.4f}" if "identical_generations" in report else "")
    return (f"{metric} {report['torch'][metric]:.4f} (PyTorch) vs {report['exported'][metric]:.4f} ({report['runtime']} "
            f"{report['precision']}), drop {report['metric_drop']:.2f} points (limit {report['max_metric_drop']}); "
            f"top-1 agreement {report['top1_agreement']:.4f}{diff}; {report['torch']['rows_per_s']:.1f} vs "
            f"{report['exported']['rows_per_s']:.1f} rows/s")


def _record(out: Path, report: dict[str, Any]) -> None:
    """The run dir's export_report.json (one entry per export dir) and the Export section of its report.html."""
    path = out / EXPORT_REPORT
    reports = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    reports[Path(report["export_dir"]).name] = report
    write_json(path, reports)
    if (out / "report.html").is_file():
        write_html_report(out)

