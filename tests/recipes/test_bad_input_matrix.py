"""The project's bad-input contract: every recipe against every bad input the project refuses.

For each recipe it lists, a case in CASES must
- fail before training with a RecipeInputError whose message names the file, column, option or value and says
  how to fix it (the case's `expect` fragments), and exit with code 2 and an "error: ..." line when the recipe
  runs as a script (`run_main`, what `python recipes/x.py` does);
- leave the output dir as it was: not created when it did not exist, and byte-identical when it held an earlier
  run's results, even with --overwrite_output_dir (which lets a run write there, but only a run that starts).
Training, evaluation and prediction are replaced by a tripwire, so an input that slips through fails here
instead of training.

PROCEEDS holds the inputs the recipes handle without failing: a warning, or rows dropped and counted
with --skip_bad_examples. Those run up to the point where training would start, and check the report.

Keep this module as the contract: a new check or a new recipe adds its cases here.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import transformers
from conftest import ROOT, fast_args

import recipes
from common import cli
from common.core.errors import RecipeInputError, run_main
from recipes import text_classification

TEXT, SENTIMENT, IMAGE, TRANSLATION, SPEECH, TOKEN, AUDIO, QA = (
    "text_classification",
    "sentiment",
    "image_classification",
    "translation",
    "speech_recognition",
    "token_classification",
    "audio_classification",
    "question_answering",
)
# Every registered recipe, by name: a recipe joins the matrix when it joins the registry.
RECIPES = {name: importlib.import_module(f"recipes.{name}") for name in recipes.RECIPES}
ALL = tuple(RECIPES)
# The token recipe reads tables of token lists from JSON lines or parquet, and any other file as CoNLL: the csv
# reader's cases are not its own.
TABLES = tuple(r for r in ALL if r != TOKEN)
TEXTS = (TEXT, SENTIMENT)
CLASSIFIERS = (TEXT, SENTIMENT, IMAGE, AUDIO)
MODEL = {TEXT: "bert", SENTIMENT: "bert", IMAGE: "vit", TRANSLATION: "marian", SPEECH: "ctc", TOKEN: "bert",
         AUDIO: "ctc", QA: "bert"}

EN = [f"a small sentence {i}" for i in range(10)]
QA_HEADER = "question,context,answer_text,answer_start"
DE = [f"ein kleiner Satz {i}" for i in range(10)]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
EARLIER_RUN = {"all_results.json": b'{"eval_accuracy": 0.9}', "checkpoints/notes.txt": b"an earlier run"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny_bert, test_data, tmp_path_factory) -> dict[str, str]:
    from common.data.parallel import read_lines
    from common.models import tiny as tiny_models

    root = tmp_path_factory.mktemp("models")
    corpus = [
        *read_lines(test_data / "toy_en_de/train.en", "en")[:300],
        *read_lines(test_data / "toy_en_de/train.de", "de")[:300],
    ]
    return {
        "bert": tiny_bert,
        "vit": tiny_models.tiny_vit(root / "vit"),
        "marian": tiny_models.tiny_marian(root / "marian", corpus, vocab_size=300),
        "t5": tiny_models.tiny_t5(root / "t5", corpus, vocab_size=300),
        "nllb": tiny_models.tiny_nllb(root / "nllb", corpus, vocab_size=300),
        "ctc": tiny_models.tiny_wav2vec2_ctc(root / "ctc"),
        "whisper": tiny_models.tiny_whisper(root / "whisper", DIGITS, chunk_length=3),
    }


class TrainingStarted(AssertionError):
    pass


@pytest.fixture(autouse=True)
def tripwire(monkeypatch):
    """Training, evaluation or prediction starting means the bad input went unnoticed."""

    def fail(self, *args, **kwargs):
        raise TrainingStarted("the recipe started training (or evaluating) on bad input")

    for name in ("train", "evaluate", "predict"):
        monkeypatch.setattr(transformers.Trainer, name, fail)


class Data:
    """One test's input files, in its own folder. `vars` holds values a case's expected message quotes."""

    def __init__(self, root: Path, test_data: Path):
        self.root, self.test_data = root, test_data
        root.mkdir(parents=True)
        self.vars: dict[str, object] = {"d": root}

    def path(self, name: str) -> str:
        return str(self.root / name)

    def mkdir(self, name: str) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return str(self.root / name)

    def write(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def lines(self, split: str = "train", en: list[str] = EN, de: list[str] | None = DE) -> list[str]:
        """Line-aligned translation files for one split."""
        args = [f"--{split}_source_file", self.write(f"{split}.en", "".join(f"{s}\n" for s in en))]
        if de is not None:
            args += [f"--{split}_target_file", self.write(f"{split}.de", "".join(f"{s}\n" for s in de))]
        return args

    def photos(self, split: str, name: str, n: int) -> list[Path]:
        return sorted((self.test_data / "clothing_small" / split / name).iterdir())[:n]

    def folders(self, layout: dict[str, dict[str, int]]) -> list[str]:
        """Class folders of links to real clothing photos: {split: {class: count}} -> --{split}_dir flags."""
        args = []
        for split, classes in layout.items():
            for name, n in classes.items():
                folder = self.root / "img" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for photo in self.photos(split, name, n):
                    (folder / photo.name).symlink_to(photo)
            args += [f"--{split}_dir", str(self.root / "img" / split)]
        return args

    def clips(self, n: int) -> list[tuple[Path, str]]:
        """(wav file, transcript) of n real FSDD recordings, spread over digits and speakers."""
        meta = pd.read_csv(self.test_data / "fsdd" / "metadata.csv").iloc[::30][:n]
        return [(self.test_data / "fsdd" / f, t) for f, t in zip(meta["file"], meta["transcript"])]

    def rows(self, recipe: str) -> list[str]:
        """A valid csv table in the recipe's own columns, header first (CoNLL lines for the token recipe)."""
        if recipe == TOKEN:
            return [line for i in range(8) for line in (f"Anna{i}\tB-person", "saw\tO", f"Lima{i}\tB-location", "")]
        if recipe == QA:
            return [QA_HEADER, *(f"who saw item {i},Anna{i} saw item {i} in Lima,Anna{i},0" for i in range(8))]
        if recipe == AUDIO:
            return ["audio,label", *(f"{clip},{text}" for clip, text in self.clips(6))]
        if recipe in TEXTS:
            return ["text,label", *(f"review number {i},{'pos' if i % 2 else 'neg'}" for i in range(20))]
        if recipe == IMAGE:
            photos = [(p, name) for name in ("hat", "shoes") for p in self.photos("train", name, 3)]
            return ["image,label", *(f"{p},{name}" for p, name in photos)]
        if recipe == TRANSLATION:
            return ["en,de", *(f"{e},{d}" for e, d in zip(EN, DE))]
        return ["audio,text", *(f"{clip},{text}" for clip, text in self.clips(6))]

    def table(
        self, recipe: str, content: str | bytes | list[str], name: str = "train.csv", split: str = "train"
    ) -> list[str]:
        """Flags that make `content` (text, bytes or csv lines) the recipe's `split` split (the token recipe
        reads a .csv name as CoNLL, as it reads any file that is not JSON lines or parquet)."""
        if isinstance(content, list):
            content = "".join(f"{line}\n" for line in content)
        return [f"--{split}_file", self.write(name, content), *languages(recipe)]

    def good(self, recipe: str) -> list[str]:
        """Valid data in the recipe's most common shape, for cases where only an option is wrong."""
        if recipe == IMAGE:
            # With a preview asked for, a recipe that writes it before every check has passed shows up here.
            folders = self.folders({"train": {"hat": 3, "shoes": 3}, "validation": {"hat": 1, "shoes": 1}})
            return [*folders, "--save_augment_preview"]
        if recipe == TRANSLATION:
            return self.lines()
        return self.table(recipe, self.rows(recipe))


