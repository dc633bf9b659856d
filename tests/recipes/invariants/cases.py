"""One invariant case per recipe of `recipes.RECIPES`: the small data it trains on (written here, never read from
outside the repository), its flags, and how to re-score what the run writes with the field's reference
implementation (sklearn, seqeval, sacrebleu, jiwer) against the gold data written here.

A case knows its task, nothing about the run's code: gold labels come from the files it wrote, and each
re-scorer reads only the run's predictions (test split) or errors.csv (validation split, every row while the
split is smaller than --error_examples).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pandas as pd
import sacrebleu
import soundfile
from PIL import Image
from seqeval.metrics import accuracy_score, classification_report
from sklearn import metrics as skm

from common.models import tiny

RATE = 16000  # Hz, the rate of the tiny audio models' feature extractors


class Models:
    """Tiny random models shared by the cases, each built on first use."""

    def __init__(self, root: Path):
        self.root = root

    @cached_property
    def bert(self) -> str:
        return tiny.tiny_bert(self.root / "bert")

    @cached_property
    def vit(self) -> str:
        return tiny.tiny_vit(self.root / "vit")

    @cached_property
    def wav2vec2(self) -> str:
        return tiny.tiny_wav2vec2_ctc(self.root / "wav2vec2")


@dataclass
class Case:
    """A recipe's data, flags and re-scorer, as the invariant tests use them."""

    args: list[str]  # the data and model flags
    rows: dict[str, int]  # rows each split's files hold, bad ones included: the rows a run reads
    train_rows: int  # rows of train a run keeps (bad ones skipped)
    batch_size: int
    predictions: str  # the file a run writes for its test split (and predict writes for the same input)
    predict_input: str  # the run's test input, as `finetune-recipes predict --input` takes it
    # (file, the split's gold) -> each metric recomputed from a predictions file or errors.csv, without its prefix
    rescore: Callable[[Path, Any], dict[str, float]]
    gold: dict[str, Any]  # per split: what the re-scorer compares the predictions with
    # (the run's predictions, predict's, tolerance=score tolerance) -> asserts they agree; files without scores
    # compare their labels or texts exactly
    same_predictions: Callable[..., None]
    validation_predictions: bool = True  # errors.csv lists every validation row
    # Metrics that no written file holds: the loss of a generated or per-token output, the generated length in tokens.
    not_rescored: tuple[str, ...] = ()
    learning_rate: float = 1e-3
    exportable: bool = True  # `finetune-recipes export` covers its model (else it refuses, exit 2)
    single_label: bool = False  # one class per row: label issues are found (else refused before training)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.train_rows / self.batch_size)


def read_table(path: Path) -> pd.DataFrame:
    """A predictions, errors or data table as text: empty fields stay '' (an empty transcript is not NaN)."""
    # predictions.txt (translations) is written unquoted, the other tables by pandas.
    return pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",", keep_default_na=False, dtype=str,
                       quoting=csv.QUOTE_NONE if path.suffix == ".txt" else csv.QUOTE_MINIMAL)


PATH_COLUMNS = ("image", "audio_file")  # inputs that are files: matched by their real path


def _keys(table: pd.DataFrame, column: str) -> list[str]:
    """Each row's input, by which it is matched with its gold data or another file's row: the text, or the real
    path of an image or clip."""
    return [os.path.realpath(v) for v in table[column]] if column in PATH_COLUMNS else table[column].tolist()


def _by_input(path: Path, column: str) -> pd.DataFrame:
    """A predictions file's rows, indexed by their input."""
    table = read_table(path)
    return table.set_index(pd.Index(_keys(table, column)))


def _gold(table: pd.DataFrame, gold: dict[str, str], column: str) -> list[str]:
    keys = _keys(table, column)
    missing = [k for k in keys if k not in gold]
    assert not missing, f"rows that no gold data holds: {missing[:3]}"
    return [gold[k] for k in keys]


# ---------------------------------------------------------------------------------------------- classification


