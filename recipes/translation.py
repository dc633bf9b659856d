"""Fine-tune a pretrained encoder-decoder for translation: Marian, T5/mT5, mBART-50, M2M100, NLLB.

    python recipes/translation.py --config recipes/configs/translation/opus_mt_en_de.yaml
    accelerate launch recipes/translation.py --config recipes/configs/translation/opus_mt_en_de.yaml

Data: line-aligned text files per split (--train_source_file/--train_target_file, ...), a `translation`
dict column (Hub dataset or jsonl) or two text columns (--source_column/--target_column). Metrics:
sacreBLEU, chrF and generated length, offline. The saved model loads with
`pipeline("translation", model=output_dir, trust_remote_code=True)`. Every option: `--help`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from datasets import DatasetDict
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    Seq2SeqTrainingArguments,
    set_seed,
)

from common.core.config import LOCAL_DATA, TRAINING_DEFAULTS, RunArguments, parse_args
from common.core.errors import RecipeInputError, run_main
from common.data import add_validation_split, cap_splits, drop_unused_splits, load_splits, source
from common.data.bad_rows import add_counts
from common.data.duplicates import find_duplicates
from common.data.options import DataArguments
from common.data.parallel import (
    SOURCE,
    TARGET,
    drop_empty_pairs,
    load_parallel_files,
    pairs_from_table,
    read_lines,
)
from common.dispatch import FinetuneArguments, finetune
from common.models.loading import ModelArguments, load_config, load_model, load_processor
from common.models.runtime import inference_pipeline
from common.strategies.prediction import PredictRun
from common.toolkit.augment import TrainAugmentation
from common.toolkit.augment.text import text_augmenter
from common.toolkit.finetuning import prepare_model
from common.training.baseline import translation_baseline
from common.training.inspection import DataReport, TextSide, TokenLengths, char_lengths, stop_for_inspection
from common.training.seq2seq import (
    RawReferences,
    build_generation_metrics,
    decode,
    generation_kwargs,
    language_codes,
    mark_translation_model,
    save_translation_pipeline,
    seq2seq_collator,
    tokenize_pairs,
    translation_errors,
    write_translations,
)
from common.training.single_run import predicted_split, setup_run
from common.training.task import Task
from common.training.trainer import FinetuneSeq2SeqTrainer
from common.training.translation_pipeline import TranslationPipeline

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
T5_MODEL_TYPES = {"t5", "mt5", "umt5", "longt5"}

DEFAULTS = {
    **TRAINING_DEFAULTS,
    "output_dir": "outputs/translation",
    "per_device_train_batch_size": 32,
    "train_sampling_strategy": "group_by_length",  # pairs of similar length pad little (dynamic padding)
    "predict_with_generate": True,  # BLEU and chrF score generated translations
}


@dataclass
class TranslationDataArguments(DataArguments):
    source_lang: str | None = field(
        default=None,
        metadata={"help": "Source language: its key in a `translation` column (or its column name), and the "
                          "tokenizer's language code for mBART-50/M2M100/NLLB, e.g. en, en_XX, eng_Latn."},
    )
    target_lang: str | None = field(default=None, metadata={"help": "Target language, as --source_lang."})
    source_column: str | None = field(
        default=None,
        metadata={"help": "Column, or `translation` key, holding the source text when it is not --source_lang."},
    )
    target_column: str | None = field(
        default=None, metadata={"help": "Column, or `translation` key, holding the target text (see --source_column)."}
    )
    train_source_file: str | None = field(
        default=None, metadata={LOCAL_DATA: True, "help": "Plain text, one source sentence per line, aligned with --train_target_file."}
    )
    train_target_file: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Plain text, one translation per line."})
    validation_source_file: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Validation sources, one per line."})
    validation_target_file: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Validation targets, one per line."})
    test_source_file: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Test sources, one per line."})
    test_target_file: str | None = field(
        default=None, metadata={LOCAL_DATA: True, "help": "Test references, one per line (optional: without them, no test BLEU)."}
    )
    source_prefix: str | None = field(
        default=None, metadata={"help": "Text put before every source, e.g. 'translate English to German: ' for T5."}
    )
    max_source_length: int = field(default=128, metadata={"help": "Truncate sources to this many tokens."})
    max_target_length: int = field(
        default=128, metadata={"help": "Truncate targets to this many tokens; default for --generation_max_length."}
    )


def load_pairs(args: TranslationDataArguments) -> tuple[DatasetDict, dict[str, int]]:
    """Every split as `source`/`target` columns, from line-aligned files or tables; empty text checked or
    skipped (the skipped counts are returned)."""
    pair_files = {s: (getattr(args, f"{s}_source_file"), getattr(args, f"{s}_target_file")) for s in SPLITS}
    for split, (src, tgt) in pair_files.items():
        if src and getattr(args, f"{split}_file"):
            raise RecipeInputError(f"give the {split} split once: --{split}_file or --{split}_source_file, not both.")
        if bool(src) != bool(tgt) and not (split == "test" and src):
            raise RecipeInputError(f"--{split}_source_file and --{split}_target_file go together: give both.")
    splits, checks = DatasetDict(), {}
    if args.dataset_name or args.train_file or args.validation_file or args.test_file:
        src_key, tgt_key = args.source_column or args.source_lang, args.target_column or args.target_lang
        if not (src_key and tgt_key):
            raise RecipeInputError("name the source and target text: --source_lang/--target_lang (keys of a "
                                   "`translation` column, or column names), or --source_column/--target_column.")
        for split, table in load_splits(args).items():
            where = source(args, split)
            splits[split] = pairs_from_table(table, src_key, tgt_key, where, split)
            checks[split] = ({SOURCE: f"'{src_key}' of {where}", TARGET: f"'{tgt_key}' of {where}"}, "row")
    for split, (src, tgt) in pair_files.items():
        if src:
            splits[split] = load_parallel_files(src, tgt, split)
            checks[split] = ({SOURCE: f"--{split}_source_file {src}", TARGET: f"--{split}_target_file {tgt}"}, "line")
    if "train" not in splits:
        raise RecipeInputError("no training data: pass --train_source_file/--train_target_file, --train_file "
                               "or --dataset_name.")
    counts = {}
    for split, (names, unit) in checks.items():
        splits[split], counts[f"skipped_bad_examples_{split}"] = drop_empty_pairs(
            splits[split], names, unit, split, args.skip_bad_examples, args.max_bad_fraction)
    if args.skip_bad_examples:
        counts["skipped_bad_examples"] = sum(counts.values())
    return splits, counts if args.skip_bad_examples else {}


def pair_columns(args: TranslationDataArguments) -> dict[str, str]:
    """The columns section of translation: where the source and target text of each pair come from."""
    files = [split for split in ("train", "validation", "test") if getattr(args, f"{split}_source_file", None)]
    if files:
        return {side: f"lines of {', '.join(f'--{split}_{side}_file' for split in files)} (line-aligned files)"
                for side in ("source", "target")}
    columns = {}
    for side in ("source", "target"):
        column, lang = getattr(args, f"{side}_column", None), getattr(args, f"{side}_lang", None)
        option = f"--{side}_column" if column else f"--{side}_lang"
        columns[side] = f"{column or lang} (given by {option}: a column, or a key of a `translation` column)"
    return columns


def pair_sources(args: TranslationDataArguments, splits: DatasetDict) -> dict[str, str]:
    """Where each translation split came from: its files, or the data-file split it was loaded as."""
    sources = {}
    for split in splits:
        src, tgt = getattr(args, f"{split}_source_file", None), getattr(args, f"{split}_target_file", None)
        if src:
            sources[split] = f"{src} + {tgt}" if tgt else src
        elif split == "validation" and not (args.validation_file or args.dataset_name):
            sources[split] = "held out from train"
        else:
            sources[split] = source(args, split)
    return sources


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments: recipe defaults < --config YAML < command line.
    model_args, data_args, finetune_args, run_args, training_args = parse_args(
        (ModelArguments, TranslationDataArguments, FinetuneArguments, RunArguments, Seq2SeqTrainingArguments),
        argv, DEFAULTS,
    )
    setup_run(training_args, run_args)
    set_seed(training_args.seed)
    if finetune_args.cv_folds:
        raise RecipeInputError("--cv_folds applies to classification recipes; translation is scored on its "
                               "validation split (use --hpo_trials to tune).")

    # 2. Data: parallel text from any shape, a validation split held out when none is given, sizes capped.
    splits, skipped = load_pairs(data_args)
    splits = add_validation_split(splits, data_args.validation_split, training_args.seed)
    splits, duplicates = find_duplicates(splits, [SOURCE], pair_sources(data_args, list(splits)), data_args.dedupe)
    splits = cap_splits(drop_unused_splits(splits, training_args), data_args, training_args.seed)
    logger.info("sentence pairs per split: %s", {k: len(v) for k, v in splits.items()})
    stop_for_inspection(DataReport(  # `finetune-recipes inspect` ends here; a run goes on
        "translation", splits, pair_sources(data_args, splits), pair_columns(data_args), skipped=skipped,
        data_args=data_args, first_columns=[SOURCE, TARGET], measures=[
            char_lengths([SOURCE, TARGET]),
            TokenLengths(model_args, [
                TextSide([SOURCE], data_args.max_source_length, "--max_source_length", data_args.source_prefix or ""),
                TextSide([TARGET], data_args.max_target_length, "--max_target_length", target=True)])]))

    # 3. Model and tokenizer: languages, prefix and generation settings travel with the saved model.
    tokenizer = load_processor(AutoTokenizer, model_args)
    config = load_config(model_args)
    if not getattr(config, "is_encoder_decoder", False):
        raise RecipeInputError(f"{model_args.model_name_or_path} ({config.model_type}) is not an encoder-decoder: "
                               "translation needs an AutoModelForSeq2SeqLM checkpoint (Marian, T5, mBART, NLLB...).")
    forced_bos = language_codes(tokenizer, data_args.source_lang, data_args.target_lang)
    prefix = data_args.source_prefix or ""
    if config.model_type in T5_MODEL_TYPES and not prefix:
        logger.warning("%s is a T5 model but no --source_prefix is set: T5 checkpoints expect a task prefix, "
                       "e.g. --source_prefix 'translate English to German: '.", model_args.model_name_or_path)
    languages = (data_args.source_lang, data_args.target_lang) if forced_bos is not None else (None, None)
    mark_translation_model(config, prefix, *languages)
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length

    def load() -> PreTrainedModel:
        model = load_model(AutoModelForSeq2SeqLM, model_args, config)
        generation = model.generation_config  # saved with the model: pipeline() generates as evaluation did
        generation.max_length = training_args.generation_max_length
        if training_args.generation_num_beams:
            generation.num_beams = training_args.generation_num_beams
        if forced_bos is not None:
            generation.forced_bos_token_id = forced_bos
        return model

    # 4. Tokenize once (truncation reported); with --text_augment, train sources are re-encoded per batch.
    augmentation = None
    if finetune_args.text_augment:
        def encode_sources(batch: dict) -> dict:
            return tokenizer([prefix + s for s in batch[SOURCE]], truncation=True, max_length=data_args.max_source_length)

        # Only the source is augmented: labels were encoded from the untouched targets and are never re-made.
        augmentation = TrainAugmentation(text_augmenter(finetune_args.text_augment, [SOURCE], tokenizer),
                                         encode_sources, [SOURCE], training_args.seed)
    with training_args.main_process_first(desc="tokenize"):
        tokenized = tokenize_pairs(splits, tokenizer, data_args.max_source_length, data_args.max_target_length,
                                   prefix, ["train"] if augmentation else [], data_args.preprocessing_num_workers)
    predicted = predicted_split(splits)
    raw_test = splits[predicted] if predicted else None

    def write_predictions(output, out_dir: Path) -> None:
        references = raw_test[TARGET] if TARGET in raw_test.column_names else None
        write_translations(out_dir / "predictions.txt", raw_test[SOURCE], decode(tokenizer, output.predictions),
                           references)

    def error_analysis(output, n: int):
        validation = splits["validation"]
        return translation_errors(validation[SOURCE], validation[TARGET], decode(tokenizer, output.predictions), n)

    # 5. Train, evaluate, predict, report.
    fp = training_args.fp16 or training_args.bf16
    task = Task(
        name="translation",
        model_init=partial(prepare_model, load, finetune_args),
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        test_dataset=tokenized.get("test"),
        data_collator=seq2seq_collator(tokenizer, config, model_args.trust_remote_code, 8 if fp else None),
        # BLEU and chrF against each split's raw targets; --max_target_length truncates the label ids only.
        compute_metrics=build_generation_metrics(tokenizer, run_args.metric, RawReferences(
            (tokenized[s]["labels"][:], splits[s][TARGET][:]) for s in ("validation", "test")
            if s in tokenized and "labels" in tokenized[s].column_names)),
        processing_class=tokenizer,
        main_metric="bleu",
        metric_scale=100.0,  # sacrebleu scores in percent
        pipeline_task="translation",
        pipeline_options=["trust_remote_code=True"],  # the recipe's pipeline class, saved beside the model
        # Sources cut as tokenize_pairs cut them; generation as Seq2SeqTrainer's (the saved generation config has it too).
        pipeline_call_kwargs={"max_source_length": data_args.max_source_length,
                              **generation_kwargs(training_args)},
        model_name=model_args.model_name_or_path,
        trainer_class=FinetuneSeq2SeqTrainer,
        write_predictions=write_predictions if raw_test is not None else None,
        error_analysis=error_analysis if "validation" in splits else None,
        augmentation=augmentation,
        data_results=add_counts(skipped, duplicates),
        baseline=lambda: translation_baseline(splits["train"][TARGET], splits["validation"][TARGET]),
        output_texts=lambda output: (decode(tokenizer, output.predictions), splits["validation"][TARGET]),
        output_noun="translation",
    )
    results = finetune(task, training_args, finetune_args)
    out = Path(training_args.output_dir)
    if training_args.should_save and (out / "config.json").is_file():
        save_translation_pipeline(out)
    return results


def predict_file(run: PredictRun, input_path: str, output: str) -> int:
    """`finetune-recipes predict`: a text file of source sentences, one per line -> predictions.txt's columns
    (source, hypothesis), generated with the run's settings."""
    lines = read_lines(input_path, "--input")
    bad = run.drop_bad([(i, "empty line") for i, line in enumerate(lines) if not line.strip()], len(lines),
                       f"--input {input_path}")
    sources = [line for i, line in enumerate(lines) if i not in bad]
    # The recipe's own pipeline class, imported: no code from the model dir runs.
    pipe = inference_pipeline("translation", run.model, run.device, pipeline_class=TranslationPipeline)
    hypotheses = []
    for chunk in run.chunks(sources, "sentences"):
        hypotheses += [o["translation_text"] for o in pipe(list(chunk), batch_size=run.batch_size, **run.call_kwargs)]
    write_translations(output, sources, hypotheses)
    return len(sources)


if __name__ == "__main__":
    run_main(main)
