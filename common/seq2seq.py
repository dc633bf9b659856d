"""Sequence-to-sequence helpers: parallel text in, generation metrics and a loadable translation model out.

- Data: every input shape becomes a Dataset with a `source` and a `target` column (test splits may lack
  the target): a pair of line-aligned plain-text files, a `translation` dict column (Hub datasets, jsonl),
  or two text columns of a csv/tsv/jsonl/parquet table.
- Empty text: a pair empty on both sides carries nothing and is dropped, with a report. A pair empty on one
  side only is an error naming the file (or column) and the line (or row) numbers: it is a missing
  translation or a sign of misalignment, and training on it teaches the model to emit nothing.
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
import sacrebleu
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, EvalPrediction, PretrainedConfig

from common.data import BadRow, check_utf8, drop_bad_rows, require_columns
from common.errors import RecipeInputError
from common.metrics import load_hub_metric
from common.truncation import report_truncation, tokenize_truncated

logger = logging.getLogger(__name__)

SOURCE, TARGET = "source", "target"
TRANSLATION_COLUMN = "translation"
PIPELINE_FILE = Path(__file__).with_name("translation_pipeline.py")
SHOWN = 5  # line numbers quoted in an error message


def read_lines(path: str, option: str) -> list[str]:
    """The lines of a UTF-8 text file; a final newline does not start another line."""
    file = Path(path)
    if not file.is_file():
        raise RecipeInputError(f"{option} {path} does not exist or is not a file (relative to {Path.cwd()}).")
    check_utf8(file)
    text = file.read_text(encoding="utf-8")
    if not text:
        raise RecipeInputError(f"{option} {path} is empty. Give a UTF-8 text file with one sentence per line.")
    # Split on newlines only: str.splitlines() also breaks at U+2028, form feeds and other separators that
    # occur inside sentences, which would shift every later line against the other language's file.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def load_parallel_files(source_file: str, target_file: str | None, split: str) -> Dataset:
    """One split from line-aligned files: line i of the source file translates to line i of the target."""
    sources = read_lines(source_file, f"--{split}_source_file")
    if target_file is None:
        return Dataset.from_dict({SOURCE: sources})
    targets = read_lines(target_file, f"--{split}_target_file")
    if len(sources) != len(targets):
        (short, n_short), (long, n_long) = sorted([(source_file, len(sources)), (target_file, len(targets))],
                                                  key=lambda item: item[1])
        raise RecipeInputError(
            f"--{split}_source_file {source_file} has {len(sources)} lines but --{split}_target_file {target_file} "
            f"has {len(targets)}: line-aligned files need exactly one line per sentence pair. They stop aligning "
            f"at line {n_short + 1}, the first line of {long} with no counterpart in {short} ({n_long - n_short} "
            f"extra line{'s' if n_long - n_short > 1 else ''}). Look for a sentence split over two lines or a missing translation; the content "
            "may already drift before that line."
        )
    return Dataset.from_dict({SOURCE: sources, TARGET: targets})


def _keys(feature) -> list[str]:
    """Language keys of a `translation` column: a datasets Translation feature or a struct (dict) feature."""
    languages = getattr(feature, "languages", None)
    if languages is not None:
        return list(languages)
    return list(feature) if isinstance(feature, dict) else []


def pairs_from_table(dataset: Dataset, source_key: str, target_key: str, where: str, split: str) -> Dataset:
    """`source`/`target` columns from a `translation` dict column or from two text columns."""
    need_target = split != "test"
    if TRANSLATION_COLUMN in dataset.column_names:
        keys = _keys(dataset.features[TRANSLATION_COLUMN])
        missing = [k for k in (source_key, target_key) if k not in keys and (need_target or k == source_key)]
        if missing:
            raise RecipeInputError(
                f"language{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)} not in the "
                f"'{TRANSLATION_COLUMN}' column of {where}, which holds: {', '.join(sorted(keys))}. Set --source_lang/"
                "--target_lang to those keys, or --source_column/--target_column when the model's language codes "
                "differ from the data's keys (e.g. NLLB's eng_Latn for 'en')."
            )
        has_target = target_key in keys

        def flatten(batch: dict) -> dict:
            pairs = batch[TRANSLATION_COLUMN]
            out = {SOURCE: [p.get(source_key) for p in pairs]}
            if has_target:
                out[TARGET] = [p.get(target_key) for p in pairs]
            return out

        return dataset.map(flatten, batched=True, remove_columns=dataset.column_names)
    columns = [source_key] + ([target_key] if need_target or target_key in dataset.column_names else [])
    option = "--source_column/--target_column (or --source_lang/--target_lang)"
    require_columns(dataset, columns, where, option)
    dataset = dataset.select_columns(columns)
    if len(columns) == 2 and source_key == target_key:
        raise RecipeInputError(f"source and target are the same column '{source_key}' in {where}: set {option}.")
    return dataset.rename_columns(dict(zip(columns, (SOURCE, TARGET))))


def _blank(values: Sequence) -> np.ndarray:
    return np.array([v is None or not str(v).strip() for v in values], dtype=bool)


def _numbers(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask) + 1
    shown = ", ".join(str(r) for r in rows[:SHOWN])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > SHOWN else "")


def drop_empty_pairs(dataset: Dataset, names: dict[str, str], unit: str, split: str, skip: bool = False,
                     max_fraction: float = 0.05) -> tuple[Dataset, int]:
    """Drop pairs empty on both sides (reported). A side empty alone is an error naming its line numbers, or
    with `skip` a bad row, dropped and counted; returns the dataset and that count.

    `names` says where each column came from (file or column name), `unit` is "line" or "row".
    """
    source = _blank(dataset[SOURCE])
    target = _blank(dataset[TARGET]) if TARGET in dataset.column_names else np.zeros_like(source)
    both = source & target
    if both.any():
        logger.warning("dropped %d pair(s) empty on both sides of %s and %s, at %ss %s", both.sum(), names[SOURCE],
                       names[TARGET], unit, _numbers(both))
        if both.all():
            raise RecipeInputError(f"{names[SOURCE]} and {names[TARGET]} hold no non-empty pair: every {unit} is "
                                   "blank on both sides. Check that these are the right files (or columns).")
    alone = {SOURCE: source & ~target, TARGET: target & ~source}
    if skip:
        bad = [BadRow(int(i), f"{unit} {i + 1}", f"empty {column}") for column, mask in alone.items()
               for i in np.flatnonzero(mask)]
        where = f"{names[SOURCE]} / {names[TARGET]}" if TARGET in dataset.column_names else names[SOURCE]
        # For its --max_bad_fraction check and log; the rows it keeps still hold the pairs empty on both sides.
        drop_bad_rows(DatasetDict({split: dataset}), {split: sorted(bad, key=lambda r: r.index)}, {split: where},
                      True, max_fraction)
        return dataset.select(np.flatnonzero(~(source | target))), len(bad)  # no side empty
    if TARGET not in dataset.column_names and source.any():
        raise RecipeInputError(f"{names[SOURCE]} has empty text at {unit}s {_numbers(source)}. Remove them, or pass "
                               "--skip_bad_examples to leave them out.")
    for column, mask in alone.items():
        if mask.any():
            other = names[TARGET if column == SOURCE else SOURCE]
            raise RecipeInputError(
                f"{names[column]} is empty at {unit}s {_numbers(mask)}, where {other} has text: a missing "
                f"translation or a misalignment. Remove those {unit}s from both sides, or fill in the missing text; "
                "or pass --skip_bad_examples to leave them out (counted in all_results.json)."
            )
    return (dataset.select(np.flatnonzero(~both)) if both.any() else dataset), 0


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
    ids = np.asarray(ids[0] if isinstance(ids, tuple) else ids)
    ids = np.where(ids < 0, tokenizer.pad_token_id, ids)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus sacreBLEU (13a tokenization) and chrF, both 0-100, from detokenized text."""
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
    }


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
    from common.translation_pipeline import TASK

    config.custom_pipelines = {
        TASK: {"impl": f"{PIPELINE_FILE.stem}.TranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
    }
    settings = {"prefix": prefix, "src_lang": source_lang, "tgt_lang": target_lang}
    config.task_specific_params = {**(getattr(config, "task_specific_params", None) or {}), TASK: settings}


def save_translation_pipeline(output_dir: str | Path) -> None:
    """Copy the pipeline code beside a saved model, as `Pipeline.save_pretrained` does for custom pipelines."""
    shutil.copy(PIPELINE_FILE, Path(output_dir) / PIPELINE_FILE.name)