def classification_scores(key: str) -> Callable[[Path, dict[str, str]], dict[str, float]]:
    """sklearn's metrics of a predictions.csv (prediction, score_<class>) or an errors.csv (predicted_label, loss),
    against gold labels by input (`key`)."""

    def rescore(path: Path, gold: dict[str, str]) -> dict[str, float]:
        table = read_table(path)
        true = _gold(table, gold, key)
        if "predicted_label" in table:  # errors.csv: the validation rows with their loss
            predicted, loss = table["predicted_label"].tolist(), table["loss"].astype(float).mean()
        else:
            predicted = table["prediction"].tolist()
            loss = -np.mean([math.log(float(table.at[i, f"score_{label}"])) for i, label in enumerate(true)])
        result = {"accuracy": skm.accuracy_score(true, predicted), "mcc": skm.matthews_corrcoef(true, predicted),
                  "loss": loss}
        for average in ("macro", "micro"):
            p, r, f, _ = skm.precision_recall_fscore_support(true, predicted, average=average, zero_division=0)
            result.update({f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f})
        return result

    return rescore


def same_classifications(key: str) -> Callable[[Path, Path], None]:
    """The same label for every input, and every class score to `tolerance` (1e-5 unless given)."""

    def check(run: Path, predicted: Path, tolerance: float = 1e-5) -> None:
        a, b = _by_input(run, key), _by_input(predicted, key)
        assert sorted(a.index) == sorted(b.index), "predict read other inputs than the run's test split"
        b = b.loc[a.index]
        differ = a.index[a["prediction"] != b["prediction"]].tolist()
        assert not differ, f"{len(differ)} of {len(a)} labels differ from the run's, e.g. {differ[:3]}"
        scores = [c for c in a.columns if c.startswith("score")]
        assert scores and list(b.columns[b.columns.str.startswith("score")]) == scores
        gap = np.abs(a[scores].astype(float).to_numpy() - b[scores].astype(float).to_numpy()).max()
        assert gap <= tolerance, f"scores differ from the run's by up to {gap:.2g}"

    return check


def _words(rng: random.Random, signal: list[str], filler: list[str]) -> str:
    """A text of 2 to 12 words, at least one of them from `signal`: the class is learnable, the lengths vary."""
    words = [rng.choice(signal)] + [rng.choice(filler + signal) for _ in range(rng.randint(1, 11))]
    rng.shuffle(words)
    return " ".join(words)


FILLER = ["the", "a", "today", "really", "very", "we", "saw", "it", "was", "and", "then", "again"]


def _text_splits(root: Path, classes: dict[str, list[str]], sizes: dict[str, int], label: Callable[[str], object]
                 ) -> dict[str, dict[str, str]]:
    """train/validation/test csv files (text, label) of distinct texts, balanced over `classes`, plus a train row
    with an empty text (skipped and counted). Returns each split's gold: text -> class name."""
    rng, gold = random.Random(0), {}
    for split, size in sizes.items():
        rows, gold[split] = [], {}
        while len(rows) < size:
            name = list(classes)[len(rows) % len(classes)]
            text = _words(rng, classes[name], FILLER)
            if not any(text in g for g in gold.values()):
                gold[split][text] = name
                rows.append({"text": text, "label": label(name)})
        if split == "train":
            rows.insert(5, {"text": " ", "label": rows[0]["label"]})
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return gold


def _text_case(root: Path, bert: str, classes: dict[str, list[str]], label: Callable[[str], object],
               sizes: dict[str, int], flags: Sequence[str] = ()) -> Case:
    gold = _text_splits(root, classes, sizes, label)
    return Case(
        args=["--model_name_or_path", bert, *flags,
              *(f for s in sizes for f in (f"--{s}_file", str(root / f"{s}.csv")))],
        rows={**sizes, "train": sizes["train"] + 1}, train_rows=sizes["train"], batch_size=4,
        predictions="predictions.csv", predict_input=str(root / "test.csv"),
        rescore=classification_scores("text"), gold=gold,
        same_predictions=same_classifications("text"), single_label=True,
    )


def text_classification(root: Path, models: Models) -> Case:
    classes = {"sports": ["goal", "match", "team", "coach"], "weather": ["rain", "sunny", "storm", "wind"],
               "food": ["pizza", "bread", "soup", "cheese"]}
    # Texts of up to 14 tokens against a limit of 10: some are cut, in the run and in predict alike.
    return _text_case(root, models.bert, classes, str, {"train": 120, "validation": 9, "test": 12},
                      ["--max_seq_length", "10"])


def sentiment(root: Path, models: Models) -> Case:
    # Integer labels: the recipe names 0/1 negative/positive, and predictions.csv holds those names.
    classes = {"negative": ["awful", "hate", "terrible", "broken"],
               "positive": ["great", "love", "excellent", "happy"]}
    return _text_case(root, models.bert, classes, ["negative", "positive"].index,
                      {"train": 80, "validation": 6, "test": 10})


