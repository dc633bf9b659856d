"""Datasets in layouts the recipes meet in the wild, read by options alone: each trains on every class or fails
before training with an error naming the option that fixes it."""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import shutil

import pytest
import yaml
from conftest import fast_args

from common.core.errors import RecipeInputError
from common.data import load_splits
from common.data.options import DataArguments
from recipes import (
    audio_classification,
    image_classification,
    sentiment,
    speech_recognition,
    text_classification,
    translation,
)

pytestmark = pytest.mark.usefixtures("one_thread")

POSITIVE = ["a wonderful film", "great acting and a moving story", "i loved every minute", "superb and funny"]
NEGATIVE = ["a dull mess", "terrible acting and a boring plot", "i hated every minute", "awful and slow"]
TOPICS = {1: ["election", "minister", "parliament"], 2: ["goal", "match", "league"],
          3: ["shares", "profit", "market"], 4: ["software", "chip", "robot"]}


def _sorted_reviews(path, n: int = 200) -> str:
    """Every positive review first, then every negative one: the layout a prefix cap turns into one class."""
    rng = random.Random(0)
    rows = [(f"{rng.choice(POSITIVE)} {i}", 1) for i in range(n)] + [(f"{rng.choice(NEGATIVE)} {i}", 0) for i in range(n)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)
    return str(path)


def _ag_news_like(path, n: int = 400) -> str:
    """Header-less, every field quoted, class ids 1..4 then title then body (the AG News csv layout)."""
    rng = random.Random(1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        for i in range(n):
            label = i % 4 + 1
            words = rng.sample(TOPICS[label], 2)
            writer.writerow([label, f"{words[0]} news {i}", f"A report, with commas, about the {words[1]} today."])
    return str(path)


def _args(**kwargs) -> DataArguments:
    return DataArguments(**kwargs)


# ----------------------------------------------------------------------------------------------- readers


@pytest.mark.slow
def test_header_less_csv_with_one_based_labels_and_class_names_file(tiny_bert, tmp_path):
    data = _ag_news_like(tmp_path / "train.csv")
    with pytest.raises(RecipeInputError, match="--column_names"):  # its first row is data, not a header
        load_splits(_args(train_file=data))
    classes = tmp_path / "classes.txt"
    classes.write_text("World\nSports\nBusiness\nSci/Tech\n")
    out = tmp_path / "out"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_file", data, "--column_names", "label,title,body",
        "--text_columns", "title", "body", "--class_names_file", str(classes),
        *fast_args(out, num_train_epochs=4, learning_rate=3e-3, per_device_train_batch_size=16),
    ])
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}
    assert results["train_samples"] == 360  # no row became the header
    assert results["eval_accuracy"] >= 0.5  # four balanced classes: chance is 0.25


@pytest.mark.slow
def test_tab_separated_file_without_extension_or_header_real_sms_spam(minilm, test_data, tmp_path):
    """The real SMS Spam Collection by config alone: no header, no extension, tabs, quotes that are text."""
    config = tmp_path / "sms.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": minilm, "train_file": str(test_data / "sms_spam/SMSSpamCollection"),
        "delimiter": "\\t", "column_names": ["label", "text"], "max_train_samples": 400, "max_eval_samples": 300,
        "learning_rate": 1.5e-4, "max_seq_length": 64,
    }))
    out = tmp_path / "out"
    results = text_classification.main(["--config", str(config), *fast_args(out, num_train_epochs=2, eval_strategy="no",
                                                                             per_device_train_batch_size=16)])
    assert results["train_samples"] == 400 and results["eval_samples"] == 300
    assert json.loads((out / "config.json").read_text())["label2id"] == {"ham": 0, "spam": 1}
    assert results["eval_accuracy"] > 0.93  # the majority baseline (all ham) is 0.864


