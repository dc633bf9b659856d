"""Fine-tune a pretrained transformer for extractive question answering: the answer is a span of the context
(SQuAD).

    python recipes/question_answering.py --config recipes/configs/question_answering/squad_minilm.yaml
    accelerate launch recipes/question_answering.py --config recipes/configs/question_answering/squad_minilm.yaml

Data: SQuAD JSON files (`data[].paragraphs[].qas[]`), JSON lines, csv or parquet rows with `question`, `context`
and `answers` (`text` and `answer_start` lists; or flat `answer_text` / `answer_start` columns), or a Hub dataset
such as rajpurkar/squad. A context longer than a window of --max_seq_length sub-words is split into windows that
share --doc_stride sub-words; every window trains, pointing at its answer or, when it does not hold the answer, at
its first token (CLS). Rows stay questions throughout: a question's windows are scored together (the best span of
any window, --n_best_size start and end candidates, at most --max_answer_length sub-words), so cross-validation
folds, ensembles and predictions all work per question. Scores are the official SQuAD v1.1 exact match and F1 (in percent);
with --version_2_with_negative questions may have no answer (SQuAD v2), predicted when the empty answer beats the
best span by more than --null_score_diff_threshold. Every option: `python recipes/question_answering.py --help`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    TrainingArguments,
    set_seed,
)

from common.core.config import TRAINING_DEFAULTS, RunArguments, parse_args
from common.core.errors import RecipeInputError, run_main
from common.data import add_validation_split, cap_splits, drop_unused_splits, load_file, load_splits, source
from common.data.arrow import column_array
from common.data.bad_rows import BadRow, drop_bad_rows
from common.data.files import SPLITS, require_columns
from common.data.labels import LabelSpec
from common.data.options import DataArguments
from common.data.rows import check_disjoint_groups, cv_groups
from common.dispatch import FinetuneArguments, finetune
from common.models.loading import ModelArguments, load_config, load_model, load_processor
from common.models.runtime import inference_model
from common.strategies.ensembling import logits_from_scores
from common.strategies.prediction import PredictRun
from common.toolkit.finetuning import prepare_model
from common.training.error_analysis import ErrorAnalysis, worst
from common.training.inspection import (
    DataReport,
    TextSide,
    TokenLengths,
    char_lengths,
    chosen,
    stop_for_inspection,
)
from common.training.single_run import predicted_split, setup_run
from common.training.task import Task
from common.training.trainer import FinetuneTrainer
from recipes.pipelines import question_answering as answering_pipeline
from recipes.pipelines.question_answering import (
    TASK,
    Answer,
    AnswerOptions,
    best_answer,
    context_spans,
    encode_windows,
    window_logits,
)

logger = logging.getLogger(__name__)

ID, TITLE, QUESTION, CONTEXT, ANSWERS = "id", "title", "question", "context", "answers"
ANSWER_TEXT, ANSWER_START = "answer_text", "answer_start"  # flat tables: one answer per row
ANSWER_SPAN = "answer_span"  # what an ensemble's members vote over: each question's start and end distributions
INDEX = "question_index"  # per question, its place in `Questions` over all splits: the label predictions carry
OFFSETS = "offset_mapping"  # per question, each window position's character span of the context ((-1, -1): none)
REACHED = "answer_in_a_window"  # per question, whether some window holds its (first) answer; for the counts
WINDOW_QUESTION = "window_question"  # per window of a collated batch, its question's row in the batch
PIPELINE_FILE = Path(answering_pipeline.__file__)
PAD = -100.0  # Trainer pads predictions of different lengths with -100; positions past a question's windows
ANSWER_FEATURES = {"text": datasets.List(datasets.Value("string")),
                   "answer_start": datasets.List(datasets.Value("int64"))}
DEFAULTS = {**TRAINING_DEFAULTS, "model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
            "output_dir": "outputs/question-answering", "learning_rate": 1e-4, "num_train_epochs": 2,
            "per_device_train_batch_size": 32}


@dataclass
class QuestionDataArguments(DataArguments):
    question_column: str | None = field(default=None, metadata={"help": "Column with the question. Default: question."})
    context_column: str | None = field(default=None, metadata={"help": "Column with the context. Default: context."})
    answer_column: str | None = field(default=None, metadata={
        "help": "Column with the answers ({text: [...], answer_start: [...]}). Default: answers, else the flat "
                "columns answer_text and answer_start (one answer per row)."})
    max_seq_length: int = field(default=384, metadata={
        "help": "Sub-words per window (question, context and special tokens): a longer context is split into "
                "overlapping windows."})
    doc_stride: int = field(default=128, metadata={
        "help": "Context sub-words that consecutive windows of one question share."})
    version_2_with_negative: bool = field(default=False, metadata={
        "help": "SQuAD v2: questions may have no answer (empty answers), and the model may answer nothing."})
    null_score_diff_threshold: float = field(default=0.0, metadata={
        "help": "With --version_2_with_negative: answer nothing when the empty answer's score beats the best "
                "span's by more than this."})
    n_best_size: int = field(default=20, metadata={
        "help": "Start and end candidates per window, and answers kept per question in nbest_predictions.json."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in sub-words."})


# --- data: questions from SQuAD JSON, tables or the Hub ----------------------------------------------------------


def read_squad_json(path: str, option: str) -> Dataset | None:
    """The questions of a SQuAD JSON document, one row each (id, title, context, question, answers); None when
    the file is not one (JSON lines or a list of records, which `load_file` reads)."""
    if Path(path).suffix.lower() != ".json" or not Path(path).is_file():
        return None
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not (isinstance(document, dict) and isinstance(document.get("data"), list)):
        return None
    rows: dict[str, list] = {ID: [], TITLE: [], CONTEXT: [], QUESTION: [], ANSWERS: []}
    for a, article in enumerate(document["data"]):
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise RecipeInputError(f"{option} {path}: data[{a}].paragraphs[{p}] has no list of questions "
                                       "('qas'). Give the SQuAD layout: data[].paragraphs[].{context, qas[]}.")
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                rows[ID].append(str(qa.get("id", "")))
                rows[TITLE].append(str(article.get("title", "")))
                rows[CONTEXT].append(paragraph.get("context"))
                rows[QUESTION].append(qa.get("question"))
                rows[ANSWERS].append(answer_lists(answers))
    if not rows[ID]:
        raise RecipeInputError(f"{option} {path} holds no questions: expected SQuAD JSON, "
                               "data[].paragraphs[].qas[] with id, question and answers.")
    return Dataset.from_dict(rows, features=datasets.Features({
        ID: datasets.Value("string"), TITLE: datasets.Value("string"), CONTEXT: datasets.Value("string"),
        QUESTION: datasets.Value("string"), ANSWERS: ANSWER_FEATURES}))


def read_questions(path: str, option: str, split: str, args: Any) -> Dataset:
    """A SQuAD JSON document's questions, or any table `load_file` reads (csv, JSON lines, parquet)."""
    squad = read_squad_json(path, option)
    return squad if squad is not None else load_file(path, option, split, args)


