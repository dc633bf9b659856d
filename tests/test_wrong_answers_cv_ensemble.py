"""Silent wrong answers in cross-validation and ensembling outputs: each test states the right answer, through the
recipes' own entry points, for a case that used to finish with rc 0 and a wrong result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args
from PIL import Image

from common.core.errors import RecipeInputError
from recipes import image_classification, text_classification

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["neg", "pos"]
WORDS = {"neg": "bad poor awful", "pos": "good fine great"}


def _label(i: int) -> str:
    return "pos" if i % 3 == 0 or i % 5 == 0 else "neg"  # not periodic in 2: a row off by one shows


# --- 17.5 oof_predictions.parquet lines up with the user's train file ------------------------------------------


def test_17_5_oof_predictions_join_back_to_the_train_file(tiny_bert, csv_file, tmp_path):
    from transformers import pipeline

    rows = [{"sentence": f"{WORDS[_label(i)]} film number {i}", "label": _label(i)} for i in range(60)]
    train = csv_file(rows, "train.csv")
    out = tmp_path / "cv"
    # No validation file: 10% of train is held out, then 40 rows are sampled; the folds cover those 40.
    text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", train, "--max_train_samples", "40",
        "--cv_folds", "3", "--eval_strategy", "no", *fast_args(out),
    ])
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    cv = json.loads((out / "cv_results.json").read_text())
    file = pd.read_csv(train, keep_default_na=False)  # data row r of the file is file.iloc[r]

    assert len(oof) == 40 and oof["row"].is_unique and oof["row"].between(0, 59).all()
    joined = file.iloc[oof["row"]]
    assert oof["label"].tolist() == joined["label"].tolist()  # labels, as names, of the rows they claim to be
    assert oof["label_id"].tolist() == [NAMES.index(n) for n in oof["label"]]
    assert set(oof["prediction"]) <= set(NAMES)
    assert (oof["label"] == oof["prediction"]).mean() == pytest.approx(cv["oof"]["accuracy"], abs=1e-9)
    # The texts too: each fold's model, run on the file's text at `row`, gives the scores written for that row.
    for k in range(3):
        held = oof[oof["fold"] == k]
        classify = pipeline("text-classification", model=str(out / f"fold_{k}"), device="cpu")
        texts = file.iloc[held["row"]]["sentence"].tolist()
        scores = [{e["label"]: e["score"] for e in row} for row in classify(texts, top_k=None)]
        expected = np.array([[row[n] for n in NAMES] for row in scores])
        assert np.allclose(held[[f"score_{n}" for n in NAMES]].to_numpy(), expected, atol=1e-5)


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> str:
    from common.models.tiny import tiny_vit

    return tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


def _coloured_images(folder: Path, count: int, blue_every: int, label: str = "label",
                     unreadable: int | None = None) -> Path:
    """A csv of `count` one-colour PNGs (blue every `blue_every`-th row, red otherwise); row `unreadable` is empty."""
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    records = []
    for i in range(count):
        kind = "red" if i % blue_every else "blue"
        path = folder / f"img{i}.png"
        if i == unreadable:
            path.write_bytes(b"")
        else:
            Image.new("RGB", (16, 16), colours[kind]).save(path)
        records.append({"image": path.name, label: kind})
    table = folder / "data.csv"
    pd.DataFrame(records).to_csv(table, index=False)
    return table


def test_17_5_image_oof_rows_are_rows_of_the_csv(vit, tmp_path):
    """The image recipe drops unreadable images after holding out validation: `row` still names the csv's row."""
    train = _coloured_images(tmp_path, 24, blue_every=3, label="kind", unreadable=2)  # skipped: --skip_bad_examples
    records = pd.read_csv(train).to_dict("records")
    out = tmp_path / "cv"
    image_classification.main([
        "--model_name_or_path", vit, "--train_file", str(train), "--label_column", "kind", "--skip_bad_examples",
        "--cv_folds", "2", "--eval_strategy", "no", *fast_args(out),
    ])
    oof = pd.read_parquet(out / "oof_predictions.parquet")
    cv = json.loads((out / "cv_results.json").read_text())
    # 24 rows: 3 held out for validation (rows 13, 14 and 18 with --seed 0), then unreadable row 2 dropped.
    assert len(oof) == 20 and oof["row"].is_unique and not {2, 13, 14, 18} & set(oof["row"])
    assert oof["label"].tolist() == [records[r]["kind"] for r in oof["row"]]
    assert (oof["label"] == oof["prediction"]).mean() == pytest.approx(cv["oof"]["accuracy"], abs=1e-9)