def image_classification(root: Path, models: Models) -> Case:
    colours = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}
    sizes = {"train": 6, "validation": 2, "test": 3}
    rng, gold = np.random.default_rng(0), {}
    for split, per_class in sizes.items():
        gold[split] = {}
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                gold[split][os.path.realpath(folder / f"{i}.png")] = name
    (root / "train" / "red" / "broken.png").write_bytes(b"not an image")  # skipped and counted
    return Case(
        args=["--model_name_or_path", models.vit,
              *(f for s in sizes for f in (f"--{s}_dir", str(root / s)))],
        rows={s: n * len(colours) for s, n in sizes.items()} | {"train": sizes["train"] * len(colours) + 1},
        train_rows=sizes["train"] * len(colours), batch_size=6,
        predictions="predictions.csv", predict_input=str(root / "test"),
        rescore=classification_scores("image"), gold=gold,
        same_predictions=same_classifications("image"), single_label=True,
    )


# ---------------------------------------------------------------------------------------------- audio


def _tone(path: Path, hertz: float, seconds: float, rng: np.random.Generator) -> None:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = 0.5 * np.sin(2 * np.pi * hertz * t) + rng.normal(0, 0.02, t.size)
    soundfile.write(path, wave.astype(np.float32), RATE)


def _clips(root: Path, sizes: dict[str, int], value: Callable[[int], tuple[float, str]], column: str,
           bad: list[dict]) -> dict[str, dict[str, str]]:
    """A manifest per split (audio, `column`) of short tones with relative paths; `bad` rows go into train.
    Returns each split's gold: real path -> value."""
    rng, gold = np.random.default_rng(0), {}
    for split, size in sizes.items():
        rows = []
        for i in range(size):
            hertz, target = value(i)
            file = root / f"{split}_{i}.wav"
            _tone(file, hertz * rng.uniform(0.9, 1.1), rng.uniform(0.3, 0.5), rng)
            rows.append({"audio": file.name, column: target})
        gold[split] = {os.path.realpath(root / r["audio"]): r[column] for r in rows}
        if split == "train":
            rows[3:3] = bad
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return gold


def _manifests(root: Path, sizes: dict[str, int]) -> list[str]:
    return [f for s in sizes for f in (f"--{s}_file", str(root / f"{s}.csv"))]


def audio_classification(root: Path, models: Models) -> Case:
    sizes = {"train": 16, "validation": 4, "test": 6}
    _tone(root / "unlabelled.wav", 440, 0.4, np.random.default_rng(1))
    # Two bad rows of two kinds, both skipped and counted: an empty label, and a clip that is not there.
    gold = _clips(root, sizes, lambda i: ((300, "low"), (1800, "high"))[i % 2], "label",
                  [{"audio": "unlabelled.wav", "label": ""}, {"audio": "missing.wav", "label": "low"}])
    return Case(
        args=["--model_name_or_path", models.wav2vec2, *_manifests(root, sizes)],
        rows={**sizes, "train": sizes["train"] + 2}, train_rows=sizes["train"], batch_size=4,
        predictions="predictions.csv", predict_input=str(root / "test.csv"),
        rescore=classification_scores("audio_file"), gold=gold,
        same_predictions=same_classifications("audio_file"), single_label=True,
    )


