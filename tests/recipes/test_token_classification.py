"""Token classification: CoNLL and table readers, BIO checks, tag alignment, entity metrics and the pipeline."""

from __future__ import annotations

import json
import random

import pytest
from conftest import fast_args
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, pipeline

from common.core.errors import RecipeInputError
from common.data.tokens import bio_violations, read_conll
from common.training.tokens import align_tags
from recipes import token_classification

PEOPLE = ["Anna Berg", "Tom Hale", "Maria Lopez", "Kenji Sato", "Olga Petrova", "David Kim", "Lena Fischer"]
CITIES = ["Paris", "Nairobi", "Lima", "Oslo", "Hanoi", "Denver", "Quito"]
FRAMES = ["{p} flew to {c} on Monday .", "We saw {p} in {c} last week .", "{p} lives near {c} .",
          "Yesterday {p} moved from {c} .", "In {c} , {p} opened a bakery ."]


def _sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Synthetic sentences with a person and a city, tagged in BIO."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, city = rng.choice(PEOPLE).split(), rng.choice(CITIES)
        tokens, tags = [], []
        for word in rng.choice(FRAMES).split():
            if word == "{p}":
                tokens += person
                tags += ["B-person"] + ["I-person"] * (len(person) - 1)
            elif word == "{c}":
                tokens.append(city)
                tags.append("B-location")
            else:
                tokens.append(word)
                tags.append("O")
        rows.append((tokens, tags))
    return rows


def _write_conll(path, rows, docstart: bool = False, separator: str = "\t") -> str:
    lines = ["-DOCSTART- -X- O O", ""] if docstart else []
    for tokens, tags in rows:
        lines += [f"{t}{separator}{g}" for t, g in zip(tokens, tags)] + ["\t"]  # a tab-only line ends a sentence too
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_conll_reader_tabs_spaces_docstart_and_tagless_lines(tmp_path):
    rows = _sentences(5, 0)
    data, skipped = read_conll(_write_conll(tmp_path / "a.conll", rows, docstart=True), "--train_file")
    assert data["tokens"] == [r[0] for r in rows] and data["tags"] == [r[1] for r in rows] and skipped == 0
    spaced, _ = read_conll(_write_conll(tmp_path / "b.txt", rows, separator=" POS "), "--train_file")
    assert spaced["tags"] == data["tags"]  # space-separated fields, the tag last (CoNLL-2003's 4 columns too)

    broken = tmp_path / "c.conll"
    broken.write_text("Anna\tB-person\nflew\nhome\tO\n\nTom\tB-person\n")
    with pytest.raises(RecipeInputError, match=r"c.conll: 1 lines hold a token but no tag \(line 2: 'flew'\)"):
        read_conll(str(broken), "--train_file")
    kept, skipped = read_conll(str(broken), "--train_file", skip_bad=True)
    assert kept["tokens"] == [["Tom"]] and skipped == 1
    assert bio_violations([["O", "I-person", "I-person"], ["B-person", "I-location"], ["B-x", "I-x"]]) == 2


def test_subwords_take_their_words_tag_once_or_continued(tmp_path, minilm):
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    label2id = {"O": 0, "B-person": 1, "I-person": 2}
    batch = {"tokens": [["Kenji", "Satoshiwara", "ran"]], "tags": [["B-person", "I-person", "O"]]}
    first = align_tags(batch, tokenizer, label2id, 64, False)
    words = first["word_ids"][0]
    pieces = [w for w in words if w == 1]
    assert len(pieces) > 1  # the long name splits into several sub-words
    labels = first["labels"][0]
    assert [labels[i] for i, w in enumerate(words) if w == 1] == [2] + [-100] * (len(pieces) - 1)
    assert labels[0] == -100 and labels[-1] == -100  # [CLS], [SEP]
    every = align_tags({**batch, "tags": [["O", "B-person", "O"]]}, tokenizer, label2id, 64, True)["labels"][0]
    assert [every[i] for i, w in enumerate(words) if w == 1] == [1] + [2] * (len(pieces) - 1)  # B- continues as I-
    cut = align_tags(batch, tokenizer, label2id, 4, False)
    assert cut["words_cut"] == [1]  # [CLS] + 2 sub-words + [SEP]: the last word is cut, and counted


