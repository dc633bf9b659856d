"""A `question-answering` pipeline for extractive models, saved beside each fine-tuned question answering model,
and the windowing and answer search that the recipe (recipes/question_answering.py) scores its runs with.

transformers 5 dropped its built-in "question-answering" pipeline, so the recipe registers this one in the saved
config (`custom_pipelines`) and copies this file into the output dir, as `Pipeline.save_pretrained` shares a custom
pipeline. Then either of these loads the model:

    pipeline("question-answering", model=output_dir, trust_remote_code=True)   # runs this file from output_dir
    pipeline("question-answering", model=output_dir, pipeline_class=QuestionAnsweringPipeline)   # imported

Calls take `question=..., context=...` (or a dict, or a list of dicts) and return {"answer", "score", "start",
"end"} per question, as the transformers 4 pipeline did; `score` is the answer's probability among the question's
n-best answers. By default it windows and searches as the run did (max_seq_len, doc_stride, max_answer_len,
n_best_size, handle_impossible_answer and null_score_diff_threshold come from
`config.task_specific_params["question-answering"]`, written by the recipe); each can be given per call.

This file is copied on its own into model directories, so it imports nothing but transformers, torch and numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

TASK = "question-answering"


def encode_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], max_length: int, stride: int):
    """Each (question, context) as windows of at most `max_length` sub-words: the question first, the context cut
    into windows that share `stride` sub-words (`overflow_to_sample_mapping` gives each window's question)."""
    return tokenizer([q.lstrip() for q in questions], list(contexts), truncation="only_second", max_length=max_length,
                     stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)


def context_spans(encoded, window: int) -> list[list[int]]:
    """The context characters of each position of a window; (-1, -1) for the question and special tokens."""
    return [list(span) if part == 1 else [-1, -1]
            for span, part in zip(encoded["offset_mapping"][window], encoded.sequence_ids(window))]


@dataclass
class AnswerOptions:
    n_best_size: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool = False
    null_score_diff_threshold: float = 0.0


@dataclass
class Answer:
    text: str
    start: int  # character span in the context; -1 for the empty answer
    end: int
    score: float  # start + end logit
    probability: float  # softmax of the score over the question's n-best answers
    nbest: list[dict]


def best_answer(logits: np.ndarray, offsets: np.ndarray, windows: Sequence[int], context: str,
                options: AnswerOptions) -> Answer:
    """The answer of one question from its windows' start and end logits, (positions, 2) one window after another
    (`windows` gives each one's positions; `offsets` their context spans): over every window, the n_best_size best
    starts and ends inside the context, paired within the window into spans of at most max_answer_length sub-words,
    ranked by start + end logit. With version_2_with_negative the empty answer (a window's first token, CLS; the
    lowest of the windows' scores) competes, and wins when it beats the best span by more than
    null_score_diff_threshold."""
    candidates: list[dict] = []
    null_score = None
    first = 0
    for length in windows:
        start_logits, end_logits = logits[first:first + length, 0], logits[first:first + length, 1]
        spans = offsets[first:first + length]
        first += length
        score = float(start_logits[0] + end_logits[0])
        null_score = score if null_score is None else min(null_score, score)
        inside = spans[:, 0] >= 0
        starts = np.argsort(-np.where(inside, start_logits, -np.inf), kind="stable")[:options.n_best_size]
        ends = np.argsort(-np.where(inside, end_logits, -np.inf), kind="stable")[:options.n_best_size]
        starts, ends = starts[inside[starts]], ends[inside[ends]]
        for s in starts:
            for e in ends[(ends >= s) & (ends - s < options.max_answer_length)]:
                candidates.append({"start": int(spans[s, 0]), "end": int(spans[e, 1]),
                                   "score": float(start_logits[s] + end_logits[e])})
    candidates.sort(key=lambda c: -c["score"])  # stable: among equal scores, the earlier window and start
    best = candidates[0] if candidates else None
    nbest = candidates[:options.n_best_size]
    if options.version_2_with_negative and null_score is not None:
        empty = {"start": -1, "end": -1, "score": null_score}
        nbest = sorted([*nbest, empty], key=lambda c: -c["score"])[:options.n_best_size]
        if best is None or null_score - best["score"] > options.null_score_diff_threshold:
            best = empty
    scores = np.array([c["score"] for c in nbest], dtype=np.float64)
    probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if len(nbest) else scores
    for candidate, probability in zip(nbest, probabilities):
        candidate["text"] = context[candidate["start"]:candidate["end"]] if candidate["start"] >= 0 else ""
        candidate["probability"] = float(probability)
    if best is None:  # no span fits the limits in any window
        return Answer("", -1, -1, float("-inf"), 0.0, nbest)
    text = context[best["start"]:best["end"]] if best["start"] >= 0 else ""
    probability = next((c["probability"] for c in nbest if c is best), 0.0)  # 0: cut from the n-best
    return Answer(text, best["start"], best["end"], best["score"], probability, nbest)


def window_logits(start: torch.Tensor, end: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Each window's (positions, 2) start and end logits at its real (unpadded) positions."""
    stacked = torch.stack([start, end], dim=-1)
    return [stacked[w][attention_mask[w].bool()] for w in range(len(stacked))]


class QuestionAnsweringPipeline(ChunkPipeline):
    """Extractive question answering: each window of a (question, context) is a chunk; the answer is searched over
    all of them with `best_answer`."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = (getattr(self.model.config, "task_specific_params", None) or {}).get(TASK, {})

    def _sanitize_parameters(self, max_seq_len=None, doc_stride=None, max_answer_len=None, n_best_size=None,
                             handle_impossible_answer=None, null_score_diff_threshold=None, top_k=None):
        preprocess = {"max_seq_len": max_seq_len, "doc_stride": doc_stride}
        postprocess = {"max_answer_len": max_answer_len, "n_best_size": n_best_size, "top_k": top_k,
                       "handle_impossible_answer": handle_impossible_answer,
                       "null_score_diff_threshold": null_score_diff_threshold}
        return ({k: v for k, v in preprocess.items() if v is not None}, {},
                {k: v for k, v in postprocess.items() if v is not None})

    def __call__(self, *args, question=None, context=None, **kwargs):
        if question is not None or context is not None:
            if isinstance(question, str) != isinstance(context, str):
                raise ValueError("give a question and a context, or lists of both of equal length")
            inputs = ({"question": question, "context": context} if isinstance(question, str) else
                      [{"question": q, "context": c} for q, c in zip(question, context, strict=True)])
            return super().__call__(inputs, *args, **kwargs)
        return super().__call__(*args, **kwargs)

    def preprocess(self, example: dict, max_seq_len: int | None = None, doc_stride: int | None = None):
        if not str(example.get("question") or "").strip() or not str(example.get("context") or "").strip():
            raise ValueError(f"a question and a context are needed, got {example!r}")
        encoded = encode_windows(self.tokenizer, [example["question"]], [example["context"]],
                                 max_seq_len or self.settings.get("max_seq_len", 384),
                                 doc_stride if doc_stride is not None else self.settings.get("doc_stride", 128))
        names = [n for n in self.tokenizer.model_input_names if n in encoded]
        windows = len(encoded["input_ids"])
        for w in range(windows):
            yield {**{n: torch.tensor([encoded[n][w]]) for n in names}, "offsets": context_spans(encoded, w),
                   "context": example["context"], "is_last": w == windows - 1}

    def _forward(self, inputs: dict) -> dict:
        kept = {k: inputs.pop(k) for k in ("offsets", "context", "is_last")}
        outputs = self.model(**inputs)
        return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits,
                "attention_mask": inputs["attention_mask"], **kept}

    def postprocess(self, windows: list[dict], max_answer_len=None, n_best_size=None, handle_impossible_answer=None,
                    null_score_diff_threshold=None, top_k=None):
        def setting(value, name, default):
            return value if value is not None else self.settings.get(name, default)

        options = AnswerOptions(setting(n_best_size, "n_best_size", 20), setting(max_answer_len, "max_answer_len", 30),
                                setting(handle_impossible_answer, "handle_impossible_answer", False),
                                setting(null_score_diff_threshold, "null_score_diff_threshold", 0.0))
        logits = [part for w in windows for part in window_logits(w["start_logits"], w["end_logits"],
                                                                   w["attention_mask"])]
        offsets = np.array([span for w in windows for span in w["offsets"]], dtype=np.int64).reshape(-1, 2)
        answer = best_answer(torch.cat(logits).float().cpu().numpy(), offsets, [len(part) for part in logits],
                             windows[0]["context"], options)
        found = [{"answer": c["text"], "score": c["probability"], "start": c["start"], "end": c["end"]}
                 for c in answer.nbest]
        if top_k and top_k > 1:
            return found[:top_k]
        return {"answer": answer.text, "score": answer.probability, "start": answer.start, "end": answer.end}
