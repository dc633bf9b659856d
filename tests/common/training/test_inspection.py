"""`finetune-recipes inspect`: each recipe reads its data as a run would, prints the report and stops, with no
model built and nothing written; bad input exits 2 with the recipe's own error."""

from __future__ import annotations

import csv
import random
import re
import shutil
import time
from pathlib import Path

import pytest
import transformers

from common.cli import main
from common.training.inspection import DataReport, inspecting, stop_for_inspection

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["market", "stocks", "shares", "bank", "oil", "price", "team", "season", "match", "league", "coach",
         "election", "vote", "senate", "court", "chip", "software", "phone", "network", "launch", "rally", "storm",
         "record", "quarter", "profit"]


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Any model built (from_pretrained or from_config) fails the test: inspect must load no weights."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"inspect built a model: {type(self).__name__}")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", refuse)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run from an empty folder, so a default output dir (outputs/...) would show up there."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def inspect(capsys, *argv: str) -> tuple[int, str, str]:
    """common.cli.main(["inspect", ...]) in-process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(["inspect", *argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def ag_news_like(path: Path, rows: int = 10_000) -> Path:
    """Header-less, every field quoted, class ids 1..4 then title and body: the AG News layout."""
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        for _ in range(rows):
            title = " ".join(rng.choices(WORDS, k=rng.randint(3, 10))).capitalize()
            body = " ".join(rng.choices(WORDS, k=rng.randint(10, 180))) + "."
            writer.writerow([rng.randint(1, 4), title, body])
    return path


def section(out: str, split: str) -> str:
    """The report's block for one split."""
    start = out.index(f"== {split} (")
    end = out.find("\n== ", start + 1)
    return out[start: end if end != -1 else None]


def test_stop_for_inspection_is_a_no_op_outside_inspect():
    assert stop_for_inspection(DataReport("x", splits=None)) is None  # nothing rendered, nothing raised
    with inspecting(), pytest.raises(BaseException) as stopped:
        from datasets import Dataset, DatasetDict

        stop_for_inspection(DataReport("x", DatasetDict(train=Dataset.from_dict({"text": ["a"]}))))
    assert type(stopped.value).__name__ == "InspectionDone"


def test_headerless_csv_report(capsys, in_tmp, tmp_path, minilm):
    data = ag_news_like(tmp_path / "ag_news.csv")
    start = time.perf_counter()
    code, out, _ = inspect(capsys, "text_classification", "--train_file", str(data), "--column_names", "label,title,body",
                           "--text_columns", "title", "body", "--label_column", "label", "--model_name_or_path", minilm)
    elapsed = time.perf_counter() - start
    assert code == 0, out
    assert elapsed < 30, f"inspect took {elapsed:.1f} s on 10k rows"
    assert "title, body (given by --text_columns)" in out
    assert "label (--label_column, its default)" in out  # given, but with the default value
    assert "single_label_classification (inferred from the train labels)" in out
    assert "labels        4: 1, 2, 3, 4" in out
    assert re.search(r"train\s+9000 rows", out) and re.search(r"validation\s+1000 rows", out)
    for split, total in (("train", 9000), ("validation", 1000)):
        block = section(out, split)
        counts = [int(n) for n in re.findall(r"^  [1-4]\s+(\d+)\s+[\d.]+%$", block, re.M)]
        assert len(counts) == 4 and sum(counts) == total, block
        assert "bad rows: none" in block
        assert len(re.findall(r"^  #\d+", block, re.M)) == 3  # three example rows
        stats = re.search(r"title \+ body \(as a pair\): min\s+\d+\s+p50\s+(\d+)\s+p95\s+(\d+)\s+p99\s+(\d+)\s+max\s+(\d+)",
                          block)
        assert stats, block
        p50, p95, p99, top = map(int, stats.groups())
        assert p50 <= p95 <= p99 <= top
        share = re.search(r"--max_seq_length 128 would truncate ([\d.]+)% \((\d+) of (\d+)\)", block)
        assert share and int(share.group(3)) == total and 0 < float(share.group(1)) < 100
        assert (int(share.group(2)) > 0) == (top > 128)
    assert not any(in_tmp.iterdir()), "inspect created files (an output dir?)"


def test_headerless_csv_without_column_names_exits_2(capsys, in_tmp, tmp_path, minilm):
    data = ag_news_like(tmp_path / "ag_news.csv", rows=50)
    code, out, err = inspect(capsys, "text_classification", "--train_file", str(data), "--text_columns", "title", "body",
                             "--model_name_or_path", minilm)
    assert code == 2
    assert err.startswith("error: ") and "--column_names" in err
    assert "inspect text_classification" not in out


