"""Fine-tune a pretrained transformer for text classification: single-label, multi-label, regression, pairs.

    python recipes/text_classification.py --config recipes/configs/text_classification/sst2_minilm.yaml
    accelerate launch recipes/text_classification.py --config recipes/configs/text_classification/sst2_minilm.yaml

Every option: `python recipes/text_classification.py --help`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from common.core.config import LOCAL_DATA, TRAINING_DEFAULTS, RunArguments, parse_args
from common.core.errors import RecipeInputError, run_main
from common.data import load_splits, load_text_folder, require_columns, source
from common.data.bad_rows import add_counts
from common.data.files import FORMATS
from common.data.labelled import prepare_labelled_splits
from common.data.labels import SINGLE
from common.data.options import DataArguments
from common.data.truncation import LENGTH_COLUMN, count_truncated, tokenize_truncated
from common.dispatch import FinetuneArguments, finetune
from common.models.loading import ModelArguments, load_config, load_model, load_processor
from common.strategies.prediction import PredictRun
from common.toolkit.augment import TrainAugmentation
from common.toolkit.augment.text import text_augmenter
from common.toolkit.finetuning import prepare_model
from common.training.error_analysis import classification_errors
from common.training.inspection import DataReport, TextSide, TokenLengths, chosen, stop_for_inspection
from common.training.metrics import build_compute_metrics, scores_from_logits
from common.training.reporting import write_classification_predictions
from common.training.single_run import predicted_split, setup_run
from common.training.task import Task

logger = logging.getLogger(__name__)

# Column names tried, in order, when --text_columns is not given: pairs first, then single texts.
TEXT_COLUMN_CANDIDATES = [("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                          ("sentence",), ("text",)]

# Batches of similar length pad little: with the default dynamic padding, grouping is the fast path (bench/).
DEFAULTS = {**TRAINING_DEFAULTS, "output_dir": "outputs/text-classification",
            "train_sampling_strategy": "group_by_length"}


@dataclass
class TextDataArguments(DataArguments):
    text_columns: list[str] | None = field(
        default=None, metadata={"help": "One text column, or two for sentence pairs. Default: sentence1+sentence2, sentence or text."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the label(s)."})
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Class names for integer labels, in sorted id order (ids 1..4 -> 4 names); string labels "
                          "name themselves. Comma list or several values."},
    )
    class_names_file: str | None = field(
        default=None, metadata={"help": "A text file with one class name per line, in sorted id order (classes.txt)."}
    )
    train_dir: str | None = field(
        default=None, metadata={LOCAL_DATA: True, "help": "Training texts as one sub-folder per class holding .txt files."}
    )
    validation_dir: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Validation texts, one sub-folder per class."})
    test_dir: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Test texts, one sub-folder per class."})
    problem_type: str | None = field(
        default=None,
        metadata={"help": "single_label_classification | multi_label_classification | regression. Default: inferred."},
    )
    label_separator: str | None = field(
        default=None, metadata={"help": "Split string labels on this separator into a multi-label set, e.g. ';'."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every example to max_seq_length (default: pad each batch dynamically)."}
    )


def resolve_text_columns(columns: list[str], requested: list[str] | None, where: str) -> list[str]:
    if requested:
        if len(requested) > 2:
            raise RecipeInputError(f"--text_columns takes one column or a pair, not {len(requested)}: {requested}.")
        return list(requested)
    for candidate in TEXT_COLUMN_CANDIDATES:
        if all(c in columns for c in candidate):
            return list(candidate)
    raise RecipeInputError(
        f"no text column found in {where}: looked for 'sentence' or 'text' (or a pair like sentence1/sentence2). "
        f"Columns present: {', '.join(columns)}. Set --text_columns."
    )


def main(
    argv: list[str] | None = None,
    defaults: dict | None = None,
    default_class_names: Callable[[int], list[str] | None] | None = None,
    sample_data: dict[str, str] | None = None,
) -> dict[str, float]:
    # 1. Arguments: recipe defaults < --config YAML < command line.
    model_args, data_args, finetune_args, run_args, training_args = parse_args(
        (ModelArguments, TextDataArguments, FinetuneArguments, RunArguments, TrainingArguments),
        argv,
        {**DEFAULTS, **(defaults or {})},
    )
    if sample_data and not (data_args.train_file or data_args.train_dir or data_args.dataset_name):
        for key, value in sample_data.items():  # the data files the user left unset
            if getattr(data_args, key) is None:
                setattr(data_args, key, value)
    setup_run(training_args, run_args)
    set_seed(training_args.seed)

    # 2. Data: load (files, class folders or a Hub dataset), check columns.
    splits = load_splits(data_args, load_text_folder)
    if "train" not in splits:
        raise RecipeInputError("no training split: pass --train_file, --train_dir or a --dataset_name with a train split.")
    sources = {split: source(data_args, split) for split in splits}
    text_columns = resolve_text_columns(splits["train"].column_names, data_args.text_columns, sources["train"])
    label_column = data_args.label_column
    for split, dataset in splits.items():
        label = [label_column] if split != "test" else []
        require_columns(dataset, text_columns + label, sources[split], "--text_columns / --label_column")

    # 3. Bad rows reported or skipped; labels: the problem type inferred, values mapped to ids; validation held
    #    out, duplicates counted, and every split sampled, keeping every class.
    data = prepare_labelled_splits(
        splits, sources, data_args, training_args, label_column, text_columns,
        group_column=finetune_args.cv_group_column, class_names=data_args.class_names,
        class_names_file=data_args.class_names_file, problem_type=data_args.problem_type,
        separator=data_args.label_separator, names_for_ids=default_class_names)
    splits, sources, spec, groups = data.splits, data.sources, data.label_spec, data.groups
    bad, skipped, duplicates, source_rows = data.bad, data.skipped, data.duplicates, data.source_rows
    logger.info("task %s with %d labels: %s; rows %s", spec.problem_type, spec.num_labels, spec.names,
                {k: len(v) for k, v in splits.items()})
    stop_for_inspection(DataReport(  # `finetune-recipes inspect` ends here; a run goes on
        "text_classification", splits, sources, label_spec=spec, problem_type_given=data_args.problem_type is not None,
        columns={"text": chosen(text_columns, "--text_columns", data_args.text_columns, TEXT_COLUMN_CANDIDATES),
                 "label": chosen(label_column, "--label_column", label_column != "label")},
        bad_rows=bad, skipped=skipped, data_args=data_args, first_columns=text_columns,
        measures=[TokenLengths(model_args, [TextSide(text_columns, data_args.max_seq_length, "--max_seq_length")])]))

    # 4. Model and tokenizer.
    tokenizer = load_processor(AutoTokenizer, model_args)
    config = load_config(model_args, num_labels=spec.num_labels, id2label=spec.id2label, label2id=spec.label2id,
                         problem_type=spec.problem_type)
    model_init = partial(prepare_model, partial(load_model, AutoModelForSequenceClassification, model_args, config),
                         finetune_args)

    # 5. Tokenize once, on the main process first so the others reuse its cache.
    def tokenize(batch: dict, count: bool = False) -> dict:
        texts = [[t if t is not None else "" for t in batch[c]] for c in text_columns]
        padding = "max_length" if data_args.pad_to_max_length else False
        if count:  # the pass over every split: each row's (pair's) untruncated length too, to count the cut rows
            encoded, lengths = tokenize_truncated(tokenizer, texts, data_args.max_seq_length, padding=padding)
            return {**encoded, LENGTH_COLUMN: lengths}
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length, padding=padding)

    # --text_augment: train keeps its raw text, re-tokenized per batch after augmentation (common.toolkit.augment).
    augmentation = None
    if finetune_args.text_augment:
        augmentation = TrainAugmentation(text_augmenter(finetune_args.text_augment, text_columns, tokenizer),
                                         tokenize, text_columns, training_args.seed)
    keep = text_columns if augmentation else []
    predicted = predicted_split(splits)
    raw_test = splits[predicted] if predicted else None
    with training_args.main_process_first(desc="tokenize"):
        tokenized = splits.map(
            partial(tokenize, count=True), batched=True, num_proc=data_args.preprocessing_num_workers,
            remove_columns=[c for c in splits["train"].column_names if c != "labels" and c not in keep],
        )
    tokenized, truncated = count_truncated(tokenized, data_args.max_seq_length,
                                           "pairs" if len(text_columns) > 1 else "texts", "--max_seq_length")
    if augmentation:
        for split in set(tokenized) - {"train"}:
            tokenized[split] = tokenized[split].remove_columns(keep)

    def write_predictions(output, out_dir: Path) -> None:
        scores = scores_from_logits(output.predictions, spec.problem_type)
        inputs = {c: raw_test[c] for c in text_columns}
        write_classification_predictions(out_dir / "predictions.csv", inputs, scores, spec.problem_type, spec.names)

    def error_analysis(output, n: int):
        return classification_errors(output, spec, {c: splits["validation"][c] for c in text_columns}, n)

    # 6. Train, evaluate, predict, report.
    task = Task(
        name="text_classification",
        model_init=model_init,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        test_dataset=tokenized.get("test"),
        data_collator=default_data_collator if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer),
        compute_metrics=build_compute_metrics(spec.problem_type, run_args.metric),
        processing_class=tokenizer,
        main_metric=spec.main_metric,
        pipeline_task="text-classification",
        pipeline_call_kwargs={"truncation": True, "max_length": data_args.max_seq_length},  # as `tokenize` cut them
        model_name=model_args.model_name_or_path,
        label_spec=spec,
        input_columns=text_columns,
        write_predictions=write_predictions if raw_test is not None else None,
        error_analysis=error_analysis if "validation" in splits else None,
        stratify=tokenized["train"]["labels"] if spec.problem_type == SINGLE else None,
        groups=groups,
        source_rows=source_rows,
        train_inputs=partial(lambda train: {c: train[c] for c in text_columns}, splits["train"]),
        augmentation=augmentation,
        data_results=add_counts(skipped, duplicates, truncated),
    )
    return finetune(task, training_args, finetune_args)


def predict_file(run: PredictRun, input_path: str, output: str) -> int:
    """`finetune-recipes predict`: a csv/tsv/jsonl/parquet table with the run's text column(s) -> predictions.csv's
    columns (the texts, the predicted label(s), a score per class)."""
    if Path(input_path).suffix.lower() not in FORMATS:
        raise RecipeInputError(f"--input {input_path}: give a table ({', '.join(sorted(FORMATS))}) with the "
                               f"column(s) {', '.join(run.input_columns)}.")
    columns, dataset = run.input_columns, run.table(input_path)
    require_columns(dataset, columns, f"--input {input_path}", "--input_columns")
    texts = {c: dataset[c] for c in columns}
    problems = [(i, f"empty '{c}'") for c in columns for i, t in enumerate(texts[c]) if t is None or not str(t).strip()]
    bad = run.drop_bad(sorted(problems), len(dataset), f"--input {input_path}")
    keep = [i for i in range(len(dataset)) if i not in bad]
    texts = {c: [texts[c][i] for i in keep] for c in columns}
    inputs = (texts[columns[0]] if len(columns) == 1 else
              [{"text": a, "text_pair": b} for a, b in zip(texts[columns[0]], texts[columns[1]])])
    scores, problem_type, names = run.classify(inputs, "texts")
    write_classification_predictions(output, texts, scores, problem_type, names)
    return len(keep)


if __name__ == "__main__":
    run_main(main)
