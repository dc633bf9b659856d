"""Token classification: CoNLL and table readers, BIO checks, tag alignment, entity metrics and the pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import fast_args
from seqeval.metrics import classification_report
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, pipeline

from common.core.errors import RecipeInputError
from common.data.word_tags import bio_violations, read_conll, tag_scheme
from common.training.tagging import encode_windows
from recipes import predict, token_classification

PEOPLE = ["Anna Berg", "Tom Hale", "Maria Lopez", "Kenji Sato", "Olga Petrova", "David Kim", "Lena Fischer"]
CITIES = ["Paris", "Nairobi", "Lima", "Oslo", "Hanoi", "Denver", "Quito"]
FRAMES = ["{p} flew to {c} on Monday .", "We saw {p} in {c} last week .", "{p} lives near {c} .",
          "Yesterday {p} moved from {c} .", "In {c} , {p} opened a bakery ."]


def _sentences(n: int, seed: int, cities: list[str] = CITIES) -> list[tuple[list[str], list[str]]]:
    """Synthetic sentences with a person and a city, tagged in BIO."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, city = rng.choice(PEOPLE).split(), rng.choice(cities)
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
    first = encode_windows(batch, tokenizer, label2id, 64, 16)
    words = first["word_ids"][0][0]
    ids = tokenizer(batch["tokens"], is_split_into_words=True).word_ids(0)
    pieces = [w for w in ids if w == 1]
    assert len(pieces) > 1 and len(first["input_ids"][0]) == 1  # the long name splits; one window holds it all
    labels = first["labels"][0][0]
    assert [labels[i] for i, w in enumerate(ids) if w == 1] == [2] + [-100] * (len(pieces) - 1)
    assert labels[0] == -100 and labels[-1] == -100  # [CLS], [SEP]
    assert [w for w in words if w >= 0] == [0, 1, 2] and first["word_labels"][0] == [1, 2, 0]
    every = encode_windows({**batch, "tags": [["O", "B-person", "O"]]}, tokenizer, label2id, 64, 16, True)
    assert [every["labels"][0][0][i] for i, w in enumerate(ids) if w == 1] == [1] + [2] * (len(pieces) - 1)
    assert every["word_labels"][0] == [0, 1, 0]  # scored: one tag per word, whatever trains


def test_each_word_is_scored_once_where_its_window_gives_it_most_context(minilm):
    """Windows of 4 sub-words sharing 2: each word is scored in exactly one window, the one where it is furthest
    from a cut edge (a sentence's own start and end cut nothing), and every window trains on all its words."""
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    tokens = list("abcdefghij")  # one sub-word each
    encoded = encode_windows({"tokens": [tokens], "tags": [["O"] * 10]}, tokenizer, {"O": 0}, 6, 2)
    scored = [[w for w in window if w >= 0] for window in encoded["word_ids"][0]]
    assert scored == [[0, 1, 2], [3, 4], [5, 6], [7, 8, 9]] and encoded["windows"] == [4]
    assert [sum(label == 0 for label in window) for window in encoded["labels"][0]] == [4, 4, 4, 4]
    assert encoded["uncovered_words"] == [0]


@pytest.mark.parametrize("tags, scheme", [
    ([["B-PER", "I-PER", "O", "B-LOC"]], "IOB2"),
    ([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]], "IOB1"),  # I- starts entities; B- only splits two PERs
    ([["B-PER", "E-PER", "O", "S-LOC"]], "IOBES"),
    ([["PER", "PER", "O", "ORG"]], "IO"),
])
def test_tag_schemes_are_read_from_the_tags(tags, scheme):
    """The tagging scheme is detected from the tags themselves."""
    assert tag_scheme(tags) == scheme


@pytest.mark.slow
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
    predict(str(tmp_path / "ensemble"), str(test), str(tmp_path / "ensembled.conll"))  # the saved ensemble predicts
    assert [[f[1] for f in s] for s in _sentences_of(tmp_path / "ensembled.conll")] == [
        [f[2] for f in s] for s in _sentences_of(tmp_path / "ensemble" / "predictions.conll")]


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


# ------------------------------------------------------------------------- scoring is per word of the gold file

AVERAGES = ("micro avg", "macro avg", "weighted avg")
LONG_CITIES = ["Vrellingsburg", "Okkotavia", "Zumbrinqua", "Quexlinburg", "Dravonmoor"]  # several sub-words each