# The recipe's normalised error rates, in jiwer's terms: lowercase, drop --chars_to_ignore (its default, as the
# README gives it), whitespace collapsed; then jiwer's own word or character split.
NORMALIZE = [jiwer.ToLowerCase(), jiwer.SubstituteRegexes({r"[^\w\s']": ""}),
             jiwer.RemoveWhiteSpace(replace_by_space=True), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
NORMALIZED = {"wer": jiwer.Compose([*NORMALIZE, jiwer.ReduceToListOfListOfWords()]),
              "cer": jiwer.Compose([*NORMALIZE, jiwer.ReduceToListOfListOfChars()])}


def speech_scores(path: Path, gold: dict[str, str]) -> dict[str, float]:
    """jiwer's corpus WER and CER of a predictions.tsv or errors.csv (audio_file, hypothesis), normalised and raw."""
    table = read_table(path)
    references, hypotheses = _gold(table, gold, "audio_file"), table["hypothesis"].tolist()
    return {"wer": jiwer.wer(references, hypotheses, NORMALIZED["wer"], NORMALIZED["wer"]),
            "cer": jiwer.cer(references, hypotheses, NORMALIZED["cer"], NORMALIZED["cer"]),
            "wer_raw": jiwer.wer(references, hypotheses), "cer_raw": jiwer.cer(references, hypotheses)}


def same_texts(key: str, text: str) -> Callable[[Path, Path], None]:
    """The same generated text (translation, transcript) for every input."""

    def check(run: Path, predicted: Path, tolerance: float = 0.0) -> None:  # texts: no scores
        a, b = (_by_input(p, key)[text].to_dict() for p in (run, predicted))
        assert sorted(a) == sorted(b), "predict read other inputs than the run's test split"
        differ = [k for k in a if a[k] != b[k]]
        assert not differ, (f"{len(differ)} of {len(a)} outputs differ from the run's, e.g. {differ[0]!r}: "
                            f"{a[differ[0]]!r} against {b[differ[0]]!r}" if differ else "")

    return check


def speech_recognition(root: Path, models: Models) -> Case:
    sizes = {"train": 16, "validation": 4, "test": 6}
    words = ["Yes", "No", "Up", "Down"]
    _tone(root / "silent.wav", 440, 0.4, np.random.default_rng(1))
    gold = _clips(root, sizes, lambda i: (200 + 150 * (i % 4), f"{words[i % 4]} {words[(i // 4) % 4]}"), "text",
                  [{"audio": "silent.wav", "text": ""}])  # an empty transcript: skipped and counted
    # Whisper rather than CTC: a few steps leave a CTC head emitting blanks only (every WER 1.0, nothing to check),
    # where a random decoder writes text of every length. A 1 s window keeps the encoder small.
    whisper = tiny.tiny_whisper(root / "whisper", [" ".join(words)] * 4, chunk_length=1)
    return Case(
        args=["--model_name_or_path", whisper, "--language", "en", *_manifests(root, sizes)],
        rows={**sizes, "train": sizes["train"] + 1}, train_rows=sizes["train"], batch_size=4,
        predictions="predictions.tsv", predict_input=str(root / "test.csv"),
        rescore=speech_scores, gold=gold,
        same_predictions=same_texts("audio_file", "hypothesis"), not_rescored=("loss",), learning_rate=3e-3,
        exportable=False,  # an encoder-decoder over audio features: export refuses it
    )


# ---------------------------------------------------------------------------------------------- text to text


# A toy language: each English word has one translation, so the pairs are learnable and any tokenizer sees
# the same words in train, validation and test.
LEXICON = {"the": "der", "cat": "katze", "dog": "hund", "sees": "sieht", "eats": "isst", "big": "gross",
           "small": "klein", "red": "rot", "house": "haus", "fish": "fisch", "and": "und", "runs": "rennt",
           "home": "heim", "bird": "vogel", "sings": "singt", "now": "jetzt"}


def translation_scores(path: Path, gold: dict[str, str]) -> dict[str, float]:
    """sacrebleu's corpus BLEU and chrF of a predictions.txt or errors.csv (source, hypothesis)."""
    table = read_table(path)
    references, hypotheses = _gold(table, gold, "source"), table["hypothesis"].tolist()
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}


def translation(root: Path, models: Models) -> Case:
    sizes = {"train": 240, "validation": 6, "test": 6}
    rng, seen, gold = random.Random(0), set(), {}
    english = list(LEXICON)
    for split, size in sizes.items():
        pairs = []
        while len(pairs) < size:
            source = " ".join(rng.choice(english) for _ in range(rng.randint(1, 4)))
            if source not in seen:
                seen.add(source)
                pairs.append((source, " ".join(LEXICON[w] for w in source.split())))
        gold[split] = dict(pairs)
        if split == "train":
            pairs.insert(4, ("the cat sings", ""))  # a pair without its translation: skipped and counted
        for side, column in (("source", 0), ("target", 1)):
            (root / f"{split}.{side}").write_text("".join(p[column] + "\n" for p in pairs), encoding="utf-8")
    marian = tiny.tiny_marian(root / "marian", [*LEXICON, *LEXICON.values()], vocab_size=200)
    return Case(
        # Sources of up to 5 tokens against a limit of 4: some are cut, in the run and in predict alike.
        args=["--model_name_or_path", marian, "--max_source_length", "4", "--max_target_length", "16",
              *(f for s in sizes for side in ("source", "target")
                for f in (f"--{s}_{side}_file", str(root / f"{s}.{side}")))],
        rows={**sizes, "train": sizes["train"] + 1}, train_rows=sizes["train"], batch_size=4,
        predictions="predictions.txt", predict_input=str(root / "test.source"),
        rescore=translation_scores, gold=gold,
        same_predictions=same_texts("source", "hypothesis"), not_rescored=("loss", "gen_len"), learning_rate=3e-3,
    )