def test_pipe_delimited_manifest_with_commas_in_transcripts(test_data, tmp_path):
    files = sorted((test_data / "fsdd/recordings").glob("*.wav"))[:6]
    manifest = tmp_path / "manifest.psv"
    manifest.write_text("path|text\n" + "".join(f"{f}|zero, one, {i}\n" for i, f in enumerate(files)))
    with pytest.raises(RecipeInputError, match=r"single column when split on ','.*Set --delimiter '\|'"):
        load_splits(_args(train_file=str(_copy(manifest, ".csv"))))  # read as commas, it falls apart
    for args in (_args(train_file=str(manifest)), _args(train_file=str(_copy(manifest, ".csv")), delimiter="|")):
        train = load_splits(args)["train"]
        assert train.column_names == ["path", "text"] and train["text"][2] == "zero, one, 2"


def _dry_run(recipe, monkeypatch, argv: list[str]):
    """Run a recipe up to training and return the Task it hands to `finetune` (nothing trains)."""
    captured = {}
    monkeypatch.setattr(recipe, "finetune", lambda task, args, ft: captured.update(task=task) or {})
    recipe.main(argv)
    return captured["task"]


def test_manifests_naming_files_by_bare_ids_with_a_path_template(test_data, vit, tmp_path, monkeypatch):
    """LJSpeech's layout (`ID|transcript|normalized`, no header, clips in wavs/ID.wav) and an image table of ids:
    --audio_path_template / --image_path_template turn each id into a file relative to the manifest, in YAML and
    on the command line; a template without {} and an id without a file fail naming the row, id and path."""
    from common.models.tiny import tiny_wav2vec2_ctc

    encoder = tiny_wav2vec2_ctc(tmp_path / "encoder")
    corpus = tmp_path / "ljs"
    (corpus / "wavs").mkdir(parents=True)
    lines = []
    for i, digit in enumerate([0, 1] * 6):
        shutil.copy(test_data / f"fsdd/recordings/{digit}_jackson_{i // 2}.wav", corpus / "wavs" / f"LJ001-{i:04d}.wav")
        word = ["zero", "one"][digit]
        lines.append(f"LJ001-{i:04d}|{word.capitalize()}.|{word}\n")
    (corpus / "metadata.csv").write_text("".join(lines))
    options = {"model_name_or_path": encoder, "train_file": str(corpus / "metadata.csv"), "delimiter": "|",
               "column_names": ["id", "transcript", "normalized"], "audio_column": "id",
               "audio_path_template": "wavs/{}.wav", "validation_split": 0.25, "output_dir": str(tmp_path / "out")}
    config = tmp_path / "ljs.yaml"
    config.write_text(yaml.safe_dump({**options, "text_column": "normalized"}))
    task = _dry_run(speech_recognition, monkeypatch, ["--config", str(config)])
    assert len(task.train_dataset) + len(task.eval_dataset) == 12

    flags = [x for key, value in options.items() if key != "column_names" for x in (f"--{key}", str(value))]
    flags += ["--column_names", "id,transcript,normalized"]
    task = _dry_run(audio_classification, monkeypatch, [*flags, "--label_column", "normalized"])
    assert task.label_spec.names == ["one", "zero"] and len(task.train_dataset) + len(task.eval_dataset) == 12

    with pytest.raises(RecipeInputError, match=r"--audio_path_template 'wavs/clip.wav' has no \{\}"):
        _dry_run(audio_classification, monkeypatch, [*flags, "--label_column", "normalized",
                                                     "--audio_path_template", "wavs/clip.wav"])
    with open(corpus / "metadata.csv", "a") as handle:
        handle.write("LJ009-9999|Zero.|zero\n")
    missing = str(corpus / "wavs/LJ009-9999.wav")
    with pytest.raises(RecipeInputError, match=rf"row 13 \(id 'LJ009-9999': no file {re.escape(missing)}\)"):
        _dry_run(speech_recognition, monkeypatch, ["--config", str(config)])

    images = tmp_path / "photos"
    rows = []
    for i, kind in enumerate(["hat", "shoes"] * 6):
        source = sorted((test_data / "clothing_small/train" / kind).iterdir())[i]
        (images / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(source, images / "img" / f"p{i:03d}.jpg")
        rows.append(f"p{i:03d},{kind}\n")
    (images / "labels.csv").write_text("id,label\n" + "".join(rows))
    task = _dry_run(image_classification, monkeypatch, [
        "--model_name_or_path", vit, "--train_file", str(images / "labels.csv"), "--image_column", "id",
        "--image_path_template", "img/{}.jpg", "--validation_split", "0.25", *fast_args(tmp_path / "image")])
    assert len(task.train_dataset) + len(task.eval_dataset) == 12


def _copy(path, suffix: str):
    target = path.with_suffix(suffix)
    shutil.copyfile(path, target)
    return target


def test_quotes_that_swallow_lines_are_reported(tmp_path, caplog):
    data = tmp_path / "train.csv"
    data.write_text('text,label\n"hello there,pos\ngood day,neg\nnice",pos\nok,neg\n')
    with caplog.at_level(logging.WARNING):
        train = load_splits(_args(train_file=str(data)))["train"]
    assert len(train) == 2 and "5 lines became 3 rows" in caplog.text and "--quoting none" in caplog.text
    assert len(load_splits(_args(train_file=str(data), quoting="none"))["train"]) == 4


def test_nested_json_lines_and_json_document_with_data_field(tmp_path):
    rows = [{"id": i, "record": {"text": f"text {i}", "label": "a" if i % 2 else "b"}} for i in range(6)]
    lines = tmp_path / "train.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = load_splits(_args(train_file=str(lines), data_field="record"))["train"]
    assert sorted(train.column_names) == ["id", "label", "text"] and train["text"][3] == "text 3"
    document = tmp_path / "train.json"
    document.write_text(json.dumps({"version": 2, "data": [r["record"] for r in rows]}))
    assert load_splits(_args(train_file=str(document), data_field="data"))["train"]["label"][:2] == ["b", "a"]
    with pytest.raises(RecipeInputError, match="--data_field 'recrod'.*did you mean 'record'"):
        load_splits(_args(train_file=str(lines), data_field="recrod"))


@pytest.mark.slow
def test_text_folder_layout(tiny_bert, tmp_path):
    for split, n in (("train", 40), ("validation", 8)):
        for name, texts in (("pos", POSITIVE), ("neg", NEGATIVE)):
            folder = tmp_path / "reviews" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.txt").write_text(f"{texts[i % 4]} {i}\n")
    out = tmp_path / "out"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert, "--train_dir", str(tmp_path / "reviews/train"),
        "--validation_dir", str(tmp_path / "reviews/validation"),
        *fast_args(out, num_train_epochs=4, learning_rate=3e-3),
    ])
    assert json.loads((out / "config.json").read_text())["label2id"] == {"neg": 0, "pos": 1}
    assert results["train_samples"] == 80 and results["eval_samples"] == 16
    assert results["eval_accuracy"] > 0.75


