"""Fine-tune a pretrained transformer for token classification: a tag per word (named entities, BIO tags).

    python recipes/token_classification.py --config recipes/configs/token_classification/wikiann_en_minilm.yaml
    accelerate launch recipes/token_classification.py --config recipes/configs/token_classification/wikiann_en_minilm.yaml

Data: CoNLL files (`token<TAB>tag`, a blank line between sentences), JSON lines or parquet rows with a list of
tokens and a list of tags, or a Hub dataset with `tokens` / `ner_tags`. Sentences longer than --max_seq_length are
split into overlapping windows; every word is predicted and scored. Every option:
`python recipes/token_classification.py --help`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets
import numpy as np
from datasets import DatasetDict
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    TrainingArguments,
    set_seed,
)

from common.core.config import TRAINING_DEFAULTS, RunArguments, parse_args
from common.core.errors import RecipeInputError, run_main
from common.data import add_validation_split, cap_splits, drop_unused_splits, load_file, load_splits, source
from common.data.arrow import column_array, list_lengths
from common.data.bad_rows import add_counts
from common.data.files import SPLITS
from common.data.labels import LabelSpec, read_class_names
from common.data.options import DataArguments, split_names
from common.data.rows import cv_groups
from common.data.word_tags import (
    IOB2,
    IOBES,
    SCHEMES,
    TABLE_FORMATS,
    TAGS,
    TOKEN_COLUMNS,
    TOKENS,
    bio_violations,
    entity_type,
    list_column,
    named_tags,
    read_conll,
    tag_names,
    tag_scheme,
)
from common.dispatch import FinetuneArguments, finetune
from common.models.loading import ModelArguments, load_config, load_model, load_processor
from common.strategies.prediction import PredictRun
from common.toolkit.finetuning import prepare_model
from common.training.inspection import DataReport, chosen, stop_for_inspection
from common.training.single_run import predicted_split, setup_run
from common.training.tagging import (
    UNCOVERED,
    WINDOWS,
    EntityMetrics,
    TokenTrainer,
    WindowCollator,
    encode_windows,
    window_stride,
    word_scores,
    write_conll,
    write_conll_predictions,
)
from common.training.task import Task

logger = logging.getLogger(__name__)

TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner")
TAG_PER_WORD = "tag_per_word"  # what an ensemble's members vote over: one of the tags for every word
DEFAULTS = {**TRAINING_DEFAULTS, "model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
            "output_dir": "outputs/token-classification", "learning_rate": 1e-4, "num_train_epochs": 3}


@dataclass
class TokenDataArguments(DataArguments):
    tokens_column: str | None = field(default=None, metadata={"help": "Column with the list of tokens (tables, Hub). "
                                                                      "Default: tokens or words."})
    tags_column: str | None = field(default=None, metadata={"help": "Column with the list of tags. Default: ner_tags, "
                                                                    "tags, labels or ner."})
    tag_names: list[str] | None = field(default=None, metadata={
        "help": "Names of integer tag ids, in id order (O,B-PER,I-PER,...); integer tags need them or --tag_names_file."})
    tag_names_file: str | None = field(default=None, metadata={"help": "A text file with one tag name per line, in "
                                                                       "id order, for integer tag ids."})
    tag_scheme: str | None = field(default=None, metadata={
        "help": f"Tagging scheme: {', '.join(SCHEMES)}. Default: detected from the train tags."})
    label_all_tokens: bool = field(default=False, metadata={
        "help": "Train on every sub-word of a word (B- tags continue as I-); default: its first sub-word only. "
                "Scoring always takes one tag per word, from its first sub-word."})
    max_seq_length: int = field(default=256, metadata={
        "help": "Sub-words per window: a longer sentence is split into overlapping windows."})
    doc_stride: int | None = field(default=None, metadata={
        "help": "Sub-words that consecutive windows of a long sentence share. Default: a quarter of a window."})


def load_sentences(args: TokenDataArguments, keep: str | None) -> tuple[DatasetDict, dict[str, str], dict[str, int]]:
    """(tokens, tags) rows per split from CoNLL files, tables or a Hub dataset, tags as their names; plus the
    column `keep` (--cv_group_column) where a split has it."""
    if args.tag_names and args.tag_names_file:
        raise RecipeInputError("give --tag_names or --tag_names_file, not both.")
    given = read_class_names(args.tag_names_file, "tag") if args.tag_names_file else split_names(args.tag_names)
    loaded, skipped, conll = DatasetDict(), {}, set()
    if args.dataset_name:
        loaded = load_splits(args)
    else:
        files = {split: getattr(args, f"{split}_file") for split in SPLITS if getattr(args, f"{split}_file")}
        if "train" not in files:
            raise RecipeInputError("no training data: pass --train_file (CoNLL, jsonl or parquet) or --dataset_name.")
        for split, path in files.items():
            if Path(path).suffix.lower() in TABLE_FORMATS:
                loaded[split] = load_file(path, f"--{split}_file", split, args)
            else:
                loaded[split], skipped[f"skipped_bad_examples_{split}"] = read_conll(path, f"--{split}_file",
                                                                                     args.skip_bad_examples)
                conll.add(split)
    sources = {s: source(args, s) for s in loaded}
    result = DatasetDict({split: loaded[split] for split in conll})
    for split in set(loaded) - conll:
        dataset = loaded[split]
        tokens = list_column(dataset, args.tokens_column, TOKEN_COLUMNS, "tokens", sources[split])
        if split == "test" and not (args.tags_column or any(c in dataset.column_names for c in TAG_COLUMNS)):
            result[split] = dataset.select_columns([tokens]).rename_column(tokens, TOKENS)
            continue
        tags = list_column(dataset, args.tags_column, TAG_COLUMNS, "tags", sources[split])
        names = tag_names(dataset, tags)
        extra = [keep] if keep in dataset.column_names and keep not in (tokens, tags) else []
        rows = dataset.select_columns([tokens, tags, *extra])
        rows = rows.rename_columns({old: new for old, new in ((tokens, TOKENS), (tags, TAGS)) if old != new})
        unequal = [i for i, (a, b) in enumerate(zip(rows[TOKENS], rows[TAGS])) if len(a) != len(b)]
        if unequal:
            raise RecipeInputError(f"{sources[split]}: {len(unequal)} rows have a different number of tokens and tags "
                                   f"(rows {', '.join(str(i + 1) for i in unequal[:5])}). Give one tag per token.")
        # Tags as text: Hub ClassLabel ids become their names (declared, or map would cast them back to ids).
        name_of = names.__getitem__ if names is not None else str
        features = rows.features.copy()
        features[TAGS] = datasets.List(datasets.Value("string"))
        result[split] = rows.map(lambda row, n=name_of: {TAGS: [n(t) for t in row[TAGS]]}, features=features)
    for split, dataset in result.items():  # integer ids, now as text: named by --tag_names, or an error
        if TAGS in dataset.column_names:
            result[split] = named_tags(dataset, given, sources[split])
    return result, sources, skipped


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments: recipe defaults < --config YAML < command line.
    model_args, data_args, finetune_args, run_args, training_args = parse_args(
        (ModelArguments, TokenDataArguments, FinetuneArguments, RunArguments, TrainingArguments), argv, DEFAULTS)
    if finetune_args.text_augment:
        raise RecipeInputError("--text_augment rewrites words, which would shift them against their tags: token "
                               "classification does not support it.")
    setup_run(training_args, run_args)
    set_seed(training_args.seed)

    # 2. Data: CoNLL files, tables of token and tag lists, or a Hub dataset.
    splits, sources, skipped = load_sentences(data_args, finetune_args.cv_group_column)

    # 3. Tags: the train split's set and O (a tag only validation or test holds is an error), their scheme (IO,
    # IOB1, IOB2, IOBES) for scoring; BIO breaks are counted.
    scheme = tag_scheme(splits["train"][TAGS], data_args.tag_scheme, f"the tags of {sources['train']}")
    names = sorted({tag for row in splits["train"][TAGS] for tag in row} | {"O"},
                   key=lambda t: (t != "O", entity_type(t), t))
    for split, dataset in splits.items():
        unseen = sorted({t for row in dataset[TAGS] for t in row} - set(names)) if TAGS in dataset.column_names else []
        if unseen:
            raise RecipeInputError(f"{sources[split]} has tags that train never uses: {', '.join(unseen[:10])}. "
                                   "Fix them, or add sentences with them to the training data.")
    violations = {f"bio_violations_{s}": bio_violations(d[TAGS]) for s, d in splits.items()
                  if TAGS in d.column_names and scheme in (IOB2, IOBES)}  # IOB1 and IO start entities with I-
    for key, count in violations.items():
        if count:
            logger.warning("%s: %d tags I-x follow neither B-x nor I-x (kept as given)", key.rsplit("_", 1)[1], count)
    group = finetune_args.cv_group_column  # e.g. `document` of a CoNLL file: its sentences stay on one side
    groups = cv_groups(splits["train"], group, sources["train"]) if group else None
    splits = add_validation_split(splits, data_args.validation_split, training_args.seed, groups=groups)
    sources.setdefault("validation", f"validation split held out from {sources['train']}")
    splits = cap_splits(drop_unused_splits(splits, training_args), data_args, training_args.seed)
    logger.info("%d tags %s (%s); sentences %s", len(names), names, scheme, {k: len(v) for k, v in splits.items()})
    stop_for_inspection(DataReport(  # `finetune-recipes inspect` ends here; a run goes on
        "token_classification", splits, sources, skipped=skipped, data_args=data_args,
        columns={"tokens": chosen(TOKENS, "--tokens_column", data_args.tokens_column, TOKEN_COLUMNS),
                 "tags": chosen(TAGS, "--tags_column", data_args.tags_column, TAG_COLUMNS)}))

    # 4. Model and tokenizer: a fast tokenizer, which maps sub-words back to their words.
    tokenizer = load_processor(AutoTokenizer, model_args)
    if not tokenizer.is_fast:
        raise RecipeInputError(f"{model_args.model_name_or_path} has no fast tokenizer, which token classification "
                               "needs to align tags with sub-words.")
    config = load_config(model_args, num_labels=len(names), id2label=dict(enumerate(names)),
                         label2id={n: i for i, n in enumerate(names)})
    model_init = partial(prepare_model, partial(load_model, AutoModelForTokenClassification, model_args, config),
                         finetune_args)

    # 5. Tokenize once: each sentence as windows of --max_seq_length sub-words, each word's tag on its sub-words,
    # and where each word is predicted. Windowed sentences and words no window holds are counted.
    stride = window_stride(tokenizer, data_args.max_seq_length, data_args.doc_stride)
    encode = partial(encode_windows, tokenizer=tokenizer, label2id=config.label2id,
                     max_length=data_args.max_seq_length, stride=stride, label_all_tokens=data_args.label_all_tokens)
    with training_args.main_process_first(desc="tokenize"):
        tokenized = DatasetDict({split: d.map(encode, batched=True, remove_columns=d.column_names,
                                              num_proc=data_args.preprocessing_num_workers)
                                 for split, d in splits.items()})
    windowing = {}
    for split, dataset in tokenized.items():
        windowed = int(np.sum(column_array(dataset, WINDOWS).to_numpy() > 1))
        uncovered = int(np.sum(column_array(dataset, UNCOVERED).to_numpy()))
        windowing[f"windowed_sentences_{split}"] = windowed
        windowing[f"uncovered_word_share_{split}"] = uncovered / max(int(np.sum(list_lengths(splits[split], TOKENS))), 1)
        if windowed:
            logger.info("%s: %d sentences over --max_seq_length %d sub-words are split into windows sharing %d",
                        split, windowed, data_args.max_seq_length, stride)
        if uncovered:
            logger.warning("%s: %d words have no sub-word (the tokenizer drops them): they are predicted 'O'",
                           split, uncovered)
        tokenized[split] = dataset.remove_columns([WINDOWS, UNCOVERED])
    predicted = predicted_split(splits)

    def write_predictions(output, out_dir: Path) -> None:
        write_conll_predictions(out_dir / "predictions.conll", splits[predicted], output.predictions, names)

    # 6. Train, evaluate, predict, report.
    task = Task(
        name="token_classification",
        model_init=model_init,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        test_dataset=tokenized.get("test"),
        data_collator=WindowCollator(tokenizer),
        compute_metrics=EntityMetrics(names, scheme),
        processing_class=tokenizer,
        main_metric="f1",
        pipeline_task="token-classification",
        vote_labels=LabelSpec(TAG_PER_WORD, names),  # members soft-vote per word, scored as entities
        trainer_class=TokenTrainer,
        pipeline_options=['aggregation_strategy="simple"'],  # whole entities, not sub-word tags
        model_name=model_args.model_name_or_path,
        write_predictions=write_predictions if predicted else None,
        groups=list(splits["train"][group]) if group else None,  # the train rows left after the hold-out and caps
        input_columns=[data_args.tokens_column or TOKENS],
        data_results={**add_counts(skipped, violations), **windowing, "tag_scheme": scheme},
        baseline=lambda: {"f1": 0.0, "description": "every token tagged 'O'"},
        output_noun="tag",
    )
    return finetune(task, training_args, finetune_args)


def predict_file(run: PredictRun, input_path: str, output: str) -> int:
    """`finetune-recipes predict`: a CoNLL file (the first field of each line is the token), or a table with a
    list of tokens or a text (split on whitespace) per sentence -> CoNLL (`token<TAB>predicted tag`). Sentences
    are windowed as the run windowed them; an ensemble averages its members' tag probabilities per word."""
    if Path(input_path).suffix.lower() in (*TABLE_FORMATS, ".csv", ".tsv"):
        table = run.table(input_path)
        candidates = list(dict.fromkeys([*run.input_columns, *TOKEN_COLUMNS, "text"]))
        column = next((c for c in candidates if c in table.column_names), None)
        if column is None:
            raise RecipeInputError(f"--input {input_path} has none of the columns {', '.join(candidates)}: give each "
                                   "sentence as a list of tokens or a text, or name its column with --input_columns.")
        sentences = [[str(t) for t in v] if isinstance(v, list) else str(v or "").split() for v in table[column]]
        bad = run.drop_bad([(i, f"no tokens in '{column}'") for i, s in enumerate(sentences) if not s],
                           len(sentences), f"--input {input_path}")
        sentences = [s for i, s in enumerate(sentences) if i not in bad]
    else:
        sentences = read_conll(input_path, "--input", run.skip_bad_examples, tagged=False)[0][TOKENS]
    device = "cuda" if run.device >= 0 else "cpu"
    members = [word_scores(m, sentences, run.options["max_seq_length"], run.options.get("doc_stride"),
                           run.batch_size, device)
               for m in (run.ensemble.members if run.ensemble is not None else [run.model])]
    names = members[0][1]
    scores = members[0][0] if run.ensemble is None else [
        run.ensemble.combine(np.stack([m[0][i] for m in members])) for i in range(len(sentences))]
    write_conll(output, sentences, [[names[t] for t in row.argmax(-1)] for row in scores])
    return len(sentences)


if __name__ == "__main__":
    run_main(main)
