"""Token classification pieces: sentences split into overlapping windows of sub-words, the window predictions
merged back into one per word (`TokenTrainer`), entity-level metrics (seqeval) over those words, and CoNLL output.

A sentence longer than --max_seq_length becomes several windows (the fast tokenizer's `return_overflowing_tokens`
with a `stride` of shared sub-words, as in HF's question answering examples); every window trains. Each word is
predicted once, at its first sub-word, in the window where that sub-word has the most context. Rows stay
sentences throughout, so cross-validation folds, ensembles and predictions.conll all work per sentence and word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from seqeval.metrics import accuracy_score, classification_report
from tqdm.auto import tqdm
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    EvalPrediction,
)

from common.core.errors import RecipeInputError
from common.data.word_tags import IO, TAGS, TOKENS, tag_scheme
from common.models.runtime import inference_model
from common.training.metrics import first_output
from common.training.trainer import FinetuneTrainer

WORD_IDS = "word_ids"  # per window position, the word predicted there (-1: none)
WORD_LABELS = "word_labels"  # per sentence, each word's tag id (-100 without tags); also gives its word count
SENTENCE = "window_sentence"  # per window of a collated batch, its sentence's row in the batch
WINDOWS, UNCOVERED = "windows", "uncovered_words"  # per sentence, for the run's counts; removed before training
AVERAGES = ("micro avg", "macro avg", "weighted avg")


def window_stride(tokenizer, max_length: int, stride: int | None) -> int:
    """Sub-words that consecutive windows of a long sentence share (--doc_stride; by default a quarter of a
    window), checked so that each window moves on."""
    special = tokenizer.num_special_tokens_to_add()
    room = max_length - special
    if room < 2:
        raise RecipeInputError(f"--max_seq_length {max_length} leaves {max(room, 0)} sub-words beside the "
                               f"{special} special tokens: give at least {special + 2}.")
    stride = room // 4 if stride is None else stride
    if not 0 <= stride < room:
        raise RecipeInputError(f"--doc_stride {stride}: consecutive windows share that many sub-words, which must be "
                               f"from 0 to {room - 1} (--max_seq_length {max_length} less {special} special tokens).")
    return stride


def continued(tag: str, label2id: dict[str, int]) -> str:
    """The tag of a word's later sub-words with --label_all_tokens: B-x continues as I-x (when the data has I-x)."""
    inside = "I-" + tag[2:]
    return inside if tag.startswith("B-") and inside in label2id else tag


def _first_subwords(ids: list[list[int]], stride: int) -> tuple[list[list[bool]], dict[int, tuple[int, int]]]:
    """For the windows of one sentence (each position's word, -1 for special tokens): where the words' first
    sub-words are, and per word the (window, position) of its first sub-word with the most context, i.e. the most
    sub-words on its nearer side that the window does not cut off (none are cut at the sentence's own ends)."""
    first: dict[int, int] = {}  # word -> index of its first sub-word in the whole sentence
    best: dict[int, tuple[float, int, int]] = {}
    flags, start = [], 0
    for k, row in enumerate(ids):
        content = [p for p, word in enumerate(row) if word >= 0]
        flags.append([False] * len(row))
        for n, p in enumerate(content):
            if first.setdefault(row[p], start + n) != start + n:
                continue  # a later sub-word of its word
            flags[k][p] = True
            context = min(n if k > 0 else math.inf, len(content) - 1 - n if k < len(ids) - 1 else math.inf)
            if row[p] not in best or context > best[row[p]][0]:
                best[row[p]] = (context, k, p)
        start += len(content) - stride  # the tokenizer's next window starts `stride` sub-words before this one ends
    return flags, {word: (k, p) for word, (_, k, p) in best.items()}


def encode_windows(batch: dict, tokenizer, label2id: dict[str, int], max_length: int, stride: int,
                   label_all_tokens: bool = False) -> dict:
    """Each sentence as its windows of at most `max_length` sub-words: their model inputs; their training labels
    (a word's tag on its first sub-word, -100 on the rest, or the tag continued with --label_all_tokens); the
    word each position is scored for; and per sentence its words' tag ids, windows and words no window holds."""
    encoded = tokenizer(batch[TOKENS], is_split_into_words=True, truncation=True, max_length=max_length,
                        stride=stride, return_overflowing_tokens=True)
    inputs = [name for name in encoded if name != "overflow_to_sample_mapping"]
    windows: list[list[int]] = [[] for _ in batch[TOKENS]]
    for window, sentence in enumerate(encoded["overflow_to_sample_mapping"]):
        windows[sentence].append(window)
    out: dict[str, list] = {name: [] for name in [*inputs, "labels", WORD_IDS, WORD_LABELS, WINDOWS, UNCOVERED]}
    for i, tokens in enumerate(batch[TOKENS]):
        ids = [[-1 if word is None else word for word in encoded.word_ids(j)] for j in windows[i]]
        flags, scored = _first_subwords(ids, stride)
        for name in inputs:
            out[name].append([encoded[name][j] for j in windows[i]])
        positions = [[-1] * len(row) for row in ids]
        for word, (k, p) in scored.items():
            positions[k][p] = word
        out[WORD_IDS].append(positions)
        out[WINDOWS].append(len(ids))
        out[UNCOVERED].append(len(tokens) - len(scored))
        if TAGS not in batch:
            out[WORD_LABELS].append([-100] * len(tokens))
            continue
        tags = batch[TAGS][i]
        out[WORD_LABELS].append([label2id[tag] for tag in tags])
        out["labels"].append([[-100 if word < 0 else label2id[tags[word]] if is_first else
                               label2id[continued(tags[word], label2id)] if label_all_tokens else -100
                               for word, is_first in zip(row, row_flags)] for row, row_flags in zip(ids, flags)])
    if TAGS not in batch:
        del out["labels"]
    return out


