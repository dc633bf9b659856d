"""Run a fine-tuned model on an exported runtime: ONNX Runtime for encoders, CTranslate2 for encoder-decoders.

An export dir (`finetune-recipes export`, common.strategies.export) holds the model's config and preprocessing
files, `export_config.json` and the exported model: `model.onnx`, or a CTranslate2 model in `ctranslate2/`.
`exported_model(export_dir)` gives back a transformers model of the run's architecture whose `forward` (or, for an
encoder-decoder, `generate`) runs on that runtime; its own weights are never read, so they are left uninitialised.
Pipelines, the recipe's Trainer and its predict code take it as they take the PyTorch model: the same
preprocessing, the same outputs. Inside `serving(export_dir)`, `inference_model` and `inference_pipeline` hand out
such models (finetune-recipes predict --runtime onnx); outside it they load the PyTorch model.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    pipeline,
)
from transformers.pipelines import check_task

from common.core.errors import RecipeInputError

EXPORT_CONFIG = "export_config.json"
ONNX_FILE = "model.onnx"
CT2_DIR = "ctranslate2"
ONNX, CT2 = "onnx", "ctranslate2"
# Keys a model takes as targets: given one, Trainer asks the model for a loss, which an exported graph does not
# compute (the parity check compares predictions and metrics, never losses).
TARGET_KEYS = ("labels", "start_positions", "end_positions")
MASK = "attention_mask"
ONNX_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
               "tensor(bool)": np.bool_}

_SERVING: contextvars.ContextVar[Path | None] = contextvars.ContextVar("finetune_recipes_serving", default=None)


@dataclass
class ExportConfig:
    """export_config.json: what the export dir holds and how its model is called."""

    runtime: str  # ONNX or CT2
    precision: str  # fp32 or int8
    architecture: str  # the transformers class, e.g. BertForSequenceClassification
    output_class: str  # module:qualname of the ModelOutput its forward returns (ONNX)
    inputs: list[str] = field(default_factory=list)  # the graph's inputs, as the model's forward names them
    outputs: list[str] = field(default_factory=list)  # the graph's outputs, in the ModelOutput's order

    def save(self, directory: Path) -> None:
        (directory / EXPORT_CONFIG).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> ExportConfig:
        path = Path(directory) / EXPORT_CONFIG
        if not path.is_file():
            raise RecipeInputError(f"{directory} holds no {EXPORT_CONFIG}: give an export dir written by "
                                   "`finetune-recipes export`.")
        saved = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})  # an earlier version's extras left out


class OnnxForward:
    """A model's forward on an ONNX Runtime session: tensors in, the model's own ModelOutput class out."""

    def __init__(self, path: Path, config: ExportConfig, signature: inspect.Signature):
        import onnxruntime

        self.__signature__ = signature  # Trainer and pipelines pass on what it names
        self.named = {n for n, p in signature.parameters.items() if p.kind is not p.VAR_KEYWORD}

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        # The graph's dtype per input: a pipeline may pass an int32 mask where the model was traced with int64.
        self.dtypes = {i.name: ONNX_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self.outputs = config.outputs
        module, name = config.output_class.split(":")
        self.output_class = getattr(importlib.import_module(module), name)

    def __call__(self, **kwargs: Any):
        given = {k: v for k, v in kwargs.items()
                 if isinstance(v, torch.Tensor) and k in self.named and k not in TARGET_KEYS}
        ignored = sorted(set(given) - set(self.inputs))
        if ignored:  # a graph that ignored an input the PyTorch model uses would answer differently, silently
            raise RecipeInputError(f"the exported model takes {', '.join(self.inputs)}, not {', '.join(ignored)}, "
                                   "which this call passes; export the run again.")
        if MASK in self.inputs and MASK not in given:  # no mask: every position counts, as the model takes None
            given[MASK] = torch.ones(given[self.inputs[0]].shape[:2], dtype=torch.long)
        missing = [name for name in self.inputs if name not in given]
        if missing:
            raise RecipeInputError(f"the exported model takes {', '.join(self.inputs)}; this call lacks {', '.join(missing)}.")
        feeds = {name: given[name].detach().cpu().numpy() for name in self.inputs}
        feeds = {name: value.astype(self.dtypes[name] or value.dtype, copy=False) for name, value in feeds.items()}
        values = self.session.run(self.outputs, feeds)
        outputs = {name: torch.from_numpy(value) for name, value in zip(self.outputs, values)}
        if any(kwargs.get(key) is not None for key in TARGET_KEYS):
            outputs = {"loss": torch.tensor(float("nan")), **outputs}
        return self.output_class(**outputs)


class Ct2Generate:
    """An encoder-decoder's `generate` on a CTranslate2 Translator: token ids in, token ids out, greedy or beam as
    the generation config and call ask, laid out as transformers returns them (decoder start, tokens, end)."""

    def __init__(self, path: Path, model: PreTrainedModel, tokenizer):
        import ctranslate2

        self.translator = ctranslate2.Translator(str(path), device="cpu", intra_threads=torch.get_num_threads())
        self.model, self.tokenizer = model, tokenizer

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, **kwargs: Any) -> torch.Tensor:
        config = (generation_config or self.model.generation_config).to_dict() | {
            k: v for k, v in kwargs.items() if v is not None}
        if config.get("do_sample"):
            raise RecipeInputError("the CTranslate2 export generates greedily or by beam search; sampling is not exported.")
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        sources = [self.tokenizer.convert_ids_to_tokens(ids[m.bool()].tolist()) for ids, m in zip(input_ids, mask)]
        start, end, pad = (self.model.config.decoder_start_token_id, self.model.config.eos_token_id,
                           self.model.config.pad_token_id)
        # transformers counts the decoder start in max_length, and with forced_eos_token_id ends on that token.
        longest = config.get("max_new_tokens") or (config.get("max_length") or 20) - 1
        forced_end = config.get("forced_eos_token_id") is not None
        longest -= forced_end
        results = self.translator.translate_batch(
            sources, beam_size=config.get("num_beams") or 1, max_decoding_length=longest,
            min_decoding_length=max((config.get("min_length") or 0) - 1, 0),
            length_penalty=config.get("length_penalty", 1.0), repetition_penalty=config.get("repetition_penalty", 1.0),
            no_repeat_ngram_size=config.get("no_repeat_ngram_size") or 0, return_end_token=True)
        rows = [[start, *self.tokenizer.convert_tokens_to_ids(r.hypotheses[0])] for r in results]
        rows = [[*row, end] if forced_end and row[-1] != end else row for row in rows]
        out = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, :len(row)] = torch.tensor(row)
        return out


def skeleton(directory: str | Path) -> PreTrainedModel:
    """The saved config's architecture with uninitialised weights, for a runtime that brings its own."""
    config = AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        model = getattr(transformers, config.architectures[0])(config)
    model = model.to_empty(device="cpu").eval()
    model.name_or_path = model.config._name_or_path = str(directory)  # pipelines find its tokenizer or processor
    if model.can_generate():
        model.generation_config = GenerationConfig.from_model_config(config)
        if (Path(directory) / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(directory)
    return model


def exported_model(export_dir: str | Path) -> PreTrainedModel:
    """A transformers model that predicts with the export in `export_dir` (see the module docstring)."""
    export_dir = Path(export_dir)
    config = ExportConfig.load(export_dir)
    model = skeleton(export_dir)
    if config.runtime == ONNX:
        model.forward = OnnxForward(export_dir / ONNX_FILE, config, inspect.signature(model.forward))
    else:
        model.generate = Ct2Generate(export_dir / CT2_DIR, model, AutoTokenizer.from_pretrained(export_dir))
    return model


@contextlib.contextmanager
def serving(export_dir: str | Path | None) -> Iterator[None]:
    """Within the block, `inference_model` and `inference_pipeline` run the export in `export_dir` (None: PyTorch)."""
    token = _SERVING.set(Path(export_dir) if export_dir is not None else None)
    try:
        yield
    finally:
        _SERVING.reset(token)


def inference_model(auto_class: type, model_dir: str | Path, device: str | int = "cpu") -> PreTrainedModel:
    """The model in `model_dir` for prediction, on the runtime being served (PyTorch outside `serving`)."""
    export_dir = _SERVING.get()
    if export_dir is None:
        return auto_class.from_pretrained(model_dir).to(device).eval()
    return exported_model(export_dir)


def inference_pipeline(task: str, model_dir: str | Path, device: int = -1, **kwargs: Any):
    """`pipeline(task, model=model_dir)` on the runtime being served."""
    export_dir = _SERVING.get()
    if export_dir is None:
        return pipeline(task, model=str(model_dir), device=device, **kwargs)
    model, pipeline_class = exported_model(export_dir), kwargs.pop("pipeline_class", None)
    parts = _components(pipeline_class or _task_class(task), export_dir)
    if pipeline_class is not None:  # a recipe's own class, for a task pipeline() no longer registers (translation)
        return pipeline_class(model=model, device=-1, **parts, **kwargs)
    return pipeline(task, model=model, device=-1, **parts, **kwargs)


def _task_class(task: str) -> type:
    impl = check_task(task)[1]["impl"]
    if isinstance(impl, str):  # a dotted path in the task registry
        module, _, name = impl.rpartition(".")
        impl = getattr(importlib.import_module(module), name)
    return impl


def _components(impl: type, directory: Path) -> dict[str, Any]:
    """The preprocessing that pipeline() loads beside a model given by path, loaded for one given as an object:
    each component the pipeline class takes, where the directory holds it (pipeline()'s own soft loading)."""
    found: dict[str, Any] = {}
    for flag, name, auto in (("_load_tokenizer", "tokenizer", AutoTokenizer),
                             ("_load_image_processor", "image_processor", AutoImageProcessor),
                             ("_load_feature_extractor", "feature_extractor", AutoFeatureExtractor)):
        if getattr(impl, flag) is False:
            continue
        try:
            found[name] = auto.from_pretrained(directory)
        except (OSError, ValueError, KeyError, TypeError):  # not among the saved preprocessing
            continue
    return found