def languages(recipe: str) -> list[str]:
    """The translation recipe reads a table's text from the columns its languages name."""
    return ["--source_lang", "en", "--target_lang", "de"] if recipe == TRANSLATION else []


@pytest.fixture
def data(test_data, tmp_path) -> Data:
    return Data(tmp_path / "data", test_data)


@dataclass(frozen=True)
class Case:
    recipes: tuple[str, ...]
    args: Callable[[Data, str], list[str]]  # (data, recipe) -> the recipe's flags, model and output dir aside
    # Fragments the message must contain, formatted with Data.vars ({d} is the data folder); a dict gives
    # each recipe its own.
    expect: tuple[str, ...] | dict[str, tuple[str, ...]]
    model: str | None = None  # another tiny model than the recipe's default one
    # The bad input is the output dir itself: an earlier run's results, and no --overwrite_output_dir.
    output_dir_exists: bool = False

    def fragments(self, recipe: str, data: Data) -> list[str]:
        expect = self.expect[recipe] if isinstance(self.expect, dict) else self.expect
        return [fragment.format_map(data.vars) for fragment in expect]


def _per_recipe(**args: Callable[[Data], list[str]]) -> Callable[[Data, str], list[str]]:
    return lambda d, recipe: args[recipe](d)


def _with_good(*flags: str) -> Callable[[Data, str], list[str]]:
    """Valid data plus `flags`: only the option is wrong."""
    return lambda d, recipe: [*d.good(recipe), *flags]


def _text_folder_with_empty_class(d: Data) -> list[str]:
    d.write("texts/train/pos/1.txt", "great")
    d.mkdir("texts/train/neg")
    return ["--train_dir", str(d.root / "texts/train")]


def _config(text: str | bytes) -> Callable[[Data, str], list[str]]:
    return lambda d, recipe: [*d.good(recipe), "--config", d.write("config.yaml", text)]


def _latin1_row(d: Data, recipe: str) -> list[str]:
    """The recipe's table with one Latin-1 byte; `offset` is where it is."""
    rows = d.rows(recipe)
    content = "".join(f"{r}\n" for r in rows).encode() + rows[1].rsplit(",", 1)[0].encode() + b",caf\xe9\n"
    d.vars["offset"] = content.index(b"\xe9")
    return d.table(recipe, content)


def _latin1_lines(d: Data) -> list[str]:
    content = "".join(f"{s}\n" for s in EN[:4]).encode() + b"caf\xe9 au lait\n"
    d.vars["offset"] = content.index(b"\xe9")
    target = d.write("train.de", "".join(f"{s}\n" for s in DE[:5]))
    return ["--train_source_file", d.write("train.en", content), "--train_target_file", target]


def _labels(values: list[str]) -> Callable[[Data, str], list[str]]:
    """A table whose label column holds `values` (text recipes; the image recipe pairs them with photos)."""

    def args(d: Data, recipe: str) -> list[str]:
        if recipe in (IMAGE, AUDIO):
            inputs = ([p for name in ("hat", "shoes") for p in d.photos("train", name, 3)] if recipe == IMAGE
                      else [clip for clip, _ in d.clips(6)])
            rows = [f"{inputs[i % len(inputs)]},{v}" for i, v in enumerate(values)]
            return d.table(recipe, [f"{'image' if recipe == IMAGE else 'audio'},label", *rows])
        return d.table(recipe, ["text,label", *(f"review number {i},{v}" for i, v in enumerate(values))])

    return args


def _token_table(columns: dict[str, str]) -> Callable[[Data], list[str]]:
    """The token recipe's JSON lines table, its token and tag lists under the columns `columns` names."""

    def args(d: Data) -> list[str]:
        row = {columns.get("tokens", "tokens"): ["Anna", "saw", "Lima"],
               columns.get("tags", "tags"): ["B-person", "O", "B-location"]}
        return d.table(TOKEN, "".join(json.dumps(row) + "\n" for _ in range(6)), "train.jsonl")

    return args