def _sentences_of(path) -> list[list[list[str]]]:
    """The sentences of a tab-separated CoNLL file, each a list of its lines' fields."""
    sentences, current = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.split("\t"))
        elif current:
            sentences, current = [*sentences, current], []
    return sentences + ([current] if current else [])


def _joined(rows, k: int) -> list[tuple[list[str], list[str]]]:
    """Every k sentences joined into one long sentence."""
    return [(sum((r[0] for r in rows[i:i + k]), []), sum((r[1] for r in rows[i:i + k]), []))
            for i in range(0, len(rows), k)]


def _assert_scores_match_file(out, gold: list[tuple[list[str], list[str]]], io: bool = False) -> dict:
    """The run's test precision, recall, F1 and per-type scores equal seqeval's on the tags predictions.conll
    holds for every word of the gold sentences (IO tags read as I-<type>); returns all_results.json."""
    written = _sentences_of(out / "predictions.conll")
    assert [[f[0] for f in s] for s in written] == [tokens for tokens, _ in gold]
    true, predicted = [tags for _, tags in gold], [[f[2] for f in s] for s in written]
    if io:
        true, predicted = ([[t if t == "O" else f"I-{t}" for t in s] for s in tags] for tags in (true, predicted))
    report = classification_report(true, predicted, output_dict=True, zero_division=0)
    saved = json.loads((out / "all_results.json").read_text())
    reported = {k: saved[f"test_{k}"] for k in ("f1", "precision", "recall")}
    assert reported == pytest.approx({"f1": report["micro avg"]["f1-score"], "precision": report["micro avg"]["precision"],
                                      "recall": report["micro avg"]["recall"]}, abs=1e-6)
    types = {k for k in report if k not in AVERAGES}
    assert {k[len("test_"):-len("_support")] for k in saved if k.startswith("test_") and k.endswith("_support")} == types
    for entity in types:
        assert saved[f"test_{entity}_support"] == report[entity]["support"]
        assert saved[f"test_{entity}_f1"] == pytest.approx(report[entity]["f1-score"], abs=1e-6)
    return saved


@pytest.fixture(scope="module")
def windowed_run(tiny_bert, tmp_path_factory):
    """A tiny BERT trained a step with a 16-sub-word window, tested on sentences three to four times longer."""
    tmp = tmp_path_factory.mktemp("windowed")
    train = _write_conll(tmp / "train.conll", _sentences(16, 1))
    gold = _joined(_sentences(12, 3), 4)
    test = _write_conll(tmp / "test.conll", gold)
    out = tmp / "run"
    token_classification.main(["--model_name_or_path", tiny_bert, "--train_file", train, "--test_file", test,
                               "--max_seq_length", "16", *fast_args(out, per_device_train_batch_size=16)])
    return out, test, gold


def test_words_past_max_seq_length_are_predicted_in_windows_and_scored(windowed_run):
    """A sentence longer than --max_seq_length is split into overlapping windows: every word gets a prediction,
    and the reported scores are seqeval's over every word of predictions.conll against the gold file."""
    out, _, gold = windowed_run
    saved = _assert_scores_match_file(out, gold)
    assert saved["windowed_sentences_test"] == 3 and saved["uncovered_word_share_test"] == 0.0


def test_label_all_tokens_changes_training_not_the_scored_entities(tiny_bert, tmp_path):
    """With --label_all_tokens a city of several sub-words (B-location, no I-location in the data) trains on
    every sub-word, but is still one gold entity: scoring takes one tag per word, from its first sub-word."""
    rows = _sentences(24, 4, LONG_CITIES)
    train, test = _write_conll(tmp_path / "train.conll", rows[:16]), _write_conll(tmp_path / "test.conll", rows[16:])
    out = tmp_path / "run"
    token_classification.main(["--model_name_or_path", tiny_bert, "--train_file", train, "--test_file", test,
                               "--label_all_tokens", "true", *fast_args(out)])
    saved = _assert_scores_match_file(out, rows[16:])
    assert saved["test_location_support"] == 8


def test_io_tags_are_scored_as_their_types(tiny_bert, tmp_path):
    """IO tags (PER, ORG without a prefix) are detected as the IO scheme: ORG stays an entity type (not O + RG)
    and the per-type keys are the types; the scheme is recorded for re-scoring."""
    io = {"O": "O", "B-person": "PER", "I-person": "PER", "B-location": "ORG"}
    rows = [(tokens, [io[t] for t in tags]) for tokens, tags in _sentences(24, 5)]
    train, test = _write_conll(tmp_path / "train.conll", rows[:16]), _write_conll(tmp_path / "test.conll", rows[16:])
    out = tmp_path / "run"
    token_classification.main(["--model_name_or_path", tiny_bert, "--train_file", train, "--test_file", test,
                               *fast_args(out)])
    saved = _assert_scores_match_file(out, rows[16:], io=True)
    assert saved["tag_scheme"] == "IO"