def answer_lists(value: Any) -> dict[str, list]:
    """Answers as {text: [...], answer_start: [...]}, from that shape or a list of {text, answer_start} records.
    Values are kept as given; `bad_answers` checks them."""
    if value is None:
        return {"text": [], "answer_start": []}
    if isinstance(value, dict):
        return {"text": list(value.get("text") or []), "answer_start": list(value.get("answer_start") or [])}
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        return {"text": [a.get("text") for a in value], "answer_start": [a.get("answer_start") for a in value]}
    raise ValueError(f"answers {str(value)[:80]!r} are neither {{text: [...], answer_start: [...]}} nor a list "
                     "of {text, answer_start} records")


def question_table(dataset: Dataset, args: QuestionDataArguments, where: str, keep: str | None) -> Dataset:
    """A loaded split as the recipe's columns: id, question, context, answers (absent from a test split without
    them), plus the column `keep` (--cv_group_column) when the split has it."""
    question = args.question_column or QUESTION
    context = args.context_column or CONTEXT
    require_columns(dataset, [question, context], where, "--question_column / --context_column")
    answers = args.answer_column or ANSWERS
    flat = args.answer_column is None and ANSWERS not in dataset.column_names and ANSWER_TEXT in dataset.column_names
    if flat:
        require_columns(dataset, [ANSWER_TEXT, ANSWER_START], where, "--answer_column")
    elif args.answer_column:
        require_columns(dataset, [answers], where, "--answer_column")
    rows = {ID: [str(v) for v in dataset[ID]] if ID in dataset.column_names else
            [str(i + 1) for i in range(len(dataset))],
            QUESTION: [None if v is None else str(v) for v in dataset[question]],
            CONTEXT: [None if v is None else str(v) for v in dataset[context]]}
    features = {ID: datasets.Value("string"), QUESTION: datasets.Value("string"), CONTEXT: datasets.Value("string")}
    if flat:  # an empty answer_text is a question without an answer
        rows[ANSWERS] = [{"text": [text], "answer_start": [start]} if text not in (None, "") else
                         {"text": [], "answer_start": []}
                         for text, start in zip(dataset[ANSWER_TEXT], dataset[ANSWER_START])]
    elif answers in dataset.column_names:
        parsed = []
        for i, value in enumerate(dataset[answers]):
            try:
                parsed.append(answer_lists(value))
            except ValueError as err:
                raise RecipeInputError(f"{where}: row {i + 1}: column '{answers}' holds {err}. Give each row's "
                                       "answers as {text: [...], answer_start: [...]}, or flat answer_text and "
                                       "answer_start columns.") from None
        rows[ANSWERS] = parsed
    if ANSWERS in rows:  # a start that is no character offset (text, a fraction, missing) becomes -1, a bad row
        features[ANSWERS] = ANSWER_FEATURES
        rows[ANSWERS] = [{"text": [None if t is None else str(t) for t in a["text"]],
                          "answer_start": [int(s) if isinstance(s, (int, float)) and not isinstance(s, bool)
                                           and float(s).is_integer() else -1 for s in a["answer_start"]]}
                         for a in rows[ANSWERS]]
    if keep and keep in dataset.column_names and keep not in rows:
        rows[keep], features[keep] = list(dataset[keep]), dataset.features[keep]
    return Dataset.from_dict(rows, features=datasets.Features(features))