# --- ensemble members must share the recipe's tokenizer / image processor -----------------------------------------


def _other_tokenizer(corpus: list[str]):
    """A WordPiece tokenizer with BERT's special tokens but a vocabulary of its own."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _text_member(base: str, path, seed: int, tokenizer=None) -> str:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model.save_pretrained(path)
    (tokenizer or AutoTokenizer.from_pretrained(base)).save_pretrained(path)
    return str(path)


def test_17_ensemble_refuses_members_with_different_tokenizers(tiny_bert, csv_file, tmp_path):
    rows = [{"sentence": f"{WORDS[_label(i)]} film number {i}", "label": _label(i)} for i in range(24)]
    train, dev = csv_file(rows[:16], "train.csv"), csv_file(rows[16:], "dev.csv")
    a = _text_member(tiny_bert, tmp_path / "member_a", seed=1)
    a2 = _text_member(tiny_bert, tmp_path / "member_a2", seed=2)
    b = _text_member(tiny_bert, tmp_path / "member_b", seed=3,
                     tokenizer=_other_tokenizer([r["sentence"] for r in rows] * 5))

    def ensemble(out, recipe_model: str, *members: str) -> dict:
        return text_classification.main([
            "--model_name_or_path", recipe_model, "--train_file", train, "--validation_file", dev,
            "--do_predict", "false", "--ensemble", "soft_vote", "--ensemble_models", *members, *fast_args(out),
        ])

    refused = tmp_path / "refused"
    with pytest.raises(RecipeInputError, match="different tokenizers") as err:
        ensemble(refused, a, a, b)
    assert a in str(err.value) and b in str(err.value) and "vocabulary" in str(err.value)
    assert not (refused / "ensemble_results.json").exists() and not (refused / "ensemble.json").exists()

    # Members that agree with each other but not with the recipe's tokenizer score misencoded inputs too.
    with pytest.raises(RecipeInputError, match="different tokenizer from the recipe's") as err:
        ensemble(tmp_path / "recipe", b, a, a2)
    assert a in str(err.value) and "vocabulary" in str(err.value)

    ok = tmp_path / "ok"  # identical tokenizers: combined as before
    results = ensemble(ok, a, a, a2)
    assert (ok / "ensemble_results.json").is_file() and "ensemble_eval_accuracy" in results


def test_17_ensemble_refuses_members_with_different_image_processors(vit, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data = _coloured_images(tmp_path, 8, blue_every=2)
    members = []
    for name, mean in [("a", None), ("b", [0.485, 0.456, 0.406])]:
        model = AutoModelForImageClassification.from_pretrained(
            vit, num_labels=2, id2label={0: "blue", 1: "red"}, label2id={"blue": 0, "red": 1})
        processor = AutoImageProcessor.from_pretrained(vit, **({"image_mean": mean} if mean else {}))
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
        members.append(str(tmp_path / name))

    out = tmp_path / "refused"
    with pytest.raises(RecipeInputError, match="different image processors") as err:
        image_classification.main([
            "--model_name_or_path", members[0], "--train_file", str(data), "--validation_file", str(data),
            "--do_predict", "false", "--ensemble", "soft_vote", "--ensemble_models", *members, *fast_args(out),
        ])
    assert members[0] in str(err.value) and members[1] in str(err.value) and "image_mean" in str(err.value)
    assert not (out / "ensemble_results.json").exists()