@pytest.mark.parametrize("tags, extra, message", [
    (["B-PER", "I-PER", "ORG"], [], r"fit no tag scheme: B-PER, I-PER, ORG"),
    (["B-PER", "I-PER", "O"], ["--tag_scheme", "IO"], r"--tag_scheme IO.*B-PER, I-PER"),
])
def test_tags_that_fit_no_scheme_fail_naming_them(tags, extra, message, tmp_path):
    """A tag set that fits no tagging scheme (or not the one --tag_scheme names) fails before training, listing
    the tags."""
    train = _write_conll(tmp_path / "train.conll", [(["Anna", "Berg", "Acme"], tags)] * 4)
    with pytest.raises(RecipeInputError, match=message):
        token_classification.main(["--train_file", train, *extra, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_integer_tags_need_their_names(tiny_bert, tmp_path):
    """Integer tag ids are never scored as the names '0', '1', ...: without --tag_names or --tag_names_file the
    run fails naming both; with them the ids become their names."""
    names = ["O", "B-person", "I-person", "B-location"]
    rows = _sentences(24, 6)
    for split, part in (("train", rows[:16]), ("test", rows[16:])):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(
            json.dumps({"tokens": tokens, "ner_tags": [names.index(t) for t in tags]}) for tokens, tags in part))
    data = ["--train_file", str(tmp_path / "train.jsonl"), "--test_file", str(tmp_path / "test.jsonl")]
    out = tmp_path / "run"
    with pytest.raises(RecipeInputError, match=r"integer tag ids.*--tag_names.*--tag_names_file"):
        token_classification.main(["--model_name_or_path", tiny_bert, *data, *fast_args(out)])
    assert not out.exists()
    (tmp_path / "tags.txt").write_text("\n".join(names) + "\n")
    token_classification.main(["--model_name_or_path", tiny_bert, *data, "--tag_names_file",
                               str(tmp_path / "tags.txt"), *fast_args(out)])
    _assert_scores_match_file(out, rows[16:])


def test_predict_reads_sentences_and_reproduces_the_runs_predictions(windowed_run, tmp_path):
    """`finetune-recipes predict` on a token classification run reads CoNLL, a table of token lists or a text
    column split on whitespace, windows them as the run did, and writes the tags of the run's predictions.conll."""
    out, test, gold = windowed_run
    expected = [[(f[0], f[2]) for f in s] for s in _sentences_of(out / "predictions.conll")]
    table, texts = tmp_path / "sentences.jsonl", tmp_path / "texts.csv"
    table.write_text("\n".join(json.dumps({"words": tokens}) for tokens, _ in gold) + "\n")
    texts.write_text("id,text\n" + "".join(f'{i},"{" ".join(tokens)}"\n' for i, (tokens, _) in enumerate(gold)))
    for source in (test, table, texts):
        written = tmp_path / f"{Path(source).stem}.conll"
        assert predict(str(out), str(source), str(written)) == len(gold)
        assert [[tuple(f) for f in s] for s in _sentences_of(written)] == expected


def test_cv_groups_hold_the_document_of_every_train_sentence_left_after_the_hold_out(tiny_bert, tmp_path, monkeypatch):
    """--cv_group_column document: the validation hold-out takes whole documents, and Task.groups (the folds'
    groups) names the document of each train sentence the run keeps, so no fold splits a document."""
    rows = [{"tokens": tokens, "ner_tags": tags, "document": f"doc{i // 3}"}
            for i, (tokens, tags) in enumerate(_sentences(30, 4))]  # 10 documents of 3 sentences
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    captured = {}
    monkeypatch.setattr(token_classification, "finetune", lambda task, *args: captured.update(task=task) or {})
    token_classification.main(["--model_name_or_path", tiny_bert, "--train_file", str(train), "--validation_split",
                               "0.2", "--cv_group_column", "document", *fast_args(tmp_path / "out")])
    task = captured["task"]
    assert len(task.groups) == len(task.train_dataset) == 24  # 8 whole documents stay in train
    assert sorted(set(task.groups)) == sorted(task.groups)[::3] and all(task.groups.count(g) == 3 for g in task.groups)
