"""Truncation: rows longer than --max_seq_length are counted per split and reported."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import fast_args
from transformers import AutoTokenizer

from recipes import text_classification

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_truncated_text_rows_are_counted(tiny_bert, csv_file, tmp_path, caplog):
    """Rows cut at --max_seq_length are counted per split in all_results.json (a sentence pair counts when the
    pair is over the limit) and logged, as a warning once over 1% of a split."""
    # Sentence pairs: each side of a long pair is short (8 tokens), only the pair (19) exceeds 16 tokens.
    def rows(start: int, n: int, long: int) -> list[dict]:
        words = ["the", "film", "was", "good", "and", "the", "cast"]
        out = []
        for i in range(n):  # a row number makes every row unique
            side = words[: 7 if i < long else 1]
            out.append({"sentence1": " ".join([str(start + i), *side]), "sentence2": " ".join([*side, "too"]),
                        "label": "pos" if i % 2 else "neg"})
        return out

    data = {"train": rows(0, 120, 1), "validation": rows(200, 20, 3), "test": rows(300, 10, 0)}
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    for split, (n_long, n) in {"train": (1, 120), "validation": (3, 20), "test": (0, 10)}.items():
        pairs = data[split]
        lengths = [len(ids) for ids in tokenizer([r["sentence1"] for r in pairs], [r["sentence2"] for r in pairs])
                   ["input_ids"]]
        assert sum(n > 16 for n in lengths) == n_long
        longest_side = max(len(tokenizer(r[c])["input_ids"]) for r in pairs for c in ("sentence1", "sentence2"))
        assert longest_side <= 16  # no side is over the limit alone
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        text_classification.main([
            "--model_name_or_path", tiny_bert, "--max_seq_length", "16",
            *[arg for split in data for arg in (f"--{split}_file", csv_file(data[split], f"{split}.csv"))],
            *fast_args(out, per_device_train_batch_size=32, eval_strategy="no"),
        ])
    saved = json.loads((out / "all_results.json").read_text())
    keys = ("truncated_train", "truncated_validation", "truncated_test")
    assert {k: saved.get(k) for k in keys} == {"truncated_train": 1, "truncated_validation": 3, "truncated_test": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    # 3 of 20 (15%) is over 1%: a warning; 1 of 120 (0.8%) is logged but not a warning; 0 says nothing.
    assert any(m.startswith("validation: 3 of 20 pairs were longer than --max_seq_length 16") for m in warnings)
    assert any(m.startswith("train: 1 of 120 pairs were longer than --max_seq_length 16") for m in infos)
    assert not any(m.startswith(("train: ", "test: ")) and "--max_seq_length" in m for m in warnings)