def bad_answers(context: str, answers: dict[str, list]) -> str | None:
    """Why the answers of a row do not point into its context, or None."""
    texts, starts = answers["text"], answers["answer_start"]
    if len(texts) != len(starts):
        return f"{len(texts)} answer texts but {len(starts)} answer_start values (give one start per text)"
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            return f"an empty answer text (answer_start {start})"
        if start < 0:
            return f"answer {text!r} has no answer_start (a character offset, 0 or more)"
        if context[start:start + len(text)] != text:
            return (f"answer_start {start} points at {context[start:start + len(text)]!r}, not at its answer "
                    f"{text!r}" + (f" (which starts at {context.find(text)})" if text in context
                                   else " (which is not in the context)"))
    return None


def bad_questions(dataset: Dataset, version_2: bool) -> list[BadRow]:
    """Rows with an empty question or context, answers that do not point at their text, or (SQuAD v1) none."""
    bad = []
    answers = dataset[ANSWERS] if ANSWERS in dataset.column_names else [None] * len(dataset)
    for i, (key, question, context, answer) in enumerate(zip(dataset[ID], dataset[QUESTION], dataset[CONTEXT],
                                                             answers)):
        if not isinstance(context, str) or not context.strip():
            problem = "empty context"
        elif not isinstance(question, str) or not question.strip():
            problem = "empty question"
        elif answer is None:
            continue
        elif not answer["text"] and not version_2:
            problem = "no answer: questions without one need --version_2_with_negative"
        else:
            problem = bad_answers(context, answer)
        if problem:
            bad.append(BadRow(i, f"row {i + 1}, id {key}", problem))
    return bad


def load_questions(args: QuestionDataArguments, keep: str | None) -> tuple[DatasetDict, dict[str, str], dict[str, int]]:
    """Questions per split from SQuAD JSON, tables or a Hub dataset, checked row by row (bad rows fail, or are
    dropped and counted with --skip_bad_examples); plus where each split came from and the skipped counts."""
    if args.dataset_name:
        loaded = load_splits(args)
    else:
        files = {split: getattr(args, f"{split}_file") for split in SPLITS if getattr(args, f"{split}_file")}
        if "train" not in files:
            raise RecipeInputError("no training data: pass --train_file (SQuAD JSON, jsonl, csv or parquet) or "
                                   "--dataset_name.")
        loaded = DatasetDict({split: read_questions(path, f"--{split}_file", split, args)
                              for split, path in files.items()})
    sources = {split: source(args, split) for split in loaded}
    splits = DatasetDict({split: question_table(d, args, sources[split], keep) for split, d in loaded.items()})
    for split, dataset in splits.items():
        if split != "test" and ANSWERS not in dataset.column_names:
            raise RecipeInputError(f"{sources[split]} has no answers: give an 'answers' column ({{text, "
                                   "answer_start}}), flat answer_text and answer_start columns, or name the column "
                                   "with --answer_column.")
        counts = Counter(dataset[ID])
        repeated = [key for key, n in counts.items() if n > 1]
        if repeated:
            raise RecipeInputError(f"{sources[split]}: question ids repeat ({', '.join(repeated[:5])}), so their "
                                   "predictions would overwrite each other in predictions.json. Give each question "
                                   "its own id.")
    bad = {split: bad_questions(d, args.version_2_with_negative) for split, d in splits.items()}
    splits, skipped = drop_bad_rows(splits, bad, sources, args.skip_bad_examples, args.max_bad_fraction)
    return splits, sources, skipped


def check_windows(tokenizer, splits: DatasetDict, sources: dict[str, str], max_length: int, stride: int) -> None:
    """Every question leaves its context more room in a window than --doc_stride: the room of a window is
    --max_seq_length less the question's sub-words and the special tokens, and consecutive windows must move on."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    if stride < 0:
        raise RecipeInputError(f"--doc_stride {stride}: give the number of context sub-words windows share, 0 or more.")
    for split, dataset in splits.items():
        lengths = np.array([len(ids) for ids in tokenizer([q.lstrip() for q in dataset[QUESTION]],
                                                          add_special_tokens=False)["input_ids"]])
        room = max_length - special - lengths
        tight = np.flatnonzero(room <= stride)
        if len(tight):
            i = int(tight[np.argmin(room[tight])])  # the tightest: a fix for it fixes them all
            fix = f"lower --doc_stride below {room[i]}, or " if room[i] > 0 else "shorten the question, or "
            raise RecipeInputError(
                f"{sources[split]}: row {i + 1}, id {dataset[ID][i]}: --max_seq_length {max_length} less its "
                f"question's {lengths[i]} sub-words and {special} special tokens leaves {max(room[i], 0)} for the "
                f"context, not more than --doc_stride {stride} ({len(tight)} questions so), so its windows could "
                f"not move along the context. To fix it, {fix}raise --max_seq_length to "
                f"{max_length - room[i] + stride + 1} or more.")


# --- windows: each question's context as overlapping windows of sub-words -----------------------------------------


def answer_tokens(offsets: Sequence[Sequence[int]], start_char: int, end_char: int) -> tuple[int, int]:
    """The window positions of the answer's first and last sub-word, or (0, 0) (the first token, CLS) when the
    window does not hold the whole answer. `offsets` are the window's character spans, (-1, -1) off the context."""
    context = [i for i, (start, _) in enumerate(offsets) if start >= 0]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    first = max(i for i in context if offsets[i][0] <= start_char)
    last = min(i for i in context if offsets[i][1] >= end_char)
    return first, last


