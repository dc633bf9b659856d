"""Sequence-to-sequence helpers: parallel text (common.data.parallel) tokenized, generation metrics and a
loadable translation model out.

- Tokenization reports how many sources and targets were longer than their limit and got truncated.
- Metrics need no Hub: corpus sacreBLEU and chrF (sacrebleu) against each split's raw reference text (not the
  truncated labels) and the mean generated length in tokens.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import sacrebleu
import torch
from datasets import DatasetDict
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    EvalPrediction,
    GenerationConfig,
    PretrainedConfig,
)

from common.core.errors import RecipeInputError
from common.data.parallel import SOURCE, TARGET
from common.data.truncation import report_truncation, tokenize_truncated
from common.training.error_analysis import ErrorAnalysis, check_inputs, worst
from common.training.metrics import first_output, load_hub_metric
from common.training.translation_pipeline import TASK

logger = logging.getLogger(__name__)

PIPELINE_FILE = Path(__file__).with_name("translation_pipeline.py")


def tokenize_pairs(
    splits: DatasetDict, tokenizer, max_source_length: int, max_target_length: int, prefix: str = "",
    keep_source: Sequence[str] = (), num_proc: int | None = None,
) -> DatasetDict:
    """input_ids/attention_mask from `prefix + source`, labels from target; truncation is logged per split.

    Splits named in `keep_source` keep their source text too (on-the-fly augmentation re-encodes it).
    """
    limits = {SOURCE: max_source_length, TARGET: max_target_length}

    def encode(batch: dict) -> dict:
        sources, lengths = tokenize_truncated(tokenizer, [[prefix + s for s in batch[SOURCE]]], max_source_length)
        ids = sources["input_ids"]
        out = {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids], f"{SOURCE}_tokens": lengths}
        if TARGET in batch:
            targets, out[f"{TARGET}_tokens"] = tokenize_truncated(tokenizer, [batch[TARGET]], max_target_length,
                                                                  target=True)
            out["labels"] = targets["input_ids"]
        return out

    result = DatasetDict()
    for split, dataset in splits.items():
        drop = [c for c in dataset.column_names if not (split in keep_source and c == SOURCE)]
        encoded = dataset.map(encode, batched=True, remove_columns=drop, num_proc=num_proc)
        for side, limit in limits.items():
            if f"{side}_tokens" not in encoded.column_names:
                continue
            report_truncation(split, encoded[f"{side}_tokens"], limit, f"{side}s", f"--max_{side}_length", 0)
            encoded = encoded.remove_columns(f"{side}_tokens")
        result[split] = encoded
    return result


class Seq2SeqCollator(DataCollatorForSeq2Seq):
    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        # Unlabelled (test) batches come back with labels=None; Seq2SeqTrainer would then try to compute a loss.
        if batch.get("labels") is None:
            batch.pop("labels", None)
        return batch


def seq2seq_collator(tokenizer, config: PretrainedConfig, trust_remote_code: bool = False,
                     pad_to_multiple_of: int | None = None) -> DataCollatorForSeq2Seq:
    """Pads inputs and labels (-100) and builds decoder_input_ids from the labels.

    Decoder inputs must come from the collator: with label smoothing, Trainer takes the labels away from
    the model, which would otherwise shift them itself. The shift differs by architecture, so it is the
    model's own `prepare_decoder_input_ids_from_labels`, taken from a weightless (meta-device) instance.
    """
    with torch.device("meta"):
        shifter = AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=trust_remote_code)
    return Seq2SeqCollator(tokenizer, model=shifter, label_pad_token_id=-100, pad_to_multiple_of=pad_to_multiple_of)


def decode(tokenizer, ids) -> list[str]:
    """Generated or label ids (padded with -100) to text."""
    ids = first_output(ids)
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus sacreBLEU (13a tokenization) and chrF, both 0-100, from detokenized text."""
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
    }


def translation_errors(sources: Sequence[str], references: Sequence[str], hypotheses: Sequence[str],
                       n: int) -> ErrorAnalysis:
    """The n validation sentences with the lowest sentence chrF (sacrebleu), worst first."""
    check_inputs({"source": sources, "reference": references}, len(hypotheses))
    chrf = np.array([sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hypotheses, references)])
    rows = worst(chrf, n, largest=False)
    table = pd.DataFrame({"source": [sources[i] for i in rows], "reference": [references[i] for i in rows],
                          "hypothesis": [hypotheses[i] for i in rows], "chrf": chrf[rows]})
    return ErrorAnalysis(f"the {len(rows)} validation sentences with the lowest sentence chrF", table)


class RawReferences:
    """The reference text of each scored split, before tokenization: BLEU and chrF are scored against it, never
    against text decoded from the label ids, which --max_target_length truncated and the tokenizer re-spelled
    (unknown characters, normalisation). `splits` holds (label ids, reference texts) per split, row-aligned.

    Trainer hands compute_metrics only the predictions and label ids, not the split's name, so the split is the
    one whose label ids these are: the count alone cannot tell apart a validation and a test split of one size.
    """

    def __init__(self, splits: Sequence[tuple[Sequence[Sequence[int]], Sequence[str]]] = ()):
        self.splits = [(labels, list(texts)) for labels, texts in splits]

    def find(self, label_ids: np.ndarray, pad_id: int | None) -> list[str] | None:
        """The references of the split whose label ids these are; None if no split's. The rows come padded with
        -100 (collator, batches) and then with `pad_id` (Seq2SeqTrainer pads labels to the generation length)."""
        rows = [row[row >= 0] for row in np.asarray(label_ids)]

        def same(row: np.ndarray, ids: Sequence[int]) -> bool:
            return (len(row) >= len(ids) and np.array_equal(row[: len(ids)], ids)
                    and bool((row[len(ids):] == pad_id).all()))

        for labels, texts in self.splits:
            if len(labels) == len(rows) and all(same(row, ids) for row, ids in zip(rows, labels)):
                return texts
        return None


