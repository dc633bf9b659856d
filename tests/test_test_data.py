"""The test suite's own data in tests/data: inside the repository, sourced, small, and what its script makes."""

from __future__ import annotations

import csv
import importlib.util
import re

import pytest
from conftest import ROOT

# A path joined to a folder named shared, or a string that starts with ../shared: the data folder beside the
# checkout that only the project's own machines have.
OUTSIDE = re.compile(r'/\s*"shared"|"shared"\s*/|"(\.\./)+shared')


def _script():
    spec = importlib.util.spec_from_file_location("make_test_data", ROOT / "bench" / "make_test_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_test_reads_data_from_outside_the_repository():
    """Tests and fixtures find their data in tests/data, so a fresh clone runs the suite. Only the script that
    rebuilds tests/data (bench/make_test_data.py) reads the full sets, where the benchmarks find them."""
    tests = ROOT / "tests"
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in sorted(tests.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert found == []


def test_every_set_names_its_source_and_license_and_all_stay_under_15_mb(test_data):
    """Each set says where it comes from, under what license and how the script made it; the files a manifest
    names are there; the whole stays small enough to live in the repository."""
    sets = {p.name: p for p in test_data.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert {"clothing_small", "fsdd", "sms_spam", "squad_questions", "toy_en_de", "wnut17"} <= sets.keys()
    for name, folder in sets.items():
        source = (folder / "SOURCE.md").read_text(encoding="utf-8")
        assert "License" in source and "make_test_data.py" in source, name
    assert sum(p.stat().st_size for p in test_data.rglob("*") if p.is_file()) < 15_000_000
    with open(test_data / "fsdd" / "metadata.csv", newline="") as handle:
        missing = [row["file"] for row in csv.DictReader(handle) if not (test_data / "fsdd" / row["file"]).is_file()]
    assert missing == []


def test_toy_translation_pairs_are_what_the_script_writes(test_data, tmp_path):
    """The generated pairs need no full data set: rebuilding them gives the committed files, line-aligned."""
    _script().toy_en_de(tmp_path)
    committed = sorted(p.name for p in (test_data / "toy_en_de").iterdir() if p.suffix in (".en", ".de"))
    assert committed == sorted(p.name for p in (tmp_path / "toy_en_de").iterdir())
    for name in committed:
        assert (tmp_path / "toy_en_de" / name).read_bytes() == (test_data / "toy_en_de" / name).read_bytes(), name
    for split in ("train", "val", "test"):
        en, de = ((test_data / "toy_en_de" / f"{split}.{lang}").read_text().splitlines() for lang in ("en", "de"))
        assert len(en) == len(de) == len(set(en))


@pytest.mark.parametrize("question, kind", [
    ("Who wrote Hamlet?", "who"),
    ("Whose crown did he take?", "who"),
    ("In what year did the war end?", "what"),
    ("How many moons does Mars have?", "how many"),
    ("Doctor Who first aired when?", "when"),  # a capitalised "Who" inside the question is a name
    ("Which river is the longest?", None),
    ("How old is the oak?", None),
    ("Name the longest river.", None),
])
def test_question_kind_is_named_by_the_first_question_word(question, kind):
    """The documented rule that labels the SQuAD questions: the first question word, not a name that contains one."""
    assert _script().question_kind(question) == kind


def test_question_files_follow_the_kind_rule(test_data):
    """Every committed question carries the kind the rule gives it, read with csv quoting off."""
    make = _script()
    for split in ("train", "test"):
        with open(test_data / "squad_questions" / f"{split}.tsv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        assert rows and all(make.question_kind(row["text"]) == row["kind"] for row in rows), split