def _conll(path: Path) -> list[list[list[str]]]:
    """Sentences of a CoNLL file, each a list of its lines' fields."""
    blocks = path.read_text(encoding="utf-8").strip("\n").split("\n\n")
    return [[line.split("\t") for line in block.split("\n")] for block in blocks if block.strip()]


def entity_scores(path: Path, gold_file: Path) -> dict[str, float]:
    """seqeval's entity metrics of a predictions.conll against the gold CoNLL file, in its default (conlleval)
    mode, the one the recipe documents; IO tags (a type with no prefix) are read as I-<type>."""
    gold, written = _conll(gold_file), _conll(path)
    assert [[w[0] for w in s] for s in written] == [[w[0] for w in s] for s in gold], "not the gold file's words"
    true, predicted = [[w[-1] for w in s] for s in gold], [[w[-1] for w in s] for s in written]
    if not any(tag[:2] in ("B-", "I-", "E-", "S-") for sentence in true for tag in sentence):
        true, predicted = ([[tag if tag == "O" else f"I-{tag}" for tag in s] for s in tags] for tags in (true, predicted))
    report = classification_report(true, predicted, output_dict=True, zero_division=0)
    overall = report["micro avg"]
    result = {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1-score"],
              "token_accuracy": accuracy_score(true, predicted)}
    for entity, scores in report.items():
        if not entity.endswith(" avg"):
            result.update({f"{entity}_precision": scores["precision"], f"{entity}_recall": scores["recall"],
                           f"{entity}_f1": scores["f1-score"], f"{entity}_support": scores["support"]})
    return result


def same_tags(run: Path, predicted: Path, tolerance: float = 0.0) -> None:  # tags: no scores
    """The same words, each with the same predicted tag (the last field of a CoNLL line)."""
    a, b = _conll(run), _conll(predicted)
    assert [[w[0] for w in s] for s in a] == [[w[0] for w in s] for s in b], "predict read other sentences"
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if [w[-1] for w in x] != [w[-1] for w in y]]
    assert not differ, f"{len(differ)} of {len(a)} sentences are tagged differently, e.g. sentence {differ[0] + 1}"


def token_classification(root: Path, models: Models) -> Case:
    names = [["Alice"], ["Bob"], ["Mary", "Ann"], ["Carol"]]
    places = [["Paris"], ["Berlin"], ["New", "York"], ["Rome"]]
    verbs = ["met", "visited", "called", "left", "saw"]
    sizes = {"train": 20, "validation": 6, "test": 6}
    rng = random.Random(0)

    def entity(words: list[str], kind: str) -> list[str]:
        return [f"{w}\t{'B' if i == 0 else 'I'}-{kind}" for i, w in enumerate(words)]

    for split, size in sizes.items():
        sentences = []
        for i in range(size):
            # The first sentence of each split is longer than --max_seq_length 12 (sub-words): its place comes last.
            fillers = FILLER if i == 0 else rng.sample(FILLER, rng.randint(0, 3))
            lines = entity(rng.choice(names), "PER") + [f"{rng.choice(verbs)}\tO"]
            lines += [f"{w}\tO" for w in fillers] + entity(rng.choice(places), "LOC")
            sentences.append("\n".join(lines))
        if split == "train":
            sentences.insert(2, "Dave\tB-PER\nwaved\n")  # a line without its tag: the sentence is skipped, counted
        (root / f"{split}.conll").write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    return Case(
        args=["--model_name_or_path", models.bert, "--max_seq_length", "12",
              *(f for s in sizes for f in (f"--{s}_file", str(root / f"{s}.conll")))],
        rows={**sizes, "train": sizes["train"] + 1}, train_rows=sizes["train"], batch_size=4,
        predictions="predictions.conll", predict_input=str(root / "test.conll"),
        rescore=entity_scores, gold={s: root / f"{s}.conll" for s in sizes},
        same_predictions=same_tags, validation_predictions=False, not_rescored=("loss",), learning_rate=3e-3,
    )


# ---------------------------------------------------------------------------------------------- question answering