def test_sms_spam_counts(capsys, in_tmp, test_data, minilm):
    code, out, _ = inspect(capsys, "text_classification", "--train_file", str(test_data / "sms_spam/SMSSpamCollection"),
                           "--delimiter", "\\t", "--column_names", "label,text", "--model_name_or_path", minilm)
    assert code == 0, out
    assert "labels        2: ham, spam" in out
    counts = {}
    for split in ("train", "validation"):
        block = section(out, split)
        counts[split] = {name: int(n) for name, n in re.findall(r"^  (ham|spam)\s+(\d+)", block, re.M)}
        assert "text: min" in block and "--max_seq_length 128 would truncate" in block
    # The first 3000 lines of the collection, 72 of them with '"' in the text (tests/data/sms_spam/SOURCE.md).
    assert sum(c["ham"] for c in counts.values()) == 2591
    assert sum(c["spam"] for c in counts.values()) == 409
    assert not any(in_tmp.iterdir())


def test_bad_rows_fail_or_are_listed(capsys, in_tmp, tmp_path, minilm):
    rows = [{"text": f"message number {i}", "label": "ham" if i % 3 else "spam"} for i in range(60)]
    rows[7]["text"] = "   "
    data = tmp_path / "messages.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    args = ["text_classification", "--train_file", str(data), "--model_name_or_path", minilm]
    code, out, err = inspect(capsys, *args)
    assert code == 2 and "row 8 (empty text in 'text')" in err and "--skip_bad_examples" in err
    assert out == ""
    code, out, _ = inspect(capsys, *args, "--skip_bad_examples")
    assert code == 0
    block = section(out, "train")
    assert "bad rows: 1 skipped (--skip_bad_examples)" in block and "row 8 (empty text in 'text')" in block


def test_existing_output_dir_is_left_alone(capsys, in_tmp, test_data, minilm):
    """A non-empty output dir (a finished run's) neither stops inspect nor is written into."""
    out_dir = in_tmp / "previous-run"
    out_dir.mkdir()
    (out_dir / "config.json").write_text("{}")
    code, out, _ = inspect(capsys, "text_classification", "--train_file", str(test_data / "squad_questions/train.tsv"),
                           "--label_column", "kind", "--max_train_samples", "300",
                           "--model_name_or_path", minilm, "--output_dir", str(out_dir))
    assert code == 0, out
    assert re.search(r"train\s+300 rows", out)
    assert sorted(p.name for p in in_tmp.rglob("*")) == ["config.json", "previous-run"]


def test_copied_recipe_script(capsys, in_tmp, tmp_path, test_data, minilm, monkeypatch):
    monkeypatch.setattr("sys.argv", ["finetune-recipes"])  # a .py recipe runs as a script, with its own sys.argv
    main(["cp", "text_classification", str(tmp_path / "mine.py")])
    script = str(tmp_path / "mine.py")
    code, out, _ = inspect(capsys, script, "--train_file", str(test_data / "sms_spam/train.tsv"), "--max_train_samples",
                           "200", "--model_name_or_path", minilm)
    assert code == 0 and re.search(r"train\s+200 rows", out)
    plain = tmp_path / "plain.py"
    plain.write_text("print('training')\n")
    code, out, err = inspect(capsys, str(plain))
    assert code == 2 and "stop_for_inspection" in err and "training" not in out


def test_image_folder_sizes_and_classes(capsys, in_tmp, test_data, tmp_path):
    code, out, _ = inspect(capsys, "image_classification", "--train_dir", str(test_data / "clothing_small/train"))
    assert code == 0, out
    assert re.search(r"labels\s+10: dress, hat, longsleeve, outwear, pants, shirt, shoes, shorts, skirt, t-shirt", out)
    block = section(out, "train")
    assert len(re.findall(r"^  \S+\s+\d+\s+[\d.]+%$", block, re.M)) == 10
    assert re.search(r"width : min\s+\d+\s+p50\s+\d+\s+p95\s+\d+\s+p99\s+\d+\s+max\s+\d+", block)
    assert re.search(r"height: min\s+\d+\s+p50\s+\d+\s+p95\s+\d+\s+p99\s+\d+\s+max\s+\d+", block)
    assert not any(in_tmp.iterdir())

    # A corrupt file: the recipe's own error (exit 2), or with --skip_bad_examples skipped and named.
    root = tmp_path / "images"
    for name in ("dress", "hat"):
        (root / name).mkdir(parents=True)
        for photo in sorted((test_data / "clothing_small/train" / name).iterdir())[:6]:
            shutil.copy(photo, root / name / photo.name)
    (root / "hat" / "broken.jpg").write_bytes(b"not a jpeg")
    code, out, err = inspect(capsys, "image_classification", "--train_dir", str(root))
    assert code == 2 and "broken.jpg" in err and "--skip_bad_examples" in err
    code, out, _ = inspect(capsys, "image_classification", "--train_dir", str(root), "--skip_bad_examples",
                           "--max_bad_fraction", "0.5")
    assert code == 0
    assert "bad rows: 1 skipped (--skip_bad_examples)" in out and "broken.jpg" in out


@pytest.fixture(scope="module")
def tiny_ctc(tmp_path_factory) -> str:
    from common.models.tiny import tiny_wav2vec2_ctc

    return tiny_wav2vec2_ctc(tmp_path_factory.mktemp("tiny-ctc"))