def _bad_images(d: Data) -> list[str]:
    args = d.folders({"train": {"hat": 3, "shoes": 3}, "validation": {"hat": 1, "shoes": 1}})
    photo = d.photos("train", "hat", 1)[0].read_bytes()
    d.write("img/train/hat/truncated.jpg", photo[: len(photo) // 3])
    d.write("img/train/shoes/empty.jpg", b"")
    d.write("img/train/shoes/garbage.jpg", b"this is not a JPEG" * 20)
    return args


def _bad_clips(d: Data) -> list[str]:
    rows = d.rows(SPEECH)
    d.write("corrupt.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    d.write("empty.wav", b"")
    sf.write(d.root / "no_samples.wav", np.zeros(0, np.float32), 8000)
    bad = [f"{d.root / name},one" for name in ("corrupt.wav", "missing.wav", "empty.wav", "no_samples.wav")]
    return d.table(SPEECH, [*rows, *bad])


def _plus_folder(d: Data, folder: str) -> list[str]:
    """Good image folders, plus an empty `folder` (a class folder without images)."""
    args = d.good(IMAGE)
    d.mkdir(folder)
    return args


def _loose_image(d: Data) -> list[str]:
    args = d.good(IMAGE)
    (d.root / "img/train/loose.jpg").symlink_to(d.photos("train", "hat", 1)[0])
    return args


def _long_clip(d: Data) -> str:
    """A manifest row: ten FSDD recordings in a row, over 3 s, past the tiny Whisper's 3 s window."""
    clips = d.clips(10)
    audio = np.concatenate([sf.read(clip)[0] for clip, _ in clips])
    assert len(audio) > 3 * 8000
    sf.write(d.root / "long.wav", audio, 8000)
    return f"{d.root / 'long.wav'},{' '.join(text for _, text in clips)}"


def _speech_validation(d: Data) -> list[str]:
    """An explicit validation manifest, so which rows a case adds to train is never held out instead."""
    return d.table(
        SPEECH,
        ["audio,text", *(f"{clip},{text}" for clip, text in d.clips(8)[6:])],
        "validation.csv",
        "validation",
    )


def _split_column(values: list[str]) -> Callable[[Data], list[str]]:
    """One manifest divided by a `split` column holding `values`."""

    def args(d: Data) -> list[str]:
        rows = d.rows(SPEECH)
        return [
            *d.table(SPEECH, [f"{rows[0]},split", *(f"{r},{v}" for r, v in zip(rows[1:], values))]),
            "--split_column",
            "split",
        ]

    return args


# Every bad input, by recipe. Ids read recipe-case.
CASES: dict[str, Case] = {
    # --- files and formats --------------------------------------------------------------------------------------
    "missing_file": Case(
        ALL,
        lambda d, r: ["--train_file", d.path("missing.csv"), *languages(r)],
        ("--train_file {d}/missing.csv does not exist", "Check the path"),
    ),
    "missing_train_dir": Case(
        (IMAGE,),
        lambda d, r: ["--train_dir", d.path("missing")],
        ("--train_dir {d}/missing is not a directory", "Give a folder with one sub-folder per class"),
    ),
    "missing_line_file": Case(
        (TRANSLATION,),
        lambda d, r: ["--train_source_file", d.path("missing.en"), "--train_target_file", d.lines()[3]],
        ("--train_source_file {d}/missing.en does not exist", "relative to"),
    ),
    "missing_audio_folder": Case(
        (SPEECH,),
        lambda d, r: ["--audio_folder", d.path("missing")],
        ("--audio_folder {d}/missing is not a directory", "Give the folder holding the audio files"),
    ),
    "unsupported_extension": Case(
        TABLES,
        lambda d, r: d.table(r, "a,b\n", name="train.xlsx"),
        (
            "--train_file {d}/train.xlsx: unsupported extension '.xlsx'",
            "Use one of: .csv, .tsv, .txt, no extension, .psv, .json, .jsonl, .parquet",
        ),
    ),
    "malformed_file": Case(
        ALL,
        lambda d, r: d.table(r, '{"text": "an unfinished object\n', name="train.jsonl"),
        ("--train_file {d}/train.jsonl could not be read as json", "Fix the file, or rename it"),
    ),
    "empty_file": Case(
        ALL,
        lambda d, r: d.table(r, b""),
        {
            **dict.fromkeys(TABLES, (
                "--train_file {d}/train.csv has no rows: the train split is empty",
                "Give a file with a header and data rows",
            )),
            TOKEN: ("--train_file {d}/train.csv holds no sentences", "expected `token<TAB>tag` lines"),
        },
    ),
    "empty_line_file": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(en=[], de=[]),
        ("--train_source_file {d}/train.en is empty", "one sentence per line"),
    ),
    "empty_split": Case(
        TABLES,
        lambda d, r: [*d.table(r, d.rows(r)), *d.table(r, d.rows(r)[:1], "validation.csv", "validation")],
        (
            "--validation_file {d}/validation.csv has no rows: the validation split is empty",
            "or leave out --validation_file",
        ),
    ),
    # --- reader options, sampling, bad rows --------------------------------------------------------------------
    "header_looks_like_data": Case(
        TABLES,
        lambda d, r: d.table(r, ["1,the first row is data", "2,and so is the second"]),
        (
            "--train_file {d}/train.csv: its first line looks like data, not a header: '1' is not a column name",
            "name its 2 columns with --column_names, e.g. --column_names col1,col2",
        ),
    ),
    "wrong_delimiter": Case(
        TABLES,
        lambda d, r: d.table(r, ["text|label", "one, two|pos", "three|neg"]),
        (
            "--train_file {d}/train.csv: its header 'text|label' is a single column when split on ','",
            "Set --delimiter '|'",
        ),
    ),
    "rows_wider_than_the_header": Case(
        TEXTS,
        lambda d, r: d.table(r, ["text,label", "one,pos", "two, three,neg"]),
        ("--train_file {d}/train.csv: line 3 has 3 fields but line 1 has 2", "Set --delimiter"),
    ),
    "column_names_count_mismatch": Case(
        TABLES,
        lambda d, r: [*d.table(r, ["a,b", "c,d"]), "--column_names", "x,y,z"],
        ("--column_names gives 3 names (x, y, z) but its first line has 2 fields", "Give one name per column"),
    ),
    "delimiter_not_one_character": Case(
        ALL,
        _with_good("--delimiter", "::"),
        ("--delimiter '::' must be a single character",),
    ),
    "unknown_quoting": Case(
        ALL,
        _with_good("--quoting", "minimum"),
        ("--quoting minimum: use one of minimal, all, nonnumeric, none", "did you mean 'minimal'"),
    ),
    "data_field_missing": Case(
        ALL,
        lambda d, r: [*d.table(r, '{"record": {"text": "a"}}\n', "train.jsonl"), "--data_field", "records"],
        ("--data_field 'records' is not a field of its records", "did you mean 'record'"),
    ),
    "too_many_bad_rows": Case(
        TEXTS,
        lambda d, r: [*_labels(["pos", "", "neg", "pos", "", "neg", "pos", "neg"] * 3)(d, r), "--skip_bad_examples"],
        ("6 of 24 rows (25.0%) are bad, more than --max_bad_fraction 0.05 allows", "wrong column, delimiter or path"),
    ),
    "class_names_file_missing": Case(
        CLASSIFIERS,
        _with_good("--class_names_file", "missing_classes.txt"),
        ("--class_names_file missing_classes.txt does not exist", "one class name per line"),
    ),
    "class_names_count_mismatch": Case(
        TEXTS,
        lambda d, r: [*_labels(["1", "2", "3", "1", "2", "3"])(d, r), "--class_names", "a,b"],
        ("--class_names gives 2 names but label column 'label'", "holds 3 distinct ids (1, 2, 3)",
         "Give one name per id, in sorted id order"),
    ),
    "text_folder_class_without_files": Case(
        TEXTS,
        lambda d, r: _text_folder_with_empty_class(d),
        ("--train_dir {d}/texts/train: class folder neg has no .txt files", "Add files or remove the folder"),
    ),
    "empty_audio_folder": Case(
        (SPEECH,),
        lambda d, r: ["--audio_folder", d.mkdir("clips")],
        (
            "--audio_folder {d}/clips could not be read as an audiofolder",
            "metadata.csv with a file_name column",
        ),
    ),
    "not_utf8": Case(
        ALL,
        lambda d, r: _latin1_lines(d) if r == TRANSLATION else _latin1_row(d, r),
        {
            **{
                r: (
                    "{d}/train.csv is not valid UTF-8: byte 0xe9 at byte offset {offset}",
                    "Re-encode the file as UTF-8",
                )
                for r in ALL
            },
            TRANSLATION: (
                "{d}/train.en is not valid UTF-8: byte 0xe9 at byte offset {offset}",
                "Re-encode the file",
            ),
        },
    ),
    # --- columns, with the columns present and the nearest spelling ---------------------------------------------
    "misspelt_column": Case(
        ALL,
        _per_recipe(
            text_classification=lambda d: [*d.good(TEXT), "--label_column", "lable"],
            sentiment=lambda d: [*d.good(SENTIMENT), "--text_columns", "txet"],
            image_classification=lambda d: [*d.table(IMAGE, d.rows(IMAGE)), "--image_column", "imgae"],
            translation=lambda d: [
                *d.table(TRANSLATION, ["english,german", *(f"{e},{g}" for e, g in zip(EN, DE))]),
                "--source_column",
                "english",
                "--target_column",
                "germna",
            ],
            speech_recognition=lambda d: [
                *d.table(SPEECH, ["audio,transcript", *d.rows(SPEECH)[1:]]),
                "--text_column",
                "transcrpt",
            ],
            token_classification=lambda d: [*_token_table({})(d), "--tags_column", "tgas"],
            audio_classification=lambda d: [*d.good(AUDIO), "--label_column", "lable"],
            question_answering=lambda d: [*d.good(QA), "--question_column", "qestion"],
        ),
        {
            TEXT: (
                "column 'lable' not found in train split ({d}/train.csv) (did you mean 'label'?)",
                "Columns present: text, label",
                "Set --text_columns / --label_column",
            ),
            SENTIMENT: (
                "column 'txet' not found in train split ({d}/train.csv) (did you mean 'text'?)",
                "Columns present: text, label",
                "Set --text_columns / --label_column",
            ),
            IMAGE: (
                "column 'imgae' not found in train split ({d}/train.csv) (did you mean 'image'?)",
                "Columns present: image, label",
                "Set --image_column / --label_column",
            ),
            TRANSLATION: (
                "column 'germna' not found in train split ({d}/train.csv) (did you mean 'german'?)",
                "Columns present: english, german",
                "Set --source_column/--target_column",
            ),
            SPEECH: (
                "column 'transcrpt' not found in train split ({d}/train.csv) (did you mean 'transcript'?)",
                "Columns present: audio, transcript",
                "Set --audio_column / --text_column",
            ),
            TOKEN: (
                "column 'tgas' not found in train split ({d}/train.jsonl) (did you mean 'tags'?)",
                "Columns present: tokens, tags",
                "--tags_column",
            ),
            AUDIO: (
                "column 'lable' not found in train split ({d}/train.csv) (did you mean 'label'?)",
                "Columns present: audio, label",
                "--label_column",
            ),
            QA: (
                "column 'qestion' not found in train split ({d}/train.csv) (did you mean 'question'?)",
                "Columns present: question, context, answer_text, answer_start",
                "Set --question_column / --context_column",
            ),
        },
    ),
    "no_input_column": Case(
        ALL,
        _per_recipe(
            text_classification=lambda d: d.table(TEXT, ["review,label", *d.rows(TEXT)[1:]]),
            sentiment=lambda d: d.table(SENTIMENT, ["review,label", *d.rows(SENTIMENT)[1:]]),
            image_classification=lambda d: d.table(IMAGE, ["photo,label", *d.rows(IMAGE)[1:]]),
            translation=lambda d: ["--train_file", d.write("train.csv", "\n".join(d.rows(TRANSLATION)))],
            speech_recognition=lambda d: d.table(SPEECH, ["clip,text", *d.rows(SPEECH)[1:]]),
            token_classification=_token_table({"tokens": "text"}),
            audio_classification=lambda d: d.table(AUDIO, ["clip,label", *d.rows(AUDIO)[1:]]),
            question_answering=lambda d: d.table(QA, ["query,context,answer_text,answer_start", *d.rows(QA)[1:]]),
        ),
        {
            **dict.fromkeys(
                TEXTS,
                (
                    "no text column found in train split ({d}/train.csv)",
                    "Columns present: review, label",
                    "Set --text_columns",
                ),
            ),
            IMAGE: (
                "no image column found in train split ({d}/train.csv)",
                "Columns present: photo, label",
                "Set --image_column",
            ),
            TRANSLATION: (
                "name the source and target text: --source_lang/--target_lang",
                "or --source_column/--target_column",
            ),
            SPEECH: (
                "no audio column found in train split ({d}/train.csv)",
                "Columns present: clip, text",
                "Set --audio_column",
            ),
            TOKEN: (
                "no tokens column found in train split ({d}/train.jsonl)",
                "Columns present: text, tags",
                "--tokens_column",
            ),
            AUDIO: (
                "no audio column found in train split ({d}/train.csv)",
                "Columns present: clip, label",
                "Set --audio_column",
            ),
            QA: (
                "column 'question' not found in train split ({d}/train.csv)",
                "Columns present: query, context, answer_text, answer_start",
                "Set --question_column / --context_column",
            ),
        },
    ),
    "no_label_column": Case(
        ALL,
        _per_recipe(
            text_classification=lambda d: d.table(TEXT, ["text,stars", *d.rows(TEXT)[1:]]),
            sentiment=lambda d: d.table(SENTIMENT, ["text,stars", *d.rows(SENTIMENT)[1:]]),
            image_classification=lambda d: d.table(IMAGE, ["image,kind", *d.rows(IMAGE)[1:]]),
            translation=lambda d: [*d.table(TRANSLATION, d.rows(TRANSLATION)), "--target_lang", "fr"],
            speech_recognition=lambda d: d.table(SPEECH, ["audio,words", *d.rows(SPEECH)[1:]]),
            token_classification=_token_table({"tags": "entities"}),
            audio_classification=lambda d: d.table(AUDIO, ["audio,digit", *d.rows(AUDIO)[1:]]),
            question_answering=lambda d: d.table(QA, ["question,context,reply", *(r.rsplit(",", 1)[0]
                                                                                  for r in d.rows(QA)[1:])]),
        ),
        {
            **dict.fromkeys(
                TEXTS,
                (
                    "'label' not found in train split ({d}/train.csv)",
                    "Columns present: text, stars",
                    "Set --text_columns / --label_column",
                ),
            ),
            IMAGE: (
                "'label' not found in train split ({d}/train.csv)",
                "Columns present: image, kind",
                "Set --image_column / --label_column",
            ),
            TRANSLATION: (
                "column 'fr' not found in train split ({d}/train.csv)",
                "Columns present: en, de",
                "Set --source_column/--target_column (or --source_lang/--target_lang)",
            ),
            SPEECH: (
                "no text column found in train split ({d}/train.csv)",
                "Columns present: audio, words",
                "Set --text_column",
            ),
            TOKEN: (
                "no tags column found in train split ({d}/train.jsonl)",
                "Columns present: tokens, entities",
                "--tags_column",
            ),
            AUDIO: (
                "'label' not found in train split ({d}/train.csv)",
                "Columns present: audio, digit",
                "--label_column",
            ),
            QA: (
                "train split ({d}/train.csv) has no answers",
                "flat answer_text and answer_start columns, or name the column with --answer_column",
            ),
        },
    ),
    # --- labels -------------------------------------------------------------------------------------------------
    "mixed_label_types": Case(
        CLASSIFIERS,
        _labels(["1", "positive", "0", "1"]),
        (
            "train split ({d}/train.csv): 1 bad row: row 2 (label 'positive' is not a number, unlike the others)",
            "pass --skip_bad_examples",
        ),
    ),
    "mixed_label_types_jsonl": Case(
        TEXTS,
        lambda d, r: d.table(r, '{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n', "train.jsonl"),
        (
            "label column 'label' of train split ({d}/train.jsonl) mixes types: int (e.g. 1), str (e.g. 'pos')",
            "Make every label the same type",
        ),
    ),
    "label_missing": Case(
        CLASSIFIERS,
        _labels(["pos", "", "neg", "pos"]),
        ("train split ({d}/train.csv): 1 bad row: row 2 (no label)", "pass --skip_bad_examples"),
    ),
    "label_column_empty": Case(
        CLASSIFIERS,
        _labels(["", "", "", "", ""]),
        ("train split ({d}/train.csv): the label column is empty in all 5 rows", "Point --label_column at the column"),
    ),
    "label_not_in_class_names": Case(
        CLASSIFIERS,
        lambda d, r: [*_labels(["pos", "neg", "meh", "pos"])(d, r), "--class_names", "neg", "pos"],
        (
            "labels ['meh'] in train split ({d}/train.csv) are not in --class_names ['neg', 'pos']",
            "Add them or fix the data",
        ),
    ),
    "single_class": Case(
        CLASSIFIERS,
        lambda d, r: d.folders({"train": {"hat": 3}}) if r == IMAGE else _labels(["pos"] * 6)(d, r),
        {
            **{
                r: (
                    "train split ({d}/train.csv) holds a single class: {{'pos': 5}}",
                    "A classifier needs at least two",
                )
                for r in (*TEXTS, AUDIO)
            },
            IMAGE: (
                "train split ({d}/img/train) holds a single class: {{'hat': 2}}",
                "A classifier needs at least two",
            ),
        },
    ),
    "unknown_validation_label": Case(
        CLASSIFIERS,
        lambda d, r: (
            d.folders({"train": {"hat": 2, "shoes": 2}, "validation": {"hat": 1, "skirt": 1}})
            if r == IMAGE
            else [
                *d.good(r),
                *d.table(r, ["audio,label", *(f"{clip},{label}" for (clip, _), label in zip(d.clips(2), ("zero", "meh")))]
                         if r == AUDIO else ["text,label", "fine,pos", "so-so,meh"], "validation.csv", "validation"),
            ]
        ),
        {
            **{
                r: (
                    "labels ['meh'] in validation split ({d}/validation.csv) never occur in training (neg, pos)",
                    "Remove those rows or add training examples",
                )
                for r in TEXTS
            },
            AUDIO: (
                "labels ['meh'] in validation split ({d}/validation.csv) never occur in training (one, two, zero)",
                "Remove those rows or add training examples",
            ),
            IMAGE: (
                "labels ['skirt'] in validation split ({d}/img/validation) never occur in training (hat, shoes)",
                "Remove those rows or add training examples",
            ),
        },
    ),
    "unknown_test_label": Case(
        (TEXT, IMAGE),
        lambda d, r: (
            d.folders({"train": {"hat": 2, "shoes": 2}, "test": {"shoes": 1, "skirt": 1}})
            if r == IMAGE
            else [*d.good(r), *d.table(r, ["text,label", "fine,pos", "so-so,meh"], "test.csv", "test")]
        ),
        {
            TEXT: (
                "labels ['meh'] in test split ({d}/test.csv) never occur in training (neg, pos)",
                "Remove those rows or add training examples",
            ),
            IMAGE: (
                "labels ['skirt'] in test split ({d}/img/test) never occur in training (hat, shoes)",
                "Remove those rows or add training examples",
            ),
        },
    ),
    # --- config files and options -------------------------------------------------------------------------------
    "unknown_config_key": Case(
        ALL,
        lambda d, r: _config(
            {
                TEXT: "train_fil: x.csv\n",
                SENTIMENT: "num_train_epoch: 2\n",
                IMAGE: "train_directory: x\n",
                TRANSLATION: "source_language: en\n",
                SPEECH: "audio_col: wav\n",
                TOKEN: "tags_colum: ner\n",
                AUDIO: "label_col: digit\n",
                QA: "question_colum: query\n",
            }[r]
        )(d, r),
        {
            TEXT: ("unknown key 'train_fil' in {d}/config.yaml (did you mean 'train_file'?)",),
            SENTIMENT: (
                "unknown key 'num_train_epoch' in {d}/config.yaml (did you mean 'num_train_epochs'?)",
            ),
            IMAGE: ("unknown key 'train_directory' in {d}/config.yaml (did you mean 'train_dir'?)",),
            TRANSLATION: ("unknown key 'source_language' in {d}/config.yaml (did you mean 'source_lang'?)",),
            SPEECH: ("unknown key 'audio_col' in {d}/config.yaml (did you mean 'audio_column'?)",),
            TOKEN: ("unknown key 'tags_colum' in {d}/config.yaml (did you mean 'tags_column'?)",),
            AUDIO: ("unknown key 'label_col' in {d}/config.yaml (did you mean 'label_column'?)",),
            QA: ("unknown key 'question_colum' in {d}/config.yaml (did you mean 'question_column'?)",),
        },
    ),
    "unknown_option": Case(
        ALL,
        _with_good("--learning_rat", "1e-4"),
        ("unknown option '--learning_rat' (did you mean 'learning_rate'?)", "See --help"),
    ),
    "option_of_wrong_type": Case(
        ALL,
        _with_good("--num_train_epochs", "many"),
        ("argument --num_train_epochs", "invalid float value: 'many'", "See --help"),
    ),
    "config_value_of_wrong_type": Case(
        ALL,
        _config("learning_rate: fast\n"),
        ("argument --learning_rate", "invalid float value: 'fast' (set in {d}/config.yaml)", "See --help"),
    ),
    "config_missing": Case(
        ALL,
        lambda d, r: [*d.good(r), "--config", d.path("missing.yaml")],
        ("config file {d}/missing.yaml does not exist", "finetune-recipes list"),
    ),
    "config_not_yaml": Case(
        ALL,
        _config("learning_rate: [1e-4\nseed: 1\n"),
        ("config file {d}/config.yaml is not valid YAML", "fix it where the parser points", "line 2"),
    ),
    "config_not_utf8": Case(
        ALL,
        _config(b"# caf\xe9\nseed: 1\n"),
        (
            "config file {d}/config.yaml is not valid UTF-8: byte 0xe9 at byte offset 5",
            "Re-encode it as UTF-8",
        ),
    ),
    "config_not_a_mapping": Case(
        ALL,
        _config("- learning_rate\n- seed\n"),
        ("config file {d}/config.yaml must be a mapping of option: value, not list",),
    ),
    "validation_split_out_of_range": Case(
        ALL,
        _with_good("--validation_split", "1.5"),
        ("--validation_split 1.5 is outside (0, 1)", "e.g. --validation_split 0.1"),
    ),
    "output_dir_not_empty": Case(
        ALL,
        lambda d, r: d.good(r),
        ("earlier_run already exists and is not empty", "pass --overwrite_output_dir"),
        output_dir_exists=True,
    ),
    "resume_without_checkpoint": Case(
        ALL,
        _with_good("--resume_from_checkpoint", "latest"),
        (
            "--resume_from_checkpoint latest: no checkpoint-* folder in",
            "leave the option out to start afresh",
        ),
    ),
    # --- the fine-tuning toolkit's options ----------------------------------------------------------------------
    "freeze_misspelt": Case(
        ALL,
        _with_good("--freeze", "backbon"),
        (
            "--freeze 'backbon' matches no parameter name of",
            "(did you mean 'backbone'?)",
            "Keywords: none, backbone",
        ),
    ),
    "freeze_more_blocks_than_exist": Case(
        ALL,
        _with_good("--freeze", "bottom:99"),
        ("--freeze bottom:99: ", "blocks per stack; use --freeze backbone to freeze them all"),
    ),
    "unfreeze_schedule_unreadable": Case(
        ALL,
        _with_good("--unfreeze_schedule", "often"),
        ("--unfreeze_schedule 'often'", "e.g. '1,2,4'"),
    ),
    "layer_lr_decay_out_of_range": Case(
        ALL,
        _with_good("--layer_lr_decay", "1.5"),
        ("--layer_lr_decay 1.5 must be in (0, 1], e.g. 0.8",),
    ),
    "peft_unknown": Case(
        ALL,
        _with_good("--peft", "lorra"),
        ("--peft lorra is not supported: use one of lora, ia3",),
    ),
    "dropout_out_of_range": Case(ALL, _with_good("--dropout", "1.5"), ("--dropout 1.5 must be in [0, 1)",)),
    "precision_unknown": Case(
        ALL,
        _with_good("--precision", "fp8"),
        ("--precision fp8: use auto, fp32, bf16 or fp16",),
    ),
    "augmentation_unknown": Case(
        ALL,
        lambda d, r: [
            *d.good(r),
            *{IMAGE: ["--image_augment", "hevy"], SPEECH: ["--audio_augment", "nose=0.5"],
              AUDIO: ["--audio_augment", "nose=0.5"]}.get(
                r, ["--text_augment", "swp=0.1"]
            ),
        ],
        {
            **{
                r: ("--text_augment: unknown operation 'swp' (did you mean 'swap'?)", "Operations: swap")
                for r in (TEXT, SENTIMENT, TRANSLATION, TOKEN, QA)
            },
            IMAGE: ("--image_augment hevy: choose one of none, light, standard, strong",),
            **dict.fromkeys((SPEECH, AUDIO), ("--audio_augment: unknown operation 'nose' (did you mean 'noise'?)",
                                              "Operations: ")),
        },
    ),
    "hpo_space_unknown_argument": Case(
        ALL,
        _with_good(
            "--hpo_trials", "2", "--hpo_space", "{learning_rat: {type: float, low: 0.0001, high: 0.001}}"
        ),
        ("hpo_space: unknown argument(s) learning_rat (did you mean 'learning_rate'?)",),
    ),
    "cv_folds_too_few": Case(
        (*CLASSIFIERS, TOKEN, QA),
        _with_good("--cv_folds", "1"),
        ("--cv_folds 1: cross-validation needs at least 2 folds",),
    ),
    "ensemble_unknown": Case(
        (*CLASSIFIERS, TOKEN, QA),
        _with_good("--ensemble", "vote"),
        ("--ensemble vote: choose one of soft_vote, hard_vote, stack",),
    ),
    "cv_on_a_generative_recipe": Case(
        (TRANSLATION, SPEECH),
        _with_good("--cv_folds", "3"),
        {
            TRANSLATION: ("--cv_folds applies to classification recipes", "use --hpo_trials"),
            SPEECH: ("--cv_folds, --ensemble and --cache_features work on classification heads",),
        },
    ),
    "ensemble_on_a_generative_recipe": Case(
        (TRANSLATION, SPEECH),
        _with_good("--ensemble", "soft_vote"),
        {
            TRANSLATION: (
                "--ensemble: the translation recipe gives no labels for its members to vote over, so it cannot "
                "ensemble",
            ),
            SPEECH: ("--cv_folds, --ensemble and --cache_features work on classification heads",),
        },
    ),
    # --- images -------------------------------------------------------------------------------------------------
    "corrupt_and_zero_byte_images": Case(
        (IMAGE,),
        lambda d, r: _bad_images(d),
        (
            "train split ({d}/img/train): 3 bad rows",
            "{d}/img/train/hat/truncated.jpg (corrupt: image file is truncated",
            "{d}/img/train/shoes/empty.jpg (empty file (0 bytes))",
            "{d}/img/train/shoes/garbage.jpg (not a readable image",
            "pass --skip_bad_examples",
        ),
    ),
    "missing_image_file": Case(
        (IMAGE,),
        lambda d, r: d.table(r, [*d.rows(r), "missing.jpg,hat"]),
        ("1 bad row: {d}/missing.jpg (file not found)", "Fix or remove them"),
    ),
    "class_folder_without_images": Case(
        (IMAGE,),
        lambda d, r: _plus_folder(d, "img/train/scarf"),
        ("--train_dir {d}/img/train: class folder scarf has no images", "remove the empty folder"),
    ),
    "images_outside_class_folders": Case(
        (IMAGE,),
        lambda d, r: _loose_image(d),
        ("--train_dir {d}/img/train has images directly inside it (loose.jpg)", "one sub-folder per class"),
    ),
    "no_class_folders": Case(
        (IMAGE,),
        lambda d, r: ["--train_dir", d.mkdir("img/train")],
        ("--train_dir {d}/img/train has no class sub-folders", "Put images in one sub-folder per class"),
    ),
    "folders_and_files_both": Case(
        (IMAGE,),
        lambda d, r: [*d.good(r), *d.table(r, d.rows(r))],
        ("give class folders (--train_dir ...) or --train_file, not both",),
    ),
    "mixup_alpha_negative": Case(
        (IMAGE,),
        _with_good("--mixup_alpha", "-1"),
        ("--mixup_alpha -1.0 must be >= 0 (0 turns it off)",),
    ),
    # --- translation --------------------------------------------------------------------------------------------
    "line_counts_differ": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(de=DE[:7]),
        (
            "--train_source_file {d}/train.en has 10 lines but --train_target_file {d}/train.de has 7",
            "They stop aligning at line 8",
            "Look for a sentence split over two lines or a missing translation",
        ),
    ),
    "target_lines_empty": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(de=[*DE[:3], "", *DE[4:8], " ", DE[9]]),
        (
            "--train_target_file {d}/train.de is empty at lines 4, 9, where --train_source_file {d}/train.en has text",
            "Remove those lines from both sides, or fill in the missing text",
        ),
    ),
    "source_line_empty": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(en=[*EN[:2], "", *EN[3:]]),
        (
            "--train_source_file {d}/train.en is empty at lines 3, where --train_target_file",
            "Remove those lines",
        ),
    ),
    "every_pair_empty": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(en=["", " "], de=["", ""]),
        (
            "--train_source_file {d}/train.en and --train_target_file {d}/train.de hold no non-empty pair",
            "Check that these are the right files",
        ),
    ),
    "target_file_not_given": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(de=None),
        ("--train_source_file and --train_target_file go together: give both",),
    ),
    "language_missing_from_translation_dict": Case(
        (TRANSLATION,),
        lambda d, r: [
            *d.table(
                r,
                "".join(json.dumps({"translation": {"en": e, "de": g}}) + "\n" for e, g in zip(EN, DE)),
                "train.jsonl",
            ),
            "--target_lang",
            "fr",
        ],
        (
            "language 'fr' not in the 'translation' column of train split ({d}/train.jsonl), which holds: de, en",
            "Set --source_lang/--target_lang to those keys",
        ),
    ),
    "table_and_line_files_both": Case(
        (TRANSLATION,),
        lambda d, r: [*d.lines(), *d.table(r, d.rows(r))],
        ("give the train split once: --train_file or --train_source_file, not both",),
    ),
    "not_an_encoder_decoder": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(),
        ("(bert) is not an encoder-decoder", "AutoModelForSeq2SeqLM"),
        model="bert",
    ),
    "multilingual_model_without_languages": Case(
        (TRANSLATION,),
        lambda d, r: d.lines(),
        (
            "NllbTokenizer is multilingual: set --source_lang and --target_lang to its language codes",
            "ace_Arab, ace_Latn",
        ),
        model="nllb",
    ),
    "unknown_language_code": Case(
        (TRANSLATION,),
        lambda d, r: [*d.lines(), "--source_lang", "eng_Latn", "--target_lang", "deu_Latin"],
        ("--target_lang deu_Latin is not a language code of NllbTokenizer", "its codes: "),
        model="nllb",
    ),
    # --- speech -------------------------------------------------------------------------------------------------
    "corrupt_missing_and_zero_length_audio": Case(
        (SPEECH,),
        lambda d, r: [*_bad_clips(d), *_speech_validation(d)],
        (
            "train split ({d}/train.csv): 4 bad rows",
            "{d}/corrupt.wav (could not decode",
            "{d}/missing.wav (file not found)",
            "{d}/empty.wav (zero-length file (0 bytes))",
            "{d}/no_samples.wav (zero-length audio (no samples))",
            "pass --skip_bad_examples",
        ),
    ),
    "empty_transcripts": Case(
        (SPEECH,),
        lambda d, r: [
            *d.table(r, [*d.rows(r), f"{d.clips(1)[0][0]},", f"{d.clips(2)[1][0]}, ?! "]),
            *_speech_validation(d),
        ],
        (
            "train split ({d}/train.csv): 2 bad rows",
            "(empty transcript)",
            "(transcript ' ?! ' is empty once normalised)",
            "Fix or remove them",
        ),
    ),
    "clip_longer_than_whisper_window": Case(
        (SPEECH,),
        lambda d, r: [*d.table(r, [*d.rows(r), _long_clip(d)]), "--language", "en"],
        ("1 clip(s) are longer than the model's 3 s input limit", "{d}/long.wav", "--max_duration_s 3"),
        model="whisper",
    ),
    "whisper_without_language": Case(
        (SPEECH,),
        lambda d, r: d.good(r),
        ("multilingual Whisper needs the speech's language: set --language",),
        model="whisper",
    ),
    "not_a_speech_model": Case(
        (SPEECH,),
        lambda d, r: d.good(r),
        ("model type 'bert' is not a speech recognition architecture", "Use a CTC"),
        model="bert",
    ),
    "split_column_misspelt": Case(
        (SPEECH,),
        lambda d, r: [*_split_column(["train"] * 6)(d), "--split_column", "splt"],
        (
            "--split_column 'splt' not found in train split ({d}/train.csv) (did you mean 'split'?)",
            "Set --split_column to the column",
        ),
    ),
    "split_column_unknown_values": Case(
        (SPEECH,),
        lambda d, r: _split_column(["train"] * 4 + ["training", "dev"])(d),
        (
            "--split_column 'split' in train split ({d}/train.csv) has values ['training']",
            "use train, validation (or dev) and test",
        ),
    ),
    # --- token and audio classification ---------------------------------------------------------------------------
    "conll_line_without_tag": Case(
        (TOKEN,),
        lambda d, r: d.table(r, ["Anna\tB-person", "flew", "home\tO", "", "Tom\tB-person"], "train.conll"),
        ("--train_file {d}/train.conll: 1 lines hold a token but no tag (line 2: 'flew')",
         "Each line needs `token<TAB>tag`", "--skip_bad_examples"),
    ),
    "tag_column_holds_sentences": Case(
        (TOKEN,),
        lambda d, r: d.table(r, "".join(json.dumps({"tokens": ["Anna", "saw", "Lima"], "tags": "B-person O B-location"})
                                        + "\n" for _ in range(4)), "train.jsonl"),
        ("column 'tags' of train split ({d}/train.jsonl) holds str values such as 'B-person O B-location'",
         "not a list of tags per sentence", "--tags_column"),
    ),
    "no_clip_within_durations": Case(
        (SPEECH,),
        _with_good("--min_duration_s", "100"),
        (
            "train split ({d}/train.csv): no clip is left within --min_duration_s 100.0",
            "Widen or drop those limits",
        ),
    ),
    # --- question answering -------------------------------------------------------------------------------------
    "answer_start_off_its_answer": Case(
        (QA,),
        lambda d, r: d.table(r, [*d.rows(r)[:3], "who saw item 2,Anna2 saw item 2 in Lima,Anna2,3", *d.rows(r)[4:]]),
        (
            "train split ({d}/train.csv): 1 bad row: row 3, id 3 (answer_start 3 points at 'a2 sa', not at its "
            "answer 'Anna2' (which starts at 0))",
            "pass --skip_bad_examples",
        ),
    ),
    "answer_not_in_context": Case(
        (QA,),
        lambda d, r: d.table(r, [*d.rows(r), "who saw item 9,Anna9 saw item 9 in Lima,Bruno,0"]),
        ("row 9, id 9 (answer_start 0 points at 'Anna9', not at its answer 'Bruno' (which is not in the context))",),
    ),
    "empty_context": Case(
        (QA,),
        lambda d, r: d.table(r, [*d.rows(r)[:2], "who saw item 1,,Anna1,0", *d.rows(r)[3:]]),
        ("train split ({d}/train.csv): 1 bad row: row 2, id 2 (empty context)", "Fix or remove them"),
    ),
    "empty_question": Case(
        (QA,),
        lambda d, r: d.table(r, [*d.rows(r)[:5], " ,Anna4 saw item 4 in Lima,Anna4,0", *d.rows(r)[6:]]),
        ("train split ({d}/train.csv): 1 bad row: row 5, id 5 (empty question)", "Fix or remove them"),
    ),
    "unanswered_question_without_version_2": Case(
        (QA,),
        lambda d, r: d.table(r, [*d.rows(r), "who saw nothing,Anna saw item 9 in Lima,,"]),
        ("row 9, id 9 (no answer: questions without one need --version_2_with_negative)",),
    ),
    "doc_stride_not_below_the_windows_room": Case(
        (QA,),
        _with_good("--max_seq_length", "16", "--doc_stride", "12"),
        (
            "train split ({d}/train.csv): row 1, id 1: --max_seq_length 16 less its question's 4 sub-words and 3 "
            "special tokens leaves 9 for the context, not more than --doc_stride 12",
            "lower --doc_stride below 9, or raise --max_seq_length to 20 or more",
        ),
    ),
    "article_in_train_and_validation": Case(
        (QA,),
        lambda d, r: [
            *d.table(r, [f"title,{QA_HEADER}", *(f"{'AB'[i % 2]},{row}" for i, row in enumerate(d.rows(r)[1:]))]),
            *d.table(r, [f"title,{QA_HEADER}", f"B,{d.rows(r)[1]}"], "validation.csv", "validation"),
            "--cv_group_column",
            "title",
        ],
        ("--cv_group_column title: 'B' is in both train split ({d}/train.csv) and validation split "
         "({d}/validation.csv)", "Give splits with disjoint groups"),
    ),
    "squad_json_paragraph_without_questions": Case(
        (QA,),
        lambda d, r: ["--train_file", d.write("train.json", json.dumps(
            {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Anna saw Lima."}]}]}))],
        ("--train_file {d}/train.json: data[0].paragraphs[0] has no list of questions ('qas')",
         "data[].paragraphs[].{{context, qas[]}}"),
    ),
}


def snapshot(directory: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")
    }


def assert_explains(message: str, fragments: list[str]) -> None:
    missing = [f for f in fragments if f not in message]
    assert not missing, f"message lacks {missing}:\n{message}"


@pytest.mark.parametrize(
    ("recipe", "case"),
    [pytest.param(r, name, id=f"{r}-{name}") for name, case in CASES.items() for r in case.recipes],
)
def test_bad_input_fails_before_training(recipe, case, models, data, tmp_path, monkeypatch, capsys):
    spec = CASES[case]
    argv = ["--model_name_or_path", models[spec.model or MODEL[recipe]], *spec.args(data, recipe)]
    fragments = spec.fragments(recipe, data)

    if not spec.output_dir_exists:  # called as a function, into an output dir that does not exist yet
        out = tmp_path / "new_run"
        start = time.monotonic()
        with pytest.raises(RecipeInputError) as err:
            RECIPES[recipe].main([*argv, *fast_args(out)])
        assert time.monotonic() - start < 30
        assert_explains(str(err.value), fragments)
        assert not out.exists()

    # As a script (exit code 2), into the output dir of an earlier run, which must stay byte for byte the same.
    out = tmp_path / "earlier_run"
    for name, content in EARLIER_RUN.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    before = snapshot(out)
    overwrite = [] if spec.output_dir_exists else ["--overwrite_output_dir"]
    monkeypatch.setattr(sys, "argv", [f"recipes/{recipe}.py", *argv, *fast_args(out), *overwrite])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(RECIPES[recipe].main)
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    assert "error: " in stderr
    assert_explains(stderr.split("error: ", 1)[1], fragments)
    assert snapshot(out) == before


# --- what the recipes handle without failing ---------------------------------------------------------------------


@dataclass(frozen=True)
class Proceeds:
    recipe: str
    args: Callable[[Data], list[str]]
    logged: tuple[str, ...] = ()  # fragments of the warnings (formatted with Data.vars)
    results: dict[str, int] = field(default_factory=dict)  # counts the run reports
    train_rows: int | None = None  # rows left to train on
    model: str | None = None


def _stereo(d: Data) -> list[str]:
    clip, text = d.clips(1)[0]
    mono, rate = sf.read(clip)
    sf.write(d.root / "stereo.wav", np.stack([mono, mono * 0.5], axis=1), rate)
    return d.table(SPEECH, [*d.rows(SPEECH), f"{d.root / 'stereo.wav'},{text}"])


def _huge_image(d: Data) -> list[str]:
    """A 3000x3000 photo among the others: checked (and later decoded) at reduced size, never in full."""
    from PIL import Image

    args = d.good(IMAGE)
    Image.fromarray(np.full((3000, 3000, 3), 128, np.uint8)).save(d.root / "img/train/hat/huge.jpg")
    return args


PROCEEDS: dict[str, Proceeds] = {
    "question_answering-skip_bad_examples": Proceeds(
        QA,
        lambda d: [
            *d.table(QA, [*d.rows(QA), "who saw item 9,Anna9 saw item 9 in Lima,Anna9,7"]),
            *d.table(QA, d.rows(QA)[:3], "validation.csv", "validation"),
            "--skip_bad_examples",
            "--max_bad_fraction",
            "0.2",
        ],
        ("--skip_bad_examples: skipped 1 of 9 rows of train split ({d}/train.csv): row 9, id 9 (answer_start 7",),
        {"skipped_bad_examples": 1, "skipped_bad_examples_train": 1, "skipped_bad_examples_validation": 0},
        train_rows=8,
    ),
    "image_classification-skip_bad_examples": Proceeds(
        IMAGE,
        lambda d: [*_bad_images(d), "--skip_bad_examples", "--max_bad_fraction", "0.5"],
        ("--skip_bad_examples: skipped 3 of 9 rows of train split ({d}/img/train)",),
        {"skipped_bad_examples": 3, "skipped_bad_examples_train": 3},
        train_rows=6,
    ),
    "image_classification-huge_image": Proceeds(IMAGE, _huge_image, train_rows=7),
    "image_classification-validation_class_folder_without_images": Proceeds(
        IMAGE,
        lambda d: _plus_folder(d, "img/validation/scarf"),
        (
            "--validation_dir {d}/img/validation: class folder scarf has no images; those classes are absent from the "
            "validation split",
        ),
    ),
    "translation-pairs_empty_on_both_sides_dropped": Proceeds(
        TRANSLATION,
        lambda d: [*d.lines(en=[*EN[:5], "", *EN[5:]], de=[*DE[:5], " ", *DE[5:]]), *d.lines("validation")],
        (
            "dropped 1 pair(s) empty on both sides of --train_source_file {d}/train.en and --train_target_file "
            "{d}/train.de, at lines 6",
        ),
        train_rows=10,
    ),
    "translation-t5_without_source_prefix": Proceeds(
        TRANSLATION,
        lambda d: d.lines(),
        (
            "is a T5 model but no --source_prefix is set",
            "e.g. --source_prefix 'translate English to German: '",
        ),
        model="t5",
    ),
    "translation-over_long_lines_truncated": Proceeds(
        TRANSLATION,
        lambda d: [
            *d.lines(),
            *d.lines("validation"),
            "--max_source_length",
            "3",
            "--max_target_length",
            "4",
        ],
        (
            "train: 10 of 10 sources were longer than --max_source_length 3 tokens and were truncated",
            "train: 10 of 10 targets were longer than --max_target_length 4 tokens",
        ),
    ),
    "speech_recognition-skip_bad_examples": Proceeds(
        SPEECH,
        lambda d: [*_bad_clips(d), *_speech_validation(d), "--skip_bad_examples", "--max_bad_fraction", "0.5"],
        ("--skip_bad_examples: skipped 4 of 10 rows of train split ({d}/train.csv)",),
        {"skipped_bad_examples": 4, "skipped_bad_examples_train": 4},
    ),
    "speech_recognition-stereo_downmixed": Proceeds(
        SPEECH,
        lambda d: [*_stereo(d), *_speech_validation(d)],
        ("1 multi-channel clip(s) downmixed to mono",),
        {"downmixed_to_mono_train": 1},
    ),
    "speech_recognition-eval_characters_missing_from_ctc_vocabulary": Proceeds(
        SPEECH,
        lambda d: [
            *d.good(SPEECH),
            *d.table(SPEECH, ["audio,text", f"{d.clips(1)[0][0]},quack"], "validation.csv", "validation"),
        ],
        (
            "validation split ({d}/validation.csv): characters missing from the CTC vocabulary (they become [UNK]): "
            "'a' 'c' 'k' 'q'",
        ),
    ),
    "speech_recognition-long_clip_dropped_with_max_duration": Proceeds(
        SPEECH,
        lambda d: [
            *d.table(SPEECH, [*d.rows(SPEECH), _long_clip(d)]),
            *_speech_validation(d),
            "--language",
            "en",
            "--max_duration_s",
            "3",
        ],
        ("dropped 1 of 7 clips outside [None, 3.0] s",),
        {"duration_filtered_train": 1},
        model="whisper",
    ),
}


@pytest.mark.parametrize("case", list(PROCEEDS))
def test_handled_input_reaches_training_with_a_report(case, models, data, tmp_path, monkeypatch, caplog):
    spec = PROCEEDS[case]
    captured = {}
    module = text_classification if spec.recipe == SENTIMENT else RECIPES[spec.recipe]

    def run(task, args, finetune_args) -> dict:
        captured["task"] = task
        return {}

    monkeypatch.setattr(module, "finetune", run)
    argv = ["--model_name_or_path", models[spec.model or MODEL[spec.recipe]], *spec.args(data)]
    with caplog.at_level(logging.INFO):
        results = RECIPES[spec.recipe].main([*argv, *fast_args(tmp_path / "out")])
    assert "task" in captured, "the recipe never reached training"
    assert_explains(caplog.text, [fragment.format_map(data.vars) for fragment in spec.logged])
    reported = {**results, **captured["task"].data_results}  # data counts reach all_results.json through the Task
    assert {key: reported.get(key) for key in spec.results} == spec.results
    if spec.train_rows is not None:
        assert len(captured["task"].train_dataset) == spec.train_rows


# --- the same errors through the command-line entry points -------------------------------------------------------


MISSING_DATA = {
    TEXT: ["--train_file", "missing.csv"],
    SENTIMENT: ["--train_file", "missing.csv"],
    IMAGE: ["--train_dir", "missing"],
    SPEECH: ["--train_file", "missing.csv"],
    TRANSLATION: ["--train_source_file", "missing.en", "--train_target_file", "missing.de"],
    TOKEN: ["--train_file", "missing.conll"],
    AUDIO: ["--train_file", "missing.csv"],
    QA: ["--train_file", "missing.json"],
}


@pytest.mark.parametrize("recipe", ALL)
def test_finetune_recipes_run_exits_2(recipe, models, tmp_path, capsys):
    out = tmp_path / "out"
    flags = [*MISSING_DATA[recipe]]
    flags[1] = str(tmp_path / flags[1])
    with pytest.raises(SystemExit) as exit_:
        cli.main(
            ["run", recipe, "--model_name_or_path", models[MODEL[recipe]], *flags, "--output_dir", str(out)]
        )
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {flags[0]} {flags[1]} ")
    assert not out.exists()


@pytest.mark.slow
def test_recipe_scripts_exit_2_with_one_error_line(tmp_path):
    """Each recipe file run as a script (its `__main__` block), all in one interpreter to pay the imports once."""
    driver = textwrap.dedent(f"""
        import runpy, sys
        for recipe, flags in {MISSING_DATA!r}.items():
            sys.argv = [f"recipes/{{recipe}}.py", *flags, "--output_dir", f"out_{{recipe}}"]
            try:
                runpy.run_path(f"{ROOT}/recipes/{{recipe}}.py", run_name="__main__")
            except SystemExit as exit_:
                print("EXIT", recipe, exit_.code, flush=True)
                print("--", file=sys.stderr, flush=True)
    """)
    result = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    exits = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("EXIT ")]
    assert exits == [[recipe, "2"] for recipe in MISSING_DATA], result.stderr[-3000:]
    for recipe, error in zip(MISSING_DATA, result.stderr.split("--\n")):
        lines = [line for line in error.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and lines[0].startswith(f"error: {MISSING_DATA[recipe][0]} "), error[-2000:]
        assert "does not exist" in lines[0] or "is not a directory" in lines[0]
        assert not (tmp_path / f"out_{recipe}").exists()


def test_every_registered_recipe_meets_the_bad_input_cases():
    """Each recipe of `recipes.RECIPES` is run through the matrix: it meets at least one bad-input case, and the
    cases name no recipe the registry does not hold."""
    covered = {recipe for case in CASES.values() for recipe in case.recipes}
    assert covered == set(recipes.RECIPES), f"no bad-input case for {sorted(set(recipes.RECIPES) - covered)}"