def test_minilm_learns_entities_and_the_output_groups_them_in_a_pipeline(minilm, tmp_path):
    train, dev = _write_conll(tmp_path / "train.conll", _sentences(240, 1)), _write_conll(tmp_path / "dev.conll",
                                                                                        _sentences(60, 2))
    test = tmp_path / "test.jsonl"  # a table of token and tag lists works the same
    test.write_text("\n".join(json.dumps({"words": t, "ner_tags": g}) for t, g in _sentences(20, 3)) + "\n")
    out = tmp_path / "run"
    results = token_classification.main([
        "--model_name_or_path", minilm, "--train_file", train, "--validation_file", dev, "--test_file", str(test),
        *fast_args(out, num_train_epochs=2, learning_rate=1e-4, per_device_train_batch_size=16)])
    assert results["eval_f1"] > 0.9 and results["eval_f1"] > results["before_f1"] + 0.5
    saved = json.loads((out / "all_results.json").read_text())
    for split in ("eval", "test"):
        assert {f"{split}_person_f1", f"{split}_location_f1", f"{split}_precision", f"{split}_token_accuracy"} <= set(saved)
    assert saved["baseline_description"] == "every token tagged 'O'" and not saved["degenerate"]

    lines = (out / "predictions.conll").read_text().split("\n\n")
    assert len(lines) == 20 and all(len(line.split("\t")) == 3 for line in lines[0].splitlines())
    ner = pipeline("token-classification", model=str(out), aggregation_strategy="simple", device="cpu")
    groups = ner("Yesterday Olga Petrova moved from Hanoi .")
    assert [(g["entity_group"], g["word"]) for g in groups] == [("person", "olga petrova"), ("location", "hanoi")]
    assert "person" in (out / "report.html").read_text()

    # Soft vote per token with a second member whose head is untrained: near-uniform probabilities, which
    # shift no tag the trained member is sure of, and a random member's F1 near zero.
    config = AutoConfig.from_pretrained(out)
    untrained = tmp_path / "untrained"
    AutoModelForTokenClassification.from_pretrained(minilm, num_labels=config.num_labels, id2label=config.id2label,
                                                    label2id=config.label2id).save_pretrained(untrained)
    AutoTokenizer.from_pretrained(out).save_pretrained(untrained)
    both = token_classification.main([
        "--model_name_or_path", minilm, "--train_file", train, "--validation_file", dev, "--test_file", str(test),
        "--ensemble", "soft_vote", "--ensemble_models", str(out), str(untrained), *fast_args(tmp_path / "ensemble")])
    members = json.loads((tmp_path / "ensemble" / "ensemble_results.json").read_text())["eval"]["members"]
    assert members["run"]["f1"] == pytest.approx(results["eval_f1"])  # the member scores as its own run did
    assert members["untrained"]["f1"] < 0.3 and both["ensemble_eval_f1"] > results["eval_f1"] - 0.05
    assert len((tmp_path / "ensemble" / "predictions.conll").read_text().split("\n\n")) == 20


@pytest.mark.parametrize("rows, message", [
    ([{"tokens": ["a", "b"], "tags": "O O"}], "holds str values such as 'O O', not a list of tags"),
    ([{"tokens": ["a", "b"], "tags": ["O"]}], "4 rows have a different number of tokens and tags"),
    ([{"text": "a b", "tags": ["O", "O"]}], "no tokens column"),
])
def test_bad_token_tables_fail_before_training(rows, message, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows * 4) + "\n")
    with pytest.raises(RecipeInputError, match=message):
        token_classification.main(["--train_file", str(data), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_text_augmentation_is_refused_and_unseen_tags_are_named(tmp_path):
    train = _write_conll(tmp_path / "train.conll", [(["Anna"], ["B-person"]), (["ok"], ["O"])])
    dev = _write_conll(tmp_path / "dev.conll", [(["Lima"], ["B-location"])])
    with pytest.raises(RecipeInputError, match="shift them against their tags"):
        token_classification.main(["--train_file", train, "--text_augment", "swap=0.1"])
    with pytest.raises(RecipeInputError, match="hard_vote is for single-label classification; use soft_vote"):
        token_classification.main(["--train_file", train, "--ensemble", "hard_vote", "--ensemble_models", "a", "b"])
    with pytest.raises(RecipeInputError, match="tags that train never uses: B-location"):
        token_classification.main(["--train_file", train, "--validation_file", dev,
                                   "--output_dir", str(tmp_path / "out")])


def test_hub_classlabel_tags_become_their_names(monkeypatch):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=["O", "B-x", "I-x"]))})
    hub = DatasetDict({"train": Dataset.from_dict({"tokens": [["a", "b", "c"]] * 4, "ner_tags": [[0, 1, 2]] * 4},
                                                  features=features)})
    monkeypatch.setattr(token_classification, "load_splits", lambda args: hub)
    splits, _, _ = token_classification.load_sentences(token_classification.TokenDataArguments(dataset_name="hub/x"), None)
    assert splits["train"]["tags"][0] == ["O", "B-x", "I-x"]  # names, not ids cast back by the ClassLabel feature
