"""Rebuild the test suite's data in tests/data/ from the full public sets.

    python bench/make_test_data.py                  # reads the full sets where the benchmarks do ($FINETUNE_DATA)
    FINETUNE_DATA=/data/full python bench/make_test_data.py

Each folder of tests/data/ has a SOURCE.md with its origin, its license and the rule below that made it. The rules are
deterministic: the same full sets give the same subsets (files copied unchanged, seeded shuffles, fixed rules).
Research-only sets (SST-2, TREC, Multi30k) are not redistributed: their roles are filled by SMS Spam (CC BY 4.0),
questions from SQuAD v1.1 (CC BY-SA 4.0) labelled by their wh-word, and English-German pairs this script writes.
Only the data files are rewritten; SOURCE.md and LICENSE files are kept.
"""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data"
KEEP = {"SOURCE.md", "LICENSE"}


def source_root() -> Path:
    """The full sets, found as every benchmark finds them (bench/harness.py: $FINETUNE_DATA)."""
    from harness import data  # here, not at the top: tests import this module's rules without the full sets

    return data()


def fresh(out: Path, name: str) -> Path:
    """out/<name>, emptied of everything this script writes."""
    folder = out / name
    folder.mkdir(exist_ok=True)
    for path in folder.iterdir():
        if path.name not in KEEP:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return folder


def write_tsv(path: Path, header: list[str], rows: list[tuple]) -> None:
    # No field holds a tab, a newline or a '"' (the rules drop those rows): the file reads the same with and
    # without csv quoting, like the SST-2 and TREC files it stands in for.
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        writer.writerows([header, *rows])


def plain(text: str) -> bool:
    return bool(text.strip()) and not any(c in text for c in '\t\n\r"')


# --- clothing_small: the first 12 photos of each class in each split, 64 px on the short side -----------------------

def clothing(src: Path, out: Path, per_class: int = 12, short_side: int = 64) -> None:
    from PIL import Image

    dest = fresh(out, "clothing_small")
    shutil.copy(src / "clothing_small" / "LICENSE", dest / "LICENSE")
    for split in ("train", "validation", "test"):
        for folder in sorted(p for p in (src / "clothing_small" / split).iterdir() if p.is_dir()):
            (dest / split / folder.name).mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:per_class]:
                with Image.open(photo) as image:
                    scale = short_side / min(image.size)
                    size = (round(image.width * scale), round(image.height * scale))
                    small = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
                small.save(dest / split / folder.name / photo.name, "JPEG", quality=85)


# --- fsdd: takes 0-9 of every digit by every speaker, files unchanged --------------------------------------------------

