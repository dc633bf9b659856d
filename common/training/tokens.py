"""Token classification pieces: tags aligned with sub-words, entity-level metrics (seqeval) and predictions.conll."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset
from seqeval.metrics import accuracy_score, classification_report
from transformers import EvalPrediction

from common.data.tokens import TAGS, TOKENS
from common.training.metrics import first_output

WORD_IDS = "word_ids"  # per sub-word, the index of its word (-1: special token); Trainer drops it before the model
AVERAGES = ("micro avg", "macro avg", "weighted avg")


def continued(tag: str, label2id: dict[str, int]) -> str:
    """The tag of a word's later sub-words with --label_all_tokens: B-x continues as I-x (when the data has I-x)."""
    inside = "I-" + tag[2:]
    return inside if tag.startswith("B-") and inside in label2id else tag


def align_tags(batch: dict, tokenizer, label2id: dict[str, int], max_length: int, label_all_tokens: bool) -> dict:
    """Sub-words of each sentence, each word's tag on its first sub-word (-100 on the rest, or the tag continued
    with --label_all_tokens), the word of each sub-word, and how many words --max_seq_length cut."""
    encoded = tokenizer(batch[TOKENS], is_split_into_words=True, truncation=True, max_length=max_length)
    words, labels, cut = [], [], []
    for i, tokens in enumerate(batch[TOKENS]):
        ids = [-1 if w is None else w for w in encoded.word_ids(i)]
        words.append(ids)
        cut.append(len(tokens) - (max(ids) + 1 if max(ids, default=-1) >= 0 else 0))
        if TAGS in batch:
            tags, row, previous = batch[TAGS][i], [], -1
            for w in ids:
                if w < 0:
                    row.append(-100)
                elif w != previous:
                    row.append(label2id[tags[w]])
                else:
                    row.append(label2id[continued(tags[w], label2id)] if label_all_tokens else -100)
                previous = w
            labels.append(row)
    out = {**encoded, WORD_IDS: words, "words_cut": cut}
    if labels:
        out["labels"] = labels
    return out


class EntityMetrics:
    """`compute_metrics`: entity-level precision, recall and F1 (seqeval, exact span and type), overall and per
    entity type, and token accuracy, over the positions that carry a label."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        predicted, labels = first_output(prediction.predictions).argmax(-1), np.asarray(prediction.label_ids)
        true_tags, predicted_tags = [], []
        for row_predicted, row_labels in zip(predicted, labels):
            keep = row_labels != -100
            true_tags.append([self.names[i] for i in row_labels[keep]])
            predicted_tags.append([self.names[i] for i in row_predicted[keep]])
        report = classification_report(true_tags, predicted_tags, output_dict=True, zero_division=0)
        overall = report["micro avg"]
        metrics = {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1-score"],
                   "token_accuracy": accuracy_score(true_tags, predicted_tags)}
        for entity, scores in report.items():
            if entity not in AVERAGES:
                metrics.update({f"{entity}_precision": scores["precision"], f"{entity}_recall": scores["recall"],
                                f"{entity}_f1": scores["f1-score"], f"{entity}_support": float(scores["support"])})
        return {k: float(v) for k, v in metrics.items()}


def word_predictions(logits: np.ndarray, word_ids: Sequence[int], words: int, names: Sequence[str]) -> list[str]:
    """Each word's tag: the prediction on its first sub-word; 'O' for a word the tokenizer cut or dropped."""
    tags = ["O"] * words
    seen = set()
    for position, word in enumerate(word_ids):
        if word >= 0 and word not in seen:
            seen.add(word)
            tags[word] = names[int(np.argmax(logits[position]))]
    return tags


def write_conll_predictions(path: str | Path, raw: Dataset, logits: np.ndarray, tokenized: Dataset,
                            names: Sequence[str]) -> None:
    """predictions.conll: `token<TAB>gold<TAB>predicted` per word (gold empty without tags), sentences apart."""
    logits = first_output(logits)
    gold = raw[TAGS] if TAGS in raw.column_names else None
    lines = []
    for i, (tokens, word_ids) in enumerate(zip(raw[TOKENS], tokenized[WORD_IDS])):
        predicted = word_predictions(logits[i], word_ids, len(tokens), names)
        for j, token in enumerate(tokens):
            lines.append(f"{token}\t{gold[i][j] if gold is not None else ''}\t{predicted[j]}")
        lines.append("")
    Path(path).write_text("\n".join(lines), encoding="utf-8")