def build_generation_metrics(tokenizer, hub_metric_id: str | None = None,
                             references: RawReferences | None = None) -> Callable[[EvalPrediction], dict]:
    """compute_metrics for Seq2SeqTrainer with predict_with_generate: bleu, chrf, gen_len (+ a Hub metric),
    scored against `references` (the raw text of the split evaluated). Label ids that are no split's of
    `references` are decoded instead, with a warning: such references are truncated at --max_target_length."""
    hub_metric = load_hub_metric(hub_metric_id) if hub_metric_id else None

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        generated = np.asarray(prediction.predictions)
        hypotheses = decode(tokenizer, generated)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        raw = references.find(prediction.label_ids, pad_id) if references is not None else None
        if raw is None:
            if references is not None:
                logger.warning("the %d evaluated label rows belong to no known split: BLEU and chrF are scored "
                               "against references decoded from the (truncated) label ids", len(hypotheses))
            raw = decode(tokenizer, prediction.label_ids)
        result = generation_metrics(hypotheses, raw)
        result["gen_len"] = float(np.mean(np.sum((generated >= 0) & (generated != tokenizer.pad_token_id), axis=-1)))
        if hub_metric is not None:
            extra = hub_metric.compute(predictions=hypotheses, references=[[r] for r in raw])
            result.update({f"{hub_metric_id}_{k}" if k in result else k: v for k, v in extra.items()
                           if isinstance(v, (int, float))})
        return result

    return compute_metrics


# generate()'s own defaults, for what neither the options nor the model's generation config set.
GENERATE_DEFAULTS = {"max_length": 20, "num_beams": 1}


def generation_kwargs(args, generation: GenerationConfig | None = None) -> dict[str, int]:
    """How the run's predictions generate, as pipeline() call arguments: Seq2SeqTrainer passes
    --generation_max_length and --generation_num_beams where set, and otherwise leaves the model's generation config
    (`generation`), then generate()'s defaults, in charge. A pipeline with defaults of its own (speech recognition:
    5 beams, 256 new tokens) would replace those, so with `generation` every setting is spelled out."""
    settings = {"max_length": args.generation_max_length, "num_beams": args.generation_num_beams}
    if generation is not None:
        for key, default in GENERATE_DEFAULTS.items():
            if key == "max_length" and generation.max_new_tokens is not None:
                continue  # max_new_tokens bounds the length, in the run and in the pipeline alike
            settings[key] = settings[key] or getattr(generation, key) or default
    return {key: value for key, value in settings.items() if value is not None}


def write_translations(path: str | Path, sources: list[str], hypotheses: list[str],
                       references: list[str] | None = None) -> None:
    """Tab-separated source, reference (empty without one) and hypothesis, one pair per line, with a header."""

    def clean(text: str | None) -> str:
        return " ".join((text or "").split())  # tabs and newlines inside a text would break the columns

    references = references if references is not None else [""] * len(sources)
    lines = ["source\treference\thypothesis"]
    lines += [f"{clean(s)}\t{clean(r)}\t{clean(h)}" for s, r, h in zip(sources, references, hypotheses)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def language_codes(tokenizer, source_lang: str | None, target_lang: str | None) -> int | None:
    """Set the languages of a multilingual tokenizer (mBART-50, M2M100, NLLB); return the forced BOS id.

    Other tokenizers have no `src_lang` and are left alone (None).
    """
    if not hasattr(tokenizer, "src_lang"):
        return None
    name = type(tokenizer).__name__
    codes = list(getattr(tokenizer, "lang_code_to_token", None) or [])  # M2M100: 'en' -> '__en__'
    standard = set(tokenizer.special_tokens_map.values()) if hasattr(tokenizer, "special_tokens_map") else set()
    codes = codes or [t for t in tokenizer.all_special_tokens if t not in standard]
    examples = ", ".join(codes[:8]) + (", ..." if len(codes) > 8 else "")
    if not (source_lang and target_lang):
        raise RecipeInputError(
            f"{name} is multilingual: set --source_lang and --target_lang to its language codes ({examples})."
        )
    ids = {}
    for option, code in (("--source_lang", source_lang), ("--target_lang", target_lang)):
        token = getattr(tokenizer, "lang_code_to_token", {}).get(code, code)
        ids[option] = tokenizer.convert_tokens_to_ids(token)
        if ids[option] is None or ids[option] == tokenizer.unk_token_id:
            raise RecipeInputError(f"{option} {code} is not a language code of {name}; its codes: {examples}.")
    tokenizer.src_lang, tokenizer.tgt_lang = source_lang, target_lang
    return ids["--target_lang"]


def mark_translation_model(config: PretrainedConfig, prefix: str, source_lang: str | None,
                           target_lang: str | None) -> None:
    """Record what `pipeline("translation", ...)` needs in the config that is saved with the model."""
    config.custom_pipelines = {
        TASK: {"impl": f"{PIPELINE_FILE.stem}.TranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
    }
    settings = {"prefix": prefix, "src_lang": source_lang, "tgt_lang": target_lang}
    config.task_specific_params = {**(getattr(config, "task_specific_params", None) or {}), TASK: settings}


def save_translation_pipeline(output_dir: str | Path) -> None:
    """Copy the pipeline code beside a saved model, as `Pipeline.save_pretrained` does for custom pipelines."""
    shutil.copy(PIPELINE_FILE, Path(output_dir) / PIPELINE_FILE.name)