def _squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no ASCII punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _squad_f1(prediction: str, truth: str) -> float:
    predicted, true = _squad_normalize(prediction).split(), _squad_normalize(truth).split()
    same = sum((Counter(predicted) & Counter(true)).values())
    return 0.0 if same == 0 else 2 * same / (len(predicted) + len(true))


def answer_scores(path: Path, gold: dict[str, list[str]]) -> dict[str, float]:
    """The official SQuAD v1.1 evaluation (as evaluate's squad metric computes it: per question the best exact
    match and F1 over its references, in percent) of a predictions.json (id -> answer) or an errors.csv (id,
    prediction), against the references by id."""
    if path.suffix == ".json":
        predicted = json.loads(path.read_text(encoding="utf-8"))
    else:
        table = read_table(path)
        predicted = dict(zip(table["id"], table["prediction"]))
    assert sorted(predicted) == sorted(gold), "predictions for other questions than the split's"
    exact = [max(float(_squad_normalize(predicted[k]) == _squad_normalize(t)) for t in gold[k]) for k in gold]
    f1 = [max(_squad_f1(predicted[k], t) for t in gold[k]) for k in gold]
    return {"exact_match": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1))}


def same_answers(run: Path, predicted: Path, tolerance: float = 0.0) -> None:  # answers: no scores
    """The same answer to every question (predictions.json: id -> answer)."""
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (run, predicted))
    assert sorted(a) == sorted(b), "predict answered other questions than the run's test split"
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"{len(differ)} of {len(a)} answers differ from the run's, e.g. {a[differ[0]]!r} against " \
                       f"{b[differ[0]]!r}" if differ else ""


def question_answering(root: Path, models: Models) -> Case:
    people, places = ["Alice Moore", "Bob", "Mary Ann", "Carol", "Dan Ito"], ["Paris", "Berlin", "New York", "Rome"]
    days, verbs = ["Monday", "Friday", "Sunday"], [("visited", "visit"), ("left", "leave"), ("saw", "see")]
    sizes = {"train": 24, "validation": 6, "test": 6}
    rng, gold = random.Random(0), {}
    for split, size in sizes.items():
        paragraphs, gold[split] = [], {}
        for i in range(size):
            who, where, day, (verb, base) = rng.choice(people), rng.choice(places), rng.choice(days), rng.choice(verbs)
            # The first context of each split is longer than a window of --max_seq_length 40: it is windowed.
            filler = " ".join(FILLER * 2) + ". " if i == 0 else ""
            context = f"{filler}On {day} {who} {verb} {where}. Then {rng.choice(people)} went home."
            question, answer = rng.choice([(f"Who {verb} {where}?", who), (f"Where did {who} {base}?", where),
                                           (f"When did {who} {base} {where}?", day)])
            key = f"{split}-{i}"
            gold[split][key] = [answer]
            paragraphs.append({"context": context, "qas": [{"id": key, "question": question, "answers": [
                {"text": answer, "answer_start": context.index(f" {answer}") + 1}]}]})
        if split == "train":  # an answer_start off its answer: skipped and counted
            paragraphs.insert(3, {"context": "On Monday Bob saw Rome.", "qas": [
                {"id": "off", "question": "Who saw Rome?", "answers": [{"text": "Bob", "answer_start": 3}]}]})
        document = {"version": "1.1", "data": [{"title": split, "paragraphs": paragraphs}]}
        (root / f"{split}.json").write_text(json.dumps(document), encoding="utf-8")
    return Case(
        args=["--model_name_or_path", models.bert, "--max_seq_length", "40", "--doc_stride", "8",
              "--error_examples", "50", *(f for s in sizes for f in (f"--{s}_file", str(root / f"{s}.json")))],
        rows={**sizes, "train": sizes["train"] + 1}, train_rows=sizes["train"], batch_size=4,
        predictions="predictions.json", predict_input=str(root / "test.json"),
        rescore=answer_scores, gold=gold,
        same_predictions=same_answers, not_rescored=("loss",), learning_rate=3e-3,
    )


# Every recipe of recipes.RECIPES has its case here: (folder to write the data in, models) -> Case.
CASES: dict[str, Callable[[Path, Models], Case]] = {
    "text_classification": text_classification,
    "sentiment": sentiment,
    "image_classification": image_classification,
    "translation": translation,
    "speech_recognition": speech_recognition,
    "audio_classification": audio_classification,
    "token_classification": token_classification,
    "question_answering": question_answering,
}
