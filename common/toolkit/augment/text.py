"""Text augmentation, EDA style, with a probability per word for each operation (`--text_augment`).

    swap=P     each word swaps places with a random word of the same text, with probability P
    delete=P   each word is dropped with probability P (one word always stays)
    insert=P   after each word, with probability P, a copy of a random word of the text goes in at a random place
    unk=P      word dropout: each word becomes the tokenizer's unknown token with probability P
    mask=P     word dropout to the tokenizer's mask token instead

Operations run in that order; words are whitespace-separated. Example: --text_augment swap=0.1 delete=0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.core.errors import RecipeInputError, nearest

Words = list[str]


def random_swap(words: Words, p: float, rng: np.random.Generator, token: str | None) -> Words:
    words = list(words)
    for i in range(len(words)):
        if rng.random() < p:
            j = int(rng.integers(len(words)))
            words[i], words[j] = words[j], words[i]
    return words


def random_delete(words: Words, p: float, rng: np.random.Generator, token: str | None) -> Words:
    kept = [word for word in words if rng.random() >= p]
    return kept or [words[int(rng.integers(len(words)))]]


def random_insert(words: Words, p: float, rng: np.random.Generator, token: str | None) -> Words:
    out = list(words)
    for _ in words:
        if rng.random() < p:
            out.insert(int(rng.integers(len(out) + 1)), words[int(rng.integers(len(words)))])
    return out


def word_dropout(words: Words, p: float, rng: np.random.Generator, token: str | None) -> Words:
    return [token if rng.random() < p else word for word in words]


# Name -> (function, the tokenizer's special token it writes, if any), in the order they are applied.
OPS: dict[str, tuple[Callable[[Words, float, np.random.Generator, str | None], Words], str | None]] = {
    "swap": (random_swap, None),
    "delete": (random_delete, None),
    "insert": (random_insert, None),
    "unk": (word_dropout, "unk_token"),
    "mask": (word_dropout, "mask_token"),
}


def parse_text_augment(spec: Iterable[str] | Mapping[str, Any] | str) -> dict[str, float]:
    """'swap=0.1 delete=0.1' (a string, a list of op=P, or a YAML mapping) -> {op: probability}."""
    if isinstance(spec, Mapping):
        items = [(str(op), value) for op, value in spec.items()]
    else:
        tokens = spec.replace(",", " ").split() if isinstance(spec, str) else [t for s in spec for t in s.replace(",", " ").split()]
        items = []
        for token in tokens:
            if "=" not in token:
                raise RecipeInputError(f"--text_augment '{token}': write each operation as op=probability, "
                                       f"e.g. swap=0.1. Operations: {', '.join(OPS)}.")
            items.append(tuple(token.split("=", 1)))
    probabilities: dict[str, float] = {}
    for op, value in items:
        if op not in OPS:
            raise RecipeInputError(f"--text_augment: unknown operation '{op}'{nearest(op, OPS)}. "
                                   f"Operations: {', '.join(OPS)}.")
        if op in probabilities:
            raise RecipeInputError(f"--text_augment: operation '{op}' is given twice.")
        try:
            p = float(value)
        except (TypeError, ValueError):
            raise RecipeInputError(f"--text_augment {op}={value}: the probability must be a number in [0, 1].") from None
        if not 0.0 <= p <= 1.0:
            raise RecipeInputError(f"--text_augment {op}={value}: the probability must be in [0, 1].")
        probabilities[op] = p
    return probabilities


@dataclass
class TextAugmenter:
    """Augments the given text columns of an example; None values and empty texts pass through."""

    columns: list[str]
    probabilities: dict[str, float]
    tokens: dict[str, str | None]  # the tokenizer's unk_token / mask_token

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {**example, **{c: self.augment(example[c], rng) for c in self.columns if isinstance(example[c], str)}}

    def augment(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        if not words:
            return text
        for op, (function, token_name) in OPS.items():
            if self.probabilities.get(op):
                words = function(words, self.probabilities[op], rng, self.tokens.get(token_name))
        return " ".join(words)


@dataclass
class TextAugmentArguments:
    text_augment: list[str] = field(
        default_factory=list,
        metadata={"help": "Text augmentation ops with probabilities, e.g. swap=0.1 delete=0.1 insert=0.1 unk=0.1."},
    )

    def check(self) -> None:
        if self.text_augment:
            parse_text_augment(self.text_augment)


def text_augmenter(spec: Iterable[str] | Mapping[str, Any] | str, columns: list[str], tokenizer) -> TextAugmenter:
    """The augmenter for --text_augment, checked against the tokenizer's special tokens."""
    probabilities = parse_text_augment(spec)
    tokens = {name: getattr(tokenizer, name, None) for name in ("unk_token", "mask_token")}
    for op, p in probabilities.items():
        token_name = OPS[op][1]
        if p and token_name and not tokens[token_name]:
            raise RecipeInputError(f"--text_augment {op}={p}: the tokenizer {type(tokenizer).__name__} has no "
                                   f"{token_name}. Use the other word-dropout operation, or drop {op}.")
    return TextAugmenter(list(columns), probabilities, tokens)