def encode_questions(batch: dict, tokenizer, max_length: int, stride: int) -> dict:
    """Each question with its context as windows of at most `max_length` sub-words (question first, the context
    cut with `stride` sub-words shared): their model inputs, the context span of every position (OFFSETS, one
    list over all windows), and with answers each window's start and end positions of the first answer."""
    encoded = encode_windows(tokenizer, batch[QUESTION], batch[CONTEXT], max_length, stride)
    inputs = [name for name in encoded if name not in ("overflow_to_sample_mapping", "offset_mapping")]
    windows: list[list[int]] = [[] for _ in batch[QUESTION]]
    for window, question in enumerate(encoded["overflow_to_sample_mapping"]):
        windows[question].append(window)
    labelled = ANSWERS in batch
    out: dict[str, list] = {name: [] for name in [*inputs, OFFSETS, *(
        ["start_positions", "end_positions", REACHED] if labelled else [])]}
    for i, own in enumerate(windows):
        spans = [context_spans(encoded, w) for w in own]
        for name in inputs:
            out[name].append([encoded[name][w] for w in own])
        out[OFFSETS].append([span for window in spans for span in window])
        if not labelled:
            continue
        answers = batch[ANSWERS][i]
        if answers["text"]:  # training and the eval loss use the first answer
            start = answers["answer_start"][0]
            positions = [answer_tokens(window, start, start + len(answers["text"][0])) for window in spans]
        else:
            positions = [(0, 0)] * len(own)
        out["start_positions"].append([p[0] for p in positions])
        out["end_positions"].append([p[1] for p in positions])
        out[REACHED].append(not answers["text"] or any(p != (0, 0) for p in positions))
    return out


class Questions:
    """Every question of the run, from all its splits, by INDEX: its id, text, context, reference answers and the
    context span of each position of its windows. The model's inputs never hold them; the predictions carry
    INDEX, so a question is scored the same whichever rows (a split, a CV fold) are predicted."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.asked: list[str] = []  # the questions' texts
        self.contexts: list[str] = []
        self.references: list[list[str] | None] = []  # None: the split has no answers
        self.starts: list[list[int]] = []  # the references' answer_start
        self.offsets: list[np.ndarray] = []  # (positions, 2) over all of a question's windows
        self.windows: list[list[int]] = []  # each window's number of positions

    def add(self, raw: Dataset, tokenized: Dataset) -> Dataset:
        """Register a split's questions; returns its tokenized rows with INDEX and without OFFSETS."""
        start = len(self.ids)
        self.ids += list(raw[ID])
        self.asked += list(raw[QUESTION])
        self.contexts += list(raw[CONTEXT])
        answers = raw[ANSWERS] if ANSWERS in raw.column_names else [None] * len(raw)
        self.references += [None if a is None else list(a["text"]) for a in answers]
        self.starts += [[] if a is None else list(a["answer_start"]) for a in answers]
        # Read from the Arrow columns: Python lists of every question's spans would take gigabytes for SQuAD.
        spans = column_array(tokenized, OFFSETS)
        flat = pc.list_flatten(pc.list_flatten(spans)).to_numpy().reshape(-1, 2)
        self.offsets += np.split(flat, np.cumsum(pc.list_value_length(spans).to_numpy())[:-1])
        self.windows += window_lengths(tokenized)
        return tokenized.remove_columns(OFFSETS).add_column(INDEX, list(range(start, start + len(raw))))


def window_lengths(dataset: Dataset) -> list[list[int]]:
    """Each question's windows' numbers of sub-words."""
    windows = column_array(dataset, "input_ids")
    lengths = pc.list_value_length(pc.list_flatten(windows)).to_numpy()
    return [part.tolist() for part in np.split(lengths, np.cumsum(pc.list_value_length(windows).to_numpy())[:-1])]


def vote_probabilities(predictions: np.ndarray) -> np.ndarray:
    """What an ensemble's members average (`Task.vote_scores`): each question's start and end probabilities over its
    positions, from `question_scores` (PAD becomes 0); the log of the mean is again `question_scores`."""
    return np.exp(np.asarray(predictions, dtype=np.float64))


def answer_options(options: Any) -> AnswerOptions:
    """The answer search's options from a run's data arguments or its recorded options (a dict)."""
    get = options.get if isinstance(options, dict) else partial(getattr, options)
    return AnswerOptions(**{name: get(name, default) for name, default in vars(AnswerOptions()).items()})


