"""Silent wrong answers in the text recipes: BLEU scored against truncated references, truncation left uncounted."""

from __future__ import annotations

import json
import logging

import pytest
import sacrebleu
from conftest import fast_args
from transformers import AutoTokenizer

from common.data.parallel import read_lines
from recipes import text_classification, translation

pytestmark = pytest.mark.usefixtures("one_thread")


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_17_7_bleu_is_scored_against_raw_references(test_data, tmp_path):
    from common.models.tiny import tiny_marian

    multi30k = test_data / "toy_en_de"
    en, de = read_lines(multi30k / "train.en", "en"), read_lines(multi30k / "train.de", "de")
    marian = tiny_marian(tmp_path / "marian", en[:1500] + de[:1500], vocab_size=600)
    # References of three sentences each, far over --max_target_length 16. Validation and test share their
    # sources, so the test predictions in predictions.txt are the validation predictions too; their references
    # differ, and the splits have the same size: the metric must still tell them apart.
    sources = read_lines(multi30k / "val.en", "en")[:8]
    val_de = read_lines(multi30k / "val.de", "de")
    references = {"validation": [f"{val_de[i]} {val_de[i + 1]} {val_de[i + 2]}" for i in range(8)],
                  "test": [f"{val_de[i + 20]} {val_de[i + 30]} {val_de[i + 40]}" for i in range(8)]}
    files = []
    for split, refs in references.items():
        files += [f"--{split}_source_file", write_lines(tmp_path / f"{split}.en", sources),
                  f"--{split}_target_file", write_lines(tmp_path / f"{split}.de", refs)]
    out = tmp_path / "out"
    translation.main([
        "--model_name_or_path", marian, "--train_source_file", write_lines(tmp_path / "train.en", en[:64]),
        "--train_target_file", write_lines(tmp_path / "train.de", de[:64]), *files,
        # Generation runs past the 16 label tokens: Seq2SeqTrainer pads the labels to 20 with the pad id.
        "--max_target_length", "16", "--generation_max_length", "20", "--eval_strategy", "no",
        *fast_args(out, per_device_train_batch_size=16, learning_rate=3e-3),
    ])
    results = json.loads((out / "all_results.json").read_text())
    rows = [line.split("\t") for line in (out / "predictions.txt").read_text(encoding="utf-8").splitlines()[1:]]
    assert [r[1] for r in rows] == references["test"]  # predictions.txt holds the raw references
    hypotheses = [r[2] for r in rows]

    # What the old code scored against: the label ids (cut at 16 tokens) decoded back to text.
    tokenizer = AutoTokenizer.from_pretrained(marian)
    cut = tokenizer(text_target=references["test"], truncation=True, max_length=16)["input_ids"]
    truncated = [t.strip() for t in tokenizer.batch_decode(cut, skip_special_tokens=True)]
    assert all(len(t) < len(r) for t, r in zip(truncated, references["test"]))
    bleu = {split: sacrebleu.corpus_bleu(hypotheses, [refs]).score for split, refs in references.items()}
    chrf = {split: sacrebleu.corpus_chrf(hypotheses, [refs]).score for split, refs in references.items()}
    # The test can tell: chrF (character n-grams) differs between the references even for a tiny model's output,
    # where BLEU may be 0 against both.
    assert abs(sacrebleu.corpus_chrf(hypotheses, [truncated]).score - chrf["test"]) > 0.01

    reported = {key: round(results[key], 6) for key in ("eval_bleu", "eval_chrf", "test_bleu", "test_chrf")}
    expected = {"eval_bleu": bleu["validation"], "eval_chrf": chrf["validation"], "test_bleu": bleu["test"],
                "test_chrf": chrf["test"]}
    assert reported == {key: round(value, 6) for key, value in expected.items()}, \
        "BLEU/chrF must be scored against each split's raw references"


def test_17_10_truncated_text_rows_are_counted(tiny_bert, csv_file, tmp_path, caplog):
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
