"""Every bad input of the text recipes fails before training, names the problem, and leaves output_dir alone."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from common.errors import RecipeInputError
from recipes import text_classification

GOOD = [{"text": f"row {i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]


def _write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


CASES = {
    "missing file": (lambda d: ["--train_file", str(d / "nope.csv")], r"--train_file .*nope.csv does not exist"),
    "bad extension": (lambda d: ["--train_file", _write(d / "t.xlsx", "x")], r"unsupported extension '.xlsx'.*csv, .tsv"),
    "missing text column": (
        lambda d: ["--train_file", _write(d / "t.csv", "review,label\na,1\nb,0\n")],
        r"no text column found .*t.csv.*Columns present: review, label. Set --text_columns",
    ),
    "missing label column": (
        lambda d: ["--train_file", _write(d / "t.csv", "text,stars\na,1\nb,0\n")],
        r"'label' not found in train split .*t.csv.*Columns present: text, stars",
    ),
    "empty split": (
        lambda d: ["--train_file", _write(d / "t.csv", "text,label\na,1\nb,0\n"),
                   "--validation_file", _write(d / "v.csv", "text,label\n")],
        r"--validation_file .*v.csv has no rows",
    ),
    "mixed label types csv": (
        lambda d: ["--train_file", _write(d / "t.csv", "text,label\na,1\nb,positive\nc,0\n")],
        r"label column 'label' of train split .*mixes numbers and names .*'1'.*'positive'",
    ),
    "mixed label types jsonl": (
        lambda d: ["--train_file", _write(d / "t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n')],
        r"label column 'label' of train split .*t.jsonl\) mixes types: int \(e.g. 1\), str \(e.g. 'pos'\)",
    ),
    "non-utf8": (
        lambda d: ["--train_file", _write(d / "t.csv", b"text,label\ncaf\xe9,1\nb,0\n")],
        r"t.csv is not valid UTF-8: byte 0xe9 at byte offset 14.*Re-encode",
    ),
    "validation split": (
        lambda d: ["--train_file", _write(d / "t.csv", "text,label\na,1\n"), "--validation_split", "0"],
        r"--validation_split 0.0 is outside \(0, 1\)",
    ),
    "unknown config key": (
        lambda d: ["--config", _write(d / "c.yaml", "train_fil: x.csv\n")],
        r"unknown key 'train_fil' in .*c.yaml \(did you mean 'train_file'\?\)",
    ),
    "unknown label at eval": (
        lambda d: ["--train_file", _write(d / "t.csv", "text,label\na,pos\nb,neg\n"),
                   "--validation_file", _write(d / "v.csv", "text,label\na,pos\nb,meh\n")],
        r"labels \['meh'\] in validation split .*v.csv\) never occur in training \(neg, pos\)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_before_training(case, tiny_bert, tmp_path):
    make_args, message = CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    start = time.monotonic()
    with pytest.raises(RecipeInputError, match=message):
        text_classification.main(["--model_name_or_path", tiny_bert, "--output_dir", str(out),
                                  "--overwrite_output_dir", *make_args(tmp_path)])
    assert time.monotonic() - start < 30
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "earlier results"


def test_non_empty_output_dir_is_refused(tiny_bert, csv_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.9}))
    with pytest.raises(RecipeInputError, match="already exists and is not empty.*--overwrite_output_dir"):
        text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", csv_file(GOOD),
                                  "--output_dir", str(out)])
    assert json.loads((out / "all_results.json").read_text()) == {"eval_accuracy": 0.9}


def test_script_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "recipes/text_classification.py", "--train_file", str(tmp_path / "missing.csv"),
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --train_file")
    assert not (tmp_path / "out").exists()