def test_speech_durations_and_native_rates(capsys, in_tmp, test_data, tiny_ctc):
    code, out, _ = inspect(capsys, "speech_recognition", "--train_file", str(test_data / "fsdd/metadata.csv"),
                           "--split_column", "split", "--max_train_samples", "200", "--max_eval_samples", "20",
                           "--max_predict_samples", "40", "--model_name_or_path", tiny_ctc)
    assert code == 0, out
    assert "file (default: the first of audio, path, file" in out
    assert "transcript (default: the first of text, transcript" in out
    for split, rows in (("train", 200), ("validation", 20), ("test", 40)):
        block = section(out, split)
        assert f"({rows} rows)" in block
        assert re.search(r"durations in seconds: min\s+[\d.]+\s+p50\s+[\d.]+\s+p95\s+[\d.]+\s+p99\s+[\d.]+\s+max\s+[\d.]+",
                         block)
        assert f"native sample rates ({rows} files): 8000 Hz: {rows}; decoded at 16000 Hz" in block
        assert re.search(r"duration\s+\d+\.\d\d s", block)
    assert not any(in_tmp.iterdir())


@pytest.fixture(scope="module")
def parallel(tmp_path_factory) -> tuple[Path, Path, str]:
    """200 line-aligned en/de pairs (line 4 has no source) and a tiny Marian whose tokenizer learnt them."""
    from common.models.tiny import tiny_marian

    folder = tmp_path_factory.mktemp("parallel")
    rng = random.Random(0)
    english = ["the", "a", "man", "woman", "dog", "walks", "runs", "in", "park", "street", "red", "blue"]
    german = ["der", "die", "mann", "frau", "hund", "geht", "läuft", "im", "park", "straße", "rot", "blau"]
    sources, targets = [], []
    for _ in range(200):
        picks = [rng.randrange(len(english)) for _ in range(rng.randint(2, 14))]
        sources.append(" ".join(english[i] for i in picks))
        targets.append(" ".join(german[i] for i in picks))
    sources[3] = ""
    (folder / "train.en").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (folder / "train.de").write_text("\n".join(targets) + "\n", encoding="utf-8")
    return folder / "train.en", folder / "train.de", tiny_marian(folder / "marian", sources + targets, vocab_size=120)


def test_translation_pairs(capsys, in_tmp, parallel):
    source, target, marian = parallel
    args = ["translation", "--train_source_file", str(source), "--train_target_file", str(target),
            "--model_name_or_path", marian, "--max_source_length", "8"]
    code, _, err = inspect(capsys, *args)
    assert code == 2 and "empty at lines 4" in err  # the recipe's own error
    code, out, _ = inspect(capsys, *args, "--skip_bad_examples")
    assert code == 0, out
    assert "lines of --train_source_file (line-aligned files)" in out
    block = section(out, "train")
    assert "(179 rows)" in block and "bad rows: 1 skipped (--skip_bad_examples)" in block
    assert re.search(r"source: min\s+\d+\s+p50", block) and re.search(r"target: min\s+\d+\s+p50", block)
    share = re.search(r"--max_source_length 8 would truncate ([\d.]+)% \((\d+) of 179\)", block)
    assert share and 0 < float(share.group(1)) < 100
    assert "--max_target_length 128 would truncate 0.0%" in block
    assert not any(in_tmp.iterdir())


def test_text_folder_nested_jsonl_and_label_sorted_layouts(capsys, in_tmp, tmp_path, minilm):
    for name, words in (("pos", "a fine film"), ("neg", "a dull film")):
        folder = tmp_path / "texts" / name
        folder.mkdir(parents=True)
        for i in range(20):
            (folder / f"{i}.txt").write_text(f"{words} {i}")
    code, out, _ = inspect(capsys, "text_classification", "--train_dir", str(tmp_path / "texts"),
                           "--model_name_or_path", minilm)
    assert code == 0 and re.search(r"neg\s+18\b", section(out, "train")) and re.search(r"pos\s+18\b", out)

    nested = tmp_path / "train.jsonl"
    nested.write_text("".join(f'{{"id": {i}, "record": {{"text": "note {i}", "label": "{"ab"[i % 2]}"}}}}\n'
                              for i in range(30)))
    code, out, _ = inspect(capsys, "text_classification", "--train_file", str(nested), "--data_field", "record",
                           "--model_name_or_path", minilm)
    assert code == 0  # 30 rows, 3 held out: 27 train rows, the two classes 13 and 14 either way round
    assert re.search(r"\ba\s+1[34]\b", section(out, "train")) and re.search(r"\bb\s+1[34]\b", section(out, "train"))

    sorted_file = tmp_path / "sorted.tsv"
    sorted_file.write_text("sentence\tlabel\n" + "".join(f"good {i}\t1\n" for i in range(500))
                           + "".join(f"bad {i}\t0\n" for i in range(500)))
    code, out, _ = inspect(capsys, "sentiment", "--train_file", str(sorted_file), "--max_train_samples", "200",
                           "--model_name_or_path", minilm)
    assert code == 0
    assert re.search(r"negative\s+100\b", section(out, "train")) and re.search(r"positive\s+100\b", out)