def _padded(rows: Sequence[Sequence[int]], value: int, length: int | None = None, left: bool = False) -> torch.Tensor:
    length = max(map(len, rows), default=0) if length is None else length
    padded = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        start = length - len(row) if left else 0
        padded[i, start:start + len(row)] = torch.as_tensor(row, dtype=torch.long)
    return padded


class WindowCollator:
    """A batch of sentences as the batch of their windows, padded by DataCollatorForTokenClassification (labels
    with -100), plus what TokenTrainer merges the predictions with: each window's scored words and sentence, and
    each sentence's word tags."""

    def __init__(self, tokenizer):
        self.windows = DataCollatorForTokenClassification(tokenizer)
        self.left = tokenizer.padding_side == "left"

    def __call__(self, rows: list[dict]) -> dict:
        flat = [{name: values[j] for name, values in row.items() if name not in (WORD_IDS, WORD_LABELS)}
                for row in rows for j in range(len(row["input_ids"]))]
        batch = self.windows(flat)
        if WORD_IDS in rows[0]:  # not in training: Trainer drops the columns the model does not take
            batch[WORD_IDS] = _padded([w for row in rows for w in row[WORD_IDS]], -1, batch["input_ids"].shape[1],
                                      self.left)
            batch[SENTENCE] = torch.tensor([i for i, row in enumerate(rows) for _ in row["input_ids"]])
            batch[WORD_LABELS] = _padded([row[WORD_LABELS] for row in rows], -100)
        return batch


def word_logits(logits: torch.Tensor, word_ids: torch.Tensor, sentence: torch.Tensor, shape: tuple[int, int],
                outside: int) -> torch.Tensor:
    """(sentences, words, tags) logits of the `shape` (sentences, words) from the windows' (windows, positions,
    tags): each word's from the position it is scored at. A word no window holds (the tokenizer gave it no
    sub-word) is predicted 'O' for certain."""
    merged = logits.new_full((*shape, logits.shape[-1]), torch.finfo(logits.dtype).min)
    merged[..., outside] = 0
    window, position = (word_ids >= 0).nonzero(as_tuple=True)
    merged[sentence[window], word_ids[window, position]] = logits[window, position]
    return merged