# ----------------------------------------------------------------------------------------------- sampling


@pytest.mark.slow
def test_label_sorted_file_is_sampled_from_both_classes(minilm, tmp_path, caplog):
    data = _sorted_reviews(tmp_path / "sorted.tsv")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        results = sentiment.main(["--model_name_or_path", minilm, "--train_file", data, "--max_train_samples", "200",
                                  *fast_args(out, num_train_epochs=1, learning_rate=1e-4)])
    assert "train split: 200 rows, per class {'negative': 100, 'positive': 100}" in caplog.text
    assert results["eval_accuracy"] > 0.8


def test_single_class_train_split_fails_naming_the_counts(tiny_bert, tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"review {i},positive\n" for i in range(30)))
    with pytest.raises(RecipeInputError, match=r"single class: \{'positive': 2\d\}.*sorted by label"):
        text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", str(data),
                                  *fast_args(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_class_sorted_image_folder_with_max_train_samples_keeps_every_class(vit, test_data, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        image_classification.main([
            "--model_name_or_path", vit, "--train_dir", str(test_data / "clothing_small/train"),
            "--max_train_samples", "30", "--max_eval_samples", "20",
            *fast_args(out, num_train_epochs=1, eval_strategy="no", do_predict="false"),
        ])
    counts = next(line for line in caplog.text.splitlines() if "train split: 30 rows" in line)
    # 10 classes of 12 images: 3 of each, not the first 30 files (three classes).
    assert len(re.findall(r"'[\w-]+': 3\b", counts)) == 10


# ----------------------------------------------------------------------------------------------- bad rows


@pytest.mark.slow
def test_text_bad_rows_are_named_then_skipped_and_counted(tiny_bert, tmp_path):
    rows = [f"good review {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    rows[4], rows[9] = ",pos", "no label here,"
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    argv = ["--model_name_or_path", tiny_bert, "--train_file", str(data)]
    with pytest.raises(RecipeInputError, match=r"row 5 \(empty text in 'text'\); row 10 \(no label\).*--skip_bad_examples"):
        text_classification.main([*argv, *fast_args(tmp_path / "a")])
    out = tmp_path / "b"
    results = text_classification.main([*argv, "--skip_bad_examples", *fast_args(out, eval_strategy="no")])
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["skipped_bad_examples_train"] == 2 == results["skipped_bad_examples"]
    with pytest.raises(RecipeInputError, match=r"2 of 60 rows \(3.3%\) are bad, more than --max_bad_fraction 0.02"):
        text_classification.main([*argv, "--skip_bad_examples", "--max_bad_fraction", "0.02",
                                  *fast_args(tmp_path / "c")])


def test_parallel_files_with_an_empty_line_and_skip_bad_examples(tmp_path):
    en = [f"sentence {i}" for i in range(100)]
    de = [f"Satz {i}" for i in range(100)]
    de[41] = "   "
    (tmp_path / "t.en").write_text("\n".join(en) + "\n")
    (tmp_path / "t.de").write_text("\n".join(de) + "\n")
    files = {"train_source_file": str(tmp_path / "t.en"), "train_target_file": str(tmp_path / "t.de")}
    with pytest.raises(RecipeInputError, match="empty at lines 42.*--skip_bad_examples"):
        translation.load_pairs(translation.TranslationDataArguments(**files))
    splits, counts = translation.load_pairs(translation.TranslationDataArguments(**files, skip_bad_examples=True))
    assert len(splits["train"]) == 99 and "Satz 41" not in splits["train"]["target"]
    assert counts == {"skipped_bad_examples_train": 1, "skipped_bad_examples": 1}
    de[:10] = [""] * 10
    (tmp_path / "t.de").write_text("\n".join(de) + "\n")
    with pytest.raises(RecipeInputError, match="11 of 100 rows .* --max_bad_fraction 0.05"):
        translation.load_pairs(translation.TranslationDataArguments(**files, skip_bad_examples=True))


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> str:
    from common.models.tiny import tiny_vit

    return tiny_vit(tmp_path_factory.mktemp("vit"))


def test_reader_options_reach_translation_tables_and_name_lists(tmp_path):
    table = tmp_path / "pairs"  # no header, no extension, tab-separated, quotes that are text
    table.write_text('a "small" cat\teine "kleine" Katze\na dog\tein Hund\n')
    args = translation.TranslationDataArguments(train_file=str(table), delimiter="tab", column_names=["en", "de"],
                                                source_lang="en", target_lang="de")
    train = translation.load_pairs(args)[0]["train"]
    assert train["source"] == ['a "small" cat', "a dog"] and train["target"][0] == 'eine "kleine" Katze'
    from common.data.options import split_names

    assert split_names("label,title,body") == split_names(["label,title,body"]) == ["label", "title", "body"]
    assert split_names(["Business, Finance", "World"]) == ["Business, Finance", "World"]  # a YAML list stays whole