def fsdd(src: Path, out: Path, takes: int = 10) -> None:
    dest = fresh(out, "fsdd")
    (dest / "recordings").mkdir()
    shutil.copy(src / "fsdd" / "speakers.json", dest / "speakers.json")
    with open(src / "fsdd" / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if int(row["index"]) < takes]
    with open(dest / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    for row in kept:
        shutil.copy(src / "fsdd" / row["file"], dest / row["file"])


# --- sms_spam: the authors' file, first 3000 lines; balanced binary tsvs in SST-2's layout -------------------------

def sms_spam(src: Path, out: Path, lines: int = 3000, sizes: dict[str, int] | None = None) -> None:
    dest = fresh(out, "sms_spam")
    raw = (src / "sms_spam" / "SMSSpamCollection").read_bytes().split(b"\n")
    (dest / "SMSSpamCollection").write_bytes(b"\n".join(raw[:lines]) + b"\n")

    # SST-2's role (binary sentences, label 0/1): distinct messages, as many spam (1) as ham (0) in every split.
    sizes = sizes or {"train": 640, "dev": 200, "test": 100}
    seen: set[str] = set()
    pools: dict[int, list[str]] = {0: [], 1: []}
    for line in raw:
        label, _, text = line.decode("utf-8").partition("\t")
        text = text.strip()
        if label in ("ham", "spam") and plain(text) and text not in seen:
            seen.add(text)
            pools[int(label == "spam")].append(text)
    rng = random.Random(0)
    for pool in pools.values():
        rng.shuffle(pool)
    for split, size in sizes.items():
        rows = [(pools[label].pop(), label) for label in (0, 1) for _ in range(size // 2)]
        rng.shuffle(rows)
        write_tsv(dest / f"{split}.tsv", ["sentence", "label"], rows)


# --- squad_questions: SQuAD v1.1 questions labelled by their wh-word (TREC's role) ---------------------------------

WH = {"what": "what", "who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where", "why": "why"}


def question_kind(question: str) -> str | None:
    """The kind named by the question's first wh-word: what, who (whom, whose), when, where, why, or how many.
    A capitalised wh-word inside the question is a name ("Doctor Who"), not a question word. A question whose
    first question word is another (which, how, ...) or that has none gets no kind."""
    words = re.findall(r"[A-Za-z]+", question)
    for i, word in enumerate(words):
        lower = word.lower()
        if i and word[0].isupper() or lower not in (*WH, "which", "how"):
            continue
        if lower == "how":
            return "how many" if i + 1 < len(words) and words[i + 1].lower() == "many" else None
        return WH.get(lower)
    return None


def squad_questions(src: Path, out: Path, caps: dict[str, int] | None = None) -> None:
    dest = fresh(out, "squad_questions")
    caps = caps or {"train": 240, "test": 50}
    for split, source in (("train", "train.json"), ("test", "validation.json")):
        articles = json.loads((src / "squad_v1_1" / source).read_text(encoding="utf-8"))["data"]
        questions = list(dict.fromkeys(" ".join(qa["question"].split()) for article in articles
                                       for paragraph in article["paragraphs"] for qa in paragraph["qas"]))
        random.Random(0).shuffle(questions)
        counts: dict[str, int] = {}
        rows = []
        for question in questions:
            kind = question_kind(question)
            if kind and plain(question) and counts.get(kind, 0) < caps[split]:
                counts[kind] = counts.get(kind, 0) + 1
                rows.append((question, kind))
        write_tsv(dest / f"{split}.tsv", ["text", "kind"], rows)


# --- squad_small: a few SQuAD v1.1 articles in the SQuAD JSON layout (extractive question answering) ---------------

def squad_small(src: Path, out: Path, articles: dict[str, int] | None = None, questions: int = 20) -> None:
    """The first articles of each half (3 train, 2 validation), each cut after the first paragraph that brings it
    to `questions` questions; the JSON layout, paragraphs and questions unchanged."""
    dest = fresh(out, "squad_small")
    articles = articles or {"train": 3, "validation": 2}
    for split, count in articles.items():
        document = json.loads((src / "squad_v1_1" / f"{split}.json").read_text(encoding="utf-8"))
        kept = []
        for article in document["data"][:count]:
            paragraphs, asked = [], 0
            for paragraph in article["paragraphs"]:
                if asked >= questions:
                    break
                paragraphs.append(paragraph)
                asked += len(paragraph["qas"])
            kept.append({**article, "paragraphs": paragraphs})
        (dest / f"{split}.json").write_text(json.dumps({**document, "data": kept}, ensure_ascii=False, indent=1) + "\n",
                                            encoding="utf-8")


# --- toy_en_de: simple English captions and their German, written from a small grammar (Multi30k's role) -----------

# (English, German, gender, English plural, German plural); the gender picks German articles and adjective endings.
PEOPLE = [("man", "Mann", "m", "men", "Männer"), ("woman", "Frau", "f", "women", "Frauen"),
          ("boy", "Junge", "m", "boys", "Jungen"), ("girl", "Mädchen", "n", "girls", "Mädchen"),
          ("child", "Kind", "n", "children", "Kinder"), ("worker", "Arbeiter", "m", "workers", "Arbeiter"),
          ("musician", "Musiker", "m", "musicians", "Musiker")]
ANIMALS = [("dog", "Hund", "m", "dogs", "Hunde"), ("cat", "Katze", "f", "cats", "Katzen"),
           ("horse", "Pferd", "n", "horses", "Pferde")]
ADJECTIVES = [("young", "jung"), ("old", "alt"), ("small", "klein"), ("tall", "groß"), ("happy", "fröhlich")]
COLOURS = [("red", "rot"), ("blue", "blau"), ("green", "grün"), ("black", "schwarz"), ("white", "weiß"),
           ("yellow", "gelb")]
CLOTHES = [("shirt", "Hemd", "n"), ("jacket", "Jacke", "f"), ("dress", "Kleid", "n"), ("coat", "Mantel", "m"),
           ("sweater", "Pullover", "m")]
VERBS = [("running", "läuft", "laufen"), ("sitting", "sitzt", "sitzen"), ("standing", "steht", "stehen"),
         ("walking", "geht", "gehen"), ("playing", "spielt", "spielen"), ("jumping", "springt", "springen"),
         ("waiting", "wartet", "warten"), ("sleeping", "schläft", "schlafen")]
PLACES = [("on the street", "auf der Straße"), ("in the park", "im Park"), ("on the beach", "am Strand"),
          ("in the snow", "im Schnee"), ("near the water", "am Wasser"), ("on a bench", "auf einer Bank"),
          ("in front of a building", "vor einem Gebäude"), ("on the grass", "auf dem Rasen"),
          ("in the kitchen", "in der Küche"), ("at the market", "auf dem Markt")]
NUMBERS = [("Two", "Zwei"), ("Three", "Drei")]
EIN = {"m": "Ein", "f": "Eine", "n": "Ein"}  # nominative, indefinite
STRONG = {"m": "er", "f": "e", "n": "es"}  # adjective ending after ein/eine/ein
EINEM = {"m": "einem", "f": "einer", "n": "einem"}  # dative, after "in"


def caption(rng: random.Random) -> tuple[str, str]:
    """One English caption and its German translation."""
    noun = rng.choice(PEOPLE if rng.random() < 0.7 else ANIMALS)
    adjective = rng.choice(ADJECTIVES) if rng.random() < 0.7 else None
    verb, place = rng.choice(VERBS), rng.choice(PLACES)
    if rng.random() < 0.25:  # plural: "Two young men are ..."
        number = rng.choice(NUMBERS)
        en = [number[0], *([adjective[0]] if adjective else []), noun[3], "are"]
        de = [number[1], *([adjective[1] + "e"] if adjective else []), noun[4], verb[2]]
    else:
        en = [*([adjective[0]] if adjective else []), noun[0]]
        en.insert(0, "An" if en[0][0] in "aeiou" else "A")
        de = [EIN[noun[2]], *([adjective[1] + STRONG[noun[2]]] if adjective else []), noun[1]]
        if noun in PEOPLE and rng.random() < 0.6:  # "in a red shirt": German dative, adjective in -en
            colour, cloth = rng.choice(COLOURS), rng.choice(CLOTHES)
            en += ["in", "a", colour[0], cloth[0]]
            de += ["in", EINEM[cloth[2]], colour[1] + "en", cloth[1]]
        en.append("is")
        de.append(verb[1])
    return " ".join([*en, verb[0], place[0]]) + ".", " ".join([*de, place[1]]) + "."


def toy_en_de(out: Path, sizes: dict[str, int] | None = None) -> None:
    dest = fresh(out, "toy_en_de")
    sizes = sizes or {"train": 2000, "val": 100, "test": 100}
    rng = random.Random(0)
    pairs: dict[str, str] = {}  # distinct English captions, in the order drawn
    while len(pairs) < sum(sizes.values()):
        en, de = caption(rng)
        pairs.setdefault(en, de)
    ordered = list(pairs.items())
    start = 0
    for split, size in sizes.items():
        chunk = ordered[start:start + size]
        start += size
        for lang, column in (("en", 0), ("de", 1)):
            (dest / f"{split}.{lang}").write_text("".join(pair[column] + "\n" for pair in chunk), encoding="utf-8")


# --- wnut17: the first sentences of each file, lines unchanged -------------------------------------------------------

def wnut17(src: Path, out: Path, sizes: dict[str, int] | None = None) -> None:
    dest = fresh(out, "wnut17")
    sizes = sizes or {"wnut17train.conll": 300, "emerging.dev.conll": 100, "emerging.test.annotated": 100}
    for name, size in sizes.items():
        kept, sentences = [], 0
        for line in (src / "wnut17" / name).read_text(encoding="utf-8").splitlines(keepends=True):
            kept.append(line)
            if not line.strip():  # a blank (or whitespace-only) line ends a sentence
                sentences += 1
                if sentences == size:
                    break
        (dest / name).write_text("".join(kept), encoding="utf-8")


def main() -> None:
    src = source_root()
    clothing(src, OUT)
    fsdd(src, OUT)
    sms_spam(src, OUT)
    squad_questions(src, OUT)
    squad_small(src, OUT)
    toy_en_de(OUT)
    wnut17(src, OUT)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"tests/data rebuilt from {src}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