class TokenTrainer(FinetuneTrainer):
    """Trains on the windows of each batch of sentences (WindowCollator) and predicts per word: predictions are
    (sentences, words, tags) logits and the labels each word's tag id, so metrics, ensembles and
    predictions.conll see one tag per word of every sentence."""

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        # Trainer passes on only the model's inputs; the word maps must reach the collator too.
        self._signature_columns += [c for c in (WORD_IDS, WORD_LABELS) if c not in self._signature_columns]

    def compute_loss(self, model, inputs, *args, **kwargs):
        return super().compute_loss(model, {k: v for k, v in inputs.items() if k not in (WORD_IDS, WORD_LABELS,
                                                                                       SENTENCE)}, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        extra = {k: inputs.pop(k) for k in (WORD_IDS, WORD_LABELS, SENTENCE)}
        loss, logits, _ = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is None:
            return loss, None, None
        logits = logits[0] if isinstance(logits, tuple) else logits
        merged = word_logits(logits, extra[WORD_IDS].to(logits.device), extra[SENTENCE].to(logits.device),
                             tuple(extra[WORD_LABELS].shape), outside_id(self.model.config))
        return loss, merged, extra[WORD_LABELS].to(logits.device) if "labels" in inputs else None

    def _train_lengths(self, dataset) -> list[int] | None:
        # group_by_length: a sentence's length is its sub-words in all its windows, not its number of windows.
        if "input_ids" not in getattr(dataset, "column_names", ()):
            return None
        return [sum(map(len, windows)) for windows in dataset["input_ids"]]


def outside_id(config) -> int:
    if "O" not in config.label2id:
        raise RecipeInputError(f"the model's tags {sorted(config.label2id)} hold no 'O', the tag of a word outside "
                               "entities: train it with this recipe, which always has one.")
    return config.label2id["O"]


def entity_tags(sentences: Sequence[Sequence[str]], scheme: str) -> list[list[str]]:
    """Tags as seqeval's conlleval reading takes them: IOB1, IOB2 and IOBES as they are; IO types as I-<type>."""
    return [[tag if tag == "O" or scheme != IO else f"I-{tag}" for tag in row] for row in sentences]


class EntityMetrics:
    """`compute_metrics`: entity-level precision, recall and F1 (seqeval in its conlleval mode: exact span and
    type), overall and per entity type, and word accuracy (`token_accuracy`), over every word of the sentences,
    one predicted tag per word. `scheme` is the tagging scheme (by default read from the tag names)."""

    def __init__(self, names: Sequence[str], scheme: str | None = None):
        self.names = list(names)
        self.scheme = scheme or tag_scheme([self.names])

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        predicted, labels = first_output(prediction.predictions).argmax(-1), np.asarray(prediction.label_ids)
        true_tags, predicted_tags = [], []
        for row_predicted, row_labels in zip(predicted, labels):
            keep = row_labels != -100
            true_tags.append([self.names[i] for i in row_labels[keep]])
            predicted_tags.append([self.names[i] for i in row_predicted[keep]])
        true_tags, predicted_tags = entity_tags(true_tags, self.scheme), entity_tags(predicted_tags, self.scheme)
        report = classification_report(true_tags, predicted_tags, output_dict=True, zero_division=0)
        overall = report["micro avg"]
        metrics = {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1-score"],
                   "token_accuracy": accuracy_score(true_tags, predicted_tags)}
        for entity, scores in report.items():
            if entity not in AVERAGES:
                metrics.update({f"{entity}_precision": scores["precision"], f"{entity}_recall": scores["recall"],
                                f"{entity}_f1": scores["f1-score"], f"{entity}_support": float(scores["support"])})
        return {k: float(v) for k, v in metrics.items()}


def word_tags(predictions, sentences: Sequence[Sequence[str]], names: Sequence[str]) -> list[list[str]]:
    """Each word's predicted tag from (sentences, words, tags) predictions, padded past each sentence's end."""
    best = first_output(predictions).argmax(-1)
    return [[names[t] for t in best[i, :len(tokens)]] for i, tokens in enumerate(sentences)]


def write_conll(path: str | Path, sentences: Sequence[Sequence[str]], *columns: Sequence[Sequence[str]]) -> None:
    """A CoNLL file: per word its token and its field of each column, tab-separated; a blank line ends a sentence."""
    lines = []
    for i, tokens in enumerate(sentences):
        lines += ["\t".join([token, *(column[i][j] for column in columns)]) for j, token in enumerate(tokens)] + [""]
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def write_conll_predictions(path: str | Path, raw, predictions, names: Sequence[str]) -> None:
    """predictions.conll: `token<TAB>gold<TAB>predicted` for every word of the sentences (gold empty without tags)."""
    sentences = raw[TOKENS]
    gold = raw[TAGS] if TAGS in raw.column_names else [[""] * len(tokens) for tokens in sentences]
    write_conll(path, sentences, gold, word_tags(predictions, sentences, names))


def word_scores(model_dir: str | Path, sentences: Sequence[Sequence[str]], max_length: int, stride: int | None,
                batch_size: int, device: str | int) -> tuple[list[np.ndarray], list[str]]:
    """A saved model's tag probabilities per word of each sentence (words, tags), windowed as the recipe windows
    them; and its tag names."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = inference_model(AutoModelForTokenClassification, model_dir, device)
    stride = window_stride(tokenizer, max_length, stride)
    encoded = encode_windows({TOKENS: list(sentences)}, tokenizer, model.config.label2id, max_length, stride)
    rows = [{name: encoded[name][i] for name in encoded if name not in (WINDOWS, UNCOVERED)}
            for i in range(len(sentences))]
    collate, outside, scores = WindowCollator(tokenizer), outside_id(model.config), []
    with torch.inference_mode():
        for start in tqdm(range(0, len(rows), batch_size), desc=f"predict ({Path(model_dir).name})", unit="batch"):
            batch = collate(rows[start:start + batch_size])
            extra = {k: batch.pop(k).to(model.device) for k in (WORD_IDS, WORD_LABELS, SENTENCE)}
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
            merged = word_logits(logits, extra[WORD_IDS], extra[SENTENCE], tuple(extra[WORD_LABELS].shape), outside)
            probabilities = torch.softmax(merged.float(), dim=-1).cpu().numpy()
            scores += [probabilities[i, :len(row[WORD_LABELS])] for i, row in enumerate(rows[start:start + batch_size])]
    return scores, [model.config.id2label[i] for i in range(model.config.num_labels)]