def question_answers(questions: Questions, predictions: np.ndarray, indices: Sequence[int],
                     options: AnswerOptions) -> list[Answer]:
    """The answer of each predicted question: row i of `predictions` is question indices[i], its start scores
    over all its windows' positions, then its end scores, then padding (`question_scores`)."""
    answers = []
    for row, q in enumerate(np.asarray(indices, dtype=np.int64)):
        positions = len(questions.offsets[q])
        scores = np.asarray(predictions[row][:2 * positions], dtype=np.float64).reshape(2, positions).T
        answers.append(best_answer(scores, questions.offsets[q], questions.windows[q], questions.contexts[q], options))
    return answers


# --- training: a batch of questions as the batch of their windows --------------------------------------------------


class QuestionCollator:
    """A batch of questions as the batch of all their windows, padded by DataCollatorWithPadding, plus INDEX per
    question and WINDOW_QUESTION per window, from which AnswerTrainer regroups the windows' logits."""

    def __init__(self, tokenizer):
        self.windows = DataCollatorWithPadding(tokenizer)
        self.left = tokenizer.padding_side == "left"

    def __call__(self, rows: list[dict]) -> dict:
        flat = [{name: values[j] for name, values in row.items() if name != INDEX}
                for row in rows for j in range(len(row["input_ids"]))]
        batch = self.windows(flat)
        if self.left and "start_positions" in batch:  # padding in front moves every position of a window along
            shift = batch["input_ids"].shape[1] - torch.tensor([len(window["input_ids"]) for window in flat])
            for name in ("start_positions", "end_positions"):
                batch[name] = batch[name] + shift
        batch[WINDOW_QUESTION] = torch.tensor([i for i, row in enumerate(rows) for _ in row["input_ids"]])
        if INDEX in rows[0]:
            batch[INDEX] = torch.tensor([row[INDEX] for row in rows])
        return batch


def question_scores(start: torch.Tensor, end: torch.Tensor, attention_mask: torch.Tensor, question: torch.Tensor,
                    questions: int) -> torch.Tensor:
    """(questions, 2 x positions): per question the log-softmax of its start logits over the real (unpadded)
    positions of all its windows, one window after another, then that of its end logits; PAD after them.

    Normalised per question, a span's start + end is its log-probability: the spans rank as by their logits, and
    an ensemble's soft vote averages the members' start and end distributions (`vote_probabilities`)."""
    windows = window_logits(start.float(), end.float(), attention_mask)
    rows = question.tolist()
    parts = []
    for q in range(questions):
        joined = torch.cat([w for w, row in zip(windows, rows) if row == q])
        parts.append(torch.log_softmax(joined, dim=0).T.reshape(-1))  # starts, then ends
    merged = parts[0].new_full((questions, max(len(p) for p in parts)), PAD)
    for row, part in enumerate(parts):
        merged[row, :len(part)] = part
    return merged


class AnswerTrainer(FinetuneTrainer):
    """Trains on the windows of each batch of questions (QuestionCollator) and predicts per question: the
    predictions are its windows' start and end scores (`question_scores`) and the labels its INDEX, so metrics,
    ensembles and predictions find its context, spans and answers for any subset of rows."""

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if INDEX not in self._signature_columns:  # Trainer passes on only the model's inputs; the collator needs it
            self._signature_columns.append(INDEX)

    def compute_loss(self, model, inputs, *args, **kwargs):
        return super().compute_loss(model, {k: v for k, v in inputs.items() if k not in (INDEX, WINDOW_QUESTION)},
                                    *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        index, question = inputs.pop(INDEX), inputs.pop(WINDOW_QUESTION)
        loss, logits, _ = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is None:
            return loss, None, None
        start, end = logits[0], logits[1]
        merged = question_scores(start, end, inputs["attention_mask"].to(start.device), question, len(index))
        return loss, merged, index.to(start.device)

    def _train_lengths(self, dataset) -> list[int] | None:
        # group_by_length: a question's length is its sub-words in all its windows, not its number of windows.
        if "input_ids" not in getattr(dataset, "column_names", ()):
            return None
        return [sum(windows) for windows in window_lengths(dataset)]


# --- scoring: the official SQuAD v1.1 exact match and F1 ----------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str, version_2: bool = False) -> float:
    """Token F1 of the normalised texts. SQuAD v1.1 scores an empty side 0; v2 scores it 1 when both are empty."""
    predicted, true = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if version_2 and (not predicted or not true):
        return float(predicted == true)
    same = sum((Counter(predicted) & Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(true)
    return 2 * precision * recall / (precision + recall)


def answer_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                  version_2: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per question its exact match and F1 (0 or 1, and 0..1), each the best over its reference answers; a question
    without any (SQuAD v2) has the empty answer as its reference."""
    exact, f1 = np.zeros(len(predictions)), np.zeros(len(predictions))
    for i, (prediction, gold) in enumerate(zip(predictions, references)):
        gold = list(gold) or [""]
        exact[i] = max(exact_match(prediction, g) for g in gold)
        f1[i] = max(token_f1(prediction, g, version_2) for g in gold)
    return exact, f1


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                  version_2: bool = False) -> dict[str, float]:
    """exact_match and f1 in percent, as evaluate's squad metric reports them; with version_2, also over the
    questions with and without an answer."""
    exact, f1 = answer_scores(predictions, references, version_2)
    metrics = {"exact_match": 100 * float(exact.mean()) if len(exact) else 0.0,
               "f1": 100 * float(f1.mean()) if len(f1) else 0.0}
    if version_2:
        has = np.array([bool(list(g)) for g in references], dtype=bool)
        for name, rows in (("has_answer", has), ("no_answer", ~has)):
            metrics[f"{name}_exact_match"] = 100 * float(exact[rows].mean()) if rows.any() else 0.0
            metrics[f"{name}_f1"] = 100 * float(f1[rows].mean()) if rows.any() else 0.0
    return metrics


class AnswerMetrics:
    """`compute_metrics`: the questions' answers from their windows' logits (`best_answer`), scored against their
    references; {} for questions without references (a test split without answers)."""

    def __init__(self, questions: Questions, options: AnswerOptions):
        self.questions, self.options = questions, options

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        indices = np.asarray(prediction.label_ids, dtype=np.int64)
        references = [self.questions.references[q] for q in indices]
        if any(r is None for r in references):
            return {}
        answers = question_answers(self.questions, prediction.predictions, indices, self.options)
        return squad_metrics([a.text for a in answers], references, self.options.version_2_with_negative)


def first_sentence(context: str) -> str:
    """The context up to its first sentence end (., ! or ? before a space), or all of it."""
    found = re.match(r".*?[.!?](?=\s|$)", context, flags=re.DOTALL)
    return (found.group(0) if found else context).strip()


def question_baseline(validation: Dataset, version_2: bool) -> dict[str, float | str]:
    """The answer that ignores the question: the context's first sentence (SQuAD v1), or no answer (v2)."""
    guesses = ([""] * len(validation) if version_2 else [first_sentence(c) for c in validation[CONTEXT]])
    metrics = squad_metrics(guesses, [a["text"] for a in validation[ANSWERS]], version_2)
    return {**metrics, "description": "no answer for every question" if version_2 else
            "the first sentence of the context for every question"}


# --- outputs ------------------------------------------------------------------------------------------------------


def around(context: str, start: int, end: int, width: int = 60) -> str:
    """The span [[marked]] in the context, with `width` characters either side."""
    if start < 0:
        return ""
    left, right = max(start - width, 0), min(end + width, len(context))
    return (("..." if left else "") + context[left:start] + "[[" + context[start:end] + "]]" + context[end:right]
            + ("..." if right < len(context) else ""))


def answer_errors(questions: Questions, output, options: AnswerOptions, n: int) -> ErrorAnalysis | None:
    """The n validation questions with the lowest F1 (then exact match): the question, its references, the
    predicted answer, and the context around the first reference and around the prediction."""
    if output.label_ids is None:
        return None
    indices = np.asarray(output.label_ids, dtype=np.int64)
    if any(questions.references[q] is None for q in indices):
        return None
    answers = question_answers(questions, output.predictions, indices, options)
    references = [questions.references[q] for q in indices]
    exact, f1 = answer_scores([a.text for a in answers], references, options.version_2_with_negative)
    rows = worst(f1 + exact / 2, n, largest=False)
    table = []
    for i in rows:
        q = indices[i]
        start = questions.starts[q][0] if references[i] else -1
        end = start + len(references[i][0]) if references[i] else -1
        table.append({"id": questions.ids[q], "question": questions.asked[q], "references": " | ".join(references[i]),
                      "prediction": answers[i].text,
                      "f1": 100 * f1[i], "exact_match": 100 * exact[i],
                      "reference_in_context": around(questions.contexts[q], start, end),
                      "prediction_in_context": around(questions.contexts[q], answers[i].start, answers[i].end)})
    table = pd.DataFrame(table)
    return ErrorAnalysis(f"the {len(rows)} validation questions with the lowest F1", table)


def write_answer_files(out_dir: Path, ids: Sequence[str], answers: Sequence[Answer]) -> None:
    """predictions.json (id -> answer text) and nbest_predictions.json (id -> the n-best answers, best first)."""
    predictions = {key: answer.text for key, answer in zip(ids, answers)}
    nbest = {key: [{"text": c["text"], "probability": c["probability"], "score": c["score"],
                    "start": c["start"], "end": c["end"]} for c in answer.nbest] for key, answer in zip(ids, answers)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.json").write_text(json.dumps(predictions, indent=2, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
    (out_dir / "nbest_predictions.json").write_text(json.dumps(nbest, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")


def member_scores(model_dir: str | Path, rows: Dataset, batch_size: int, device: str) -> np.ndarray:
    """A saved model's `question_scores` for tokenized questions (with INDEX), batched as a run predicts them."""
    model = inference_model(AutoModelForQuestionAnswering, model_dir, device)
    collate, parts = QuestionCollator(AutoTokenizer.from_pretrained(model_dir)), []
    with torch.inference_mode():
        for start in tqdm(range(0, len(rows), batch_size), desc=f"predict ({Path(model_dir).name})", unit="batch"):
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            index, question = batch.pop(INDEX), batch.pop(WINDOW_QUESTION)
            outputs = model(**{k: v.to(device) for k, v in batch.items()})
            parts += list(question_scores(outputs.start_logits, outputs.end_logits, batch["attention_mask"].to(device),
                                          question, len(index)).cpu().numpy())
    scores = np.full((len(parts), max(len(part) for part in parts)), PAD, dtype=np.float32)
    for row, part in enumerate(parts):
        scores[row, :len(part)] = part
    return scores


def predict_file(run: PredictRun, input_path: str, output: str) -> int:
    """`finetune-recipes predict`: SQuAD JSON, or a table (csv, jsonl, parquet) with the run's question and context
    columns (an id column optional, answers ignored) -> by the output's extension, .json as predictions.json
    (id -> answer), or .jsonl / a csv table with id, question, answer and score (its probability among the n-best).
    Contexts are windowed and answers searched as the run did; an ensemble soft-votes its members' scores."""
    args = SimpleNamespace(**{**run.options, "answer_column": None})
    where = f"--input {input_path}"
    table = question_table(read_questions(input_path, "--input", "test", args), args, where, None)
    if ANSWERS in table.column_names:  # answers the input may hold are not predict's concern
        table = table.remove_columns(ANSWERS)
    bad = run.drop_bad([(row.index, row.problem) for row in bad_questions(table, True)], len(table), where)
    table = table.select([i for i in range(len(table)) if i not in bad])
    members = run.ensemble.members if run.ensemble is not None else [str(run.model)]
    encode = partial(encode_questions, tokenizer=AutoTokenizer.from_pretrained(members[0]),
                     max_length=run.options["max_seq_length"], stride=run.options["doc_stride"])
    questions = Questions()
    rows = questions.add(table, table.map(encode, batched=True, remove_columns=table.column_names))
    device = "cuda" if run.device >= 0 else "cpu"
    scores = [member_scores(member, rows, run.batch_size, device) for member in members]
    if run.ensemble is None:
        logits = scores[0]
    else:  # as the run's ensemble voted
        logits = logits_from_scores(run.ensemble.combine(vote_probabilities(np.stack(scores))), run.ensemble.problem_type)
    answers = question_answers(questions, logits, range(len(table)), answer_options(run.options))
    frame = pd.DataFrame({ID: table[ID], QUESTION: table[QUESTION], "answer": [a.text for a in answers],
                          "score": [a.probability for a in answers]})
    suffix = Path(output).suffix.lower()
    if suffix == ".json":
        Path(output).write_text(json.dumps(dict(zip(frame[ID], frame["answer"])), indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
    elif suffix == ".jsonl":
        frame.to_json(output, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(output, index=False)
    return len(frame)


def mark_answering_model(config, args: QuestionDataArguments) -> None:
    """Record what `pipeline("question-answering", ...)` needs in the config saved with the model: the pipeline
    class (copied beside it by `save_answering_pipeline`) and the run's window and answer settings."""
    config.custom_pipelines = {TASK: {"impl": f"{PIPELINE_FILE.stem}.QuestionAnsweringPipeline",
                                      "pt": ["AutoModelForQuestionAnswering"], "type": "text"}}
    settings = {"max_seq_len": args.max_seq_length, "doc_stride": args.doc_stride,
                "max_answer_len": args.max_answer_length, "n_best_size": args.n_best_size,
                "handle_impossible_answer": args.version_2_with_negative,
                "null_score_diff_threshold": args.null_score_diff_threshold}
    config.task_specific_params = {**(getattr(config, "task_specific_params", None) or {}), TASK: settings}


def save_answering_pipeline(output_dir: Path) -> None:
    """Copy the pipeline code beside every model the run saved (cross-validation folds too), as
    `Pipeline.save_pretrained` does for custom pipelines."""
    for model_dir in [output_dir, *sorted(output_dir.glob("fold_*"))]:
        if (model_dir / "config.json").is_file():
            shutil.copy(PIPELINE_FILE, model_dir / PIPELINE_FILE.name)


# --- the run ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments: recipe defaults < --config YAML < command line.
    model_args, data_args, finetune_args, run_args, training_args = parse_args(
        (ModelArguments, QuestionDataArguments, FinetuneArguments, RunArguments, TrainingArguments), argv, DEFAULTS)
    if finetune_args.text_augment:
        raise RecipeInputError("--text_augment rewrites words, which would move answers away from their "
                               "answer_start: question answering does not support it.")
    if data_args.n_best_size < 1 or data_args.max_answer_length < 1:
        raise RecipeInputError(f"--n_best_size {data_args.n_best_size} and --max_answer_length "
                               f"{data_args.max_answer_length} must be 1 or more.")
    setup_run(training_args, run_args)
    set_seed(training_args.seed)

    # 2. Data: questions with their contexts and answers, each row checked; a validation split held out by
    # --cv_group_column's groups (e.g. title: an article's questions stay on one side) when none is given.
    group = finetune_args.cv_group_column
    splits, sources, skipped = load_questions(data_args, group)
    groups = cv_groups(splits["train"], group, sources["train"]) if group else None
    if group:
        check_disjoint_groups(splits, group, sources)
    splits = add_validation_split(splits, data_args.validation_split, training_args.seed, groups=groups)
    sources.setdefault("validation", f"validation split held out from {sources['train']}")
    splits = cap_splits(drop_unused_splits(splits, training_args), data_args, training_args.seed)
    logger.info("questions per split: %s", {k: len(v) for k, v in splits.items()})
    stop_for_inspection(DataReport(  # `finetune-recipes inspect` ends here; a run goes on
        "question_answering", splits, sources, skipped=skipped, data_args=data_args, first_columns=[QUESTION, CONTEXT],
        columns={"question": chosen(QUESTION, "--question_column", data_args.question_column, [QUESTION]),
                 "context": chosen(CONTEXT, "--context_column", data_args.context_column, [CONTEXT]),
                 "answers": chosen(ANSWERS, "--answer_column", data_args.answer_column, [ANSWERS, ANSWER_TEXT])},
        # No limit: a pair longer than --max_seq_length is windowed, not cut.
        measures=[char_lengths([QUESTION, CONTEXT]),
                  TokenLengths(model_args, [TextSide([QUESTION, CONTEXT], None, "--max_seq_length")])]))

    # 3. Model and tokenizer: a fast tokenizer, which maps sub-words back to characters of the context.
    tokenizer = load_processor(AutoTokenizer, model_args)
    if not tokenizer.is_fast:
        raise RecipeInputError(f"{model_args.model_name_or_path} has no fast tokenizer, which question answering "
                               "needs to map answers to sub-words and back.")
    check_windows(tokenizer, splits, sources, data_args.max_seq_length, data_args.doc_stride)
    config = load_config(model_args)
    mark_answering_model(config, data_args)
    model_init = partial(prepare_model, partial(load_model, AutoModelForQuestionAnswering, model_args, config),
                         finetune_args)

    # 4. Tokenize once: each question as its windows; the context spans of their positions go to `questions`.
    encode = partial(encode_questions, tokenizer=tokenizer, max_length=data_args.max_seq_length,
                     stride=data_args.doc_stride)
    with training_args.main_process_first(desc="tokenize"):
        tokenized = DatasetDict({split: d.map(encode, batched=True, remove_columns=d.column_names,
                                              num_proc=data_args.preprocessing_num_workers)
                                 for split, d in splits.items()})
    questions, windowing = Questions(), {}
    for split, dataset in tokenized.items():
        windowed = int(np.sum(pc.list_value_length(column_array(dataset, "input_ids")).to_numpy() > 1))
        windowing[f"windowed_questions_{split}"] = windowed
        if REACHED in dataset.column_names:
            # An answer longer than a window's room is in no window: its windows all train on CLS.
            windowing[f"answers_in_no_window_{split}"] = int(len(dataset) - sum(dataset[REACHED]))
            dataset = dataset.remove_columns(REACHED)
        if windowed:
            logger.info("%s: %d questions with contexts over --max_seq_length %d are split into windows sharing %d "
                        "sub-words", split, windowed, data_args.max_seq_length, data_args.doc_stride)
        tokenized[split] = questions.add(splits[split], dataset)
    options = answer_options(data_args)
    predicted = predicted_split(splits)

    def write_predictions(output, out_dir: Path) -> None:
        indices = tokenized[predicted][INDEX] if output.label_ids is None else output.label_ids
        write_answer_files(out_dir, [questions.ids[q] for q in indices],
                           question_answers(questions, output.predictions, indices, options))

    def validation_answers(output) -> tuple[list[str], list[str]]:
        answers = question_answers(questions, output.predictions, output.label_ids, options)
        return [a.text for a in answers], [(questions.references[q] or [""])[0] for q in output.label_ids]

    # 5. Train, evaluate, predict, report.
    task = Task(
        name="question_answering",
        model_init=model_init,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        test_dataset=tokenized.get("test"),
        data_collator=QuestionCollator(tokenizer),
        compute_metrics=AnswerMetrics(questions, options),
        processing_class=tokenizer,
        main_metric="f1",
        metric_scale=100.0,  # SQuAD scores in percent
        pipeline_task=TASK,
        vote_labels=LabelSpec(ANSWER_SPAN),  # members soft-vote over each question's start and end distributions
        vote_scores=vote_probabilities,
        trainer_class=AnswerTrainer,
        pipeline_options=["trust_remote_code=True"],  # the recipe's pipeline class, saved beside the model
        pipeline_call_kwargs={},  # the saved config holds the run's windows and answer limits (mark_answering_model)
        model_name=model_args.model_name_or_path,
        write_predictions=write_predictions if predicted else None,
        error_analysis=(lambda output, n: answer_errors(questions, output, options, n)) if "validation" in splits
        else None,
        groups=list(splits["train"][group]) if group else None,  # the train rows left after the hold-out and caps
        input_columns=[data_args.question_column or QUESTION, data_args.context_column or CONTEXT],
        data_results={**skipped, **windowing},
        baseline=(lambda: question_baseline(splits["validation"], data_args.version_2_with_negative))
        if "validation" in splits else None,
        output_texts=validation_answers if "validation" in splits else None,
        output_noun="answer",
    )
    results = finetune(task, training_args, finetune_args)
    if training_args.should_save:
        save_answering_pipeline(Path(training_args.output_dir))
    return results


if __name__ == "__main__":
    run_main(main)
