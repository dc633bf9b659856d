"""The translation recipe on real Multi30k pairs, with tiny config-built seq2seq models and trained tokenizers."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import sacrebleu
import torch
from conftest import fast_args
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, pipeline

from common.core.errors import RecipeInputError
from common.data.parallel import read_lines
from recipes import predict, translation

PREFIX = "translate English to German: "


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def multi30k(test_data):
    return test_data / "toy_en_de"


@pytest.fixture(scope="module")
def corpus(multi30k) -> list[str]:
    # With the T5 task prefix, as a pretrained vocabulary has it (the toy captions hold no ':').
    return read_lines(multi30k / "train.en", "en")[:4000] + read_lines(multi30k / "train.de", "de")[:4000] + [PREFIX]


@pytest.fixture(scope="module")
def marian(tmp_path_factory, corpus) -> str:
    from common.models.tiny import tiny_marian

    return tiny_marian(tmp_path_factory.mktemp("tiny-marian"), corpus, vocab_size=1000)


@pytest.fixture(scope="module")
def t5(tmp_path_factory, corpus) -> str:
    from common.models.tiny import tiny_t5

    return tiny_t5(tmp_path_factory.mktemp("tiny-t5"), corpus, vocab_size=1000)


@pytest.fixture(scope="module")
def nllb(tmp_path_factory, corpus) -> str:
    from common.models.tiny import tiny_nllb

    return tiny_nllb(tmp_path_factory.mktemp("tiny-nllb"), corpus, vocab_size=500)


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def pair_args(multi30k, split: str, stem: str) -> list[str]:
    return [f"--{split}_source_file", str(multi30k / f"{stem}.en"), f"--{split}_target_file", str(multi30k / f"{stem}.de")]


def generate(model_dir, texts: list[str], prefix: str = "") -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        ids = model.generate(**tokenizer([prefix + t for t in texts], return_tensors="pt", padding=True))
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


@pytest.mark.slow
def test_tiny_marian_learns_multi30k_from_line_aligned_files(marian, multi30k, tmp_path):
    out = tmp_path / "out"
    results = translation.main([
        "--model_name_or_path", marian, *pair_args(multi30k, "train", "train"),
        *pair_args(multi30k, "validation", "val"), *pair_args(multi30k, "test", "test"),
        "--max_train_samples", "1200", "--max_eval_samples", "60", "--max_predict_samples", "12",
        "--generation_max_length", "40", "--dropout", "0", "--eval_strategy", "no",
        *fast_args(out, num_train_epochs=3, per_device_train_batch_size=16, learning_rate=5e-3, logging_steps=25),
    ])
    # Loss falls, and held-out BLEU and chrF rise above the untrained model's.
    assert results["eval_loss"] < results["before_loss"] - 1.5
    assert results["eval_bleu"] > results["before_bleu"] + 0.5
    assert results["eval_chrf"] > results["before_chrf"]
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] - 1.5

    saved = json.loads((out / "all_results.json").read_text())
    assert {"eval_bleu", "eval_chrf", "eval_gen_len", "test_bleu", "test_chrf"} <= saved.keys()
    assert (out / "training_curves.png").is_file()
    rows = [line.split("\t") for line in (out / "predictions.txt").read_text().splitlines()]
    assert rows[0] == ["source", "reference", "hypothesis"] and len(rows) == 13
    test_en = read_lines(multi30k / "test.en", "en")
    test_de = read_lines(multi30k / "test.de", "de")
    positions = [test_en.index(r[0]) for r in rows[1:]]  # a seeded sample of 12 test pairs, kept in file order
    assert positions == sorted(positions) and [r[1] for r in rows[1:]] == [test_de[i] for i in positions]

    # pipeline() loads the output and generates with evaluation's settings, saved in its generation config.
    # (Its text is not compared with evaluation's: this tiny model repeats itself up to the length limit, where
    # near-tied picks flip with the batch padding evaluation adds.)
    translate = pipeline("translation", model=str(out), trust_remote_code=True, device="cpu")
    assert translate.model.generation_config.max_length == 40
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForSeq2SeqLM.from_pretrained(out)
    sources = [r[0] for r in rows[1:4]]
    expected = [tokenizer.decode(model.generate(**tokenizer([s], return_tensors="pt"), max_length=40)[0],
                                 skip_special_tokens=True).strip() for s in sources]
    assert [o["translation_text"] for o in translate(sources)] == expected
    assert translate("A dog runs.")[0]["translation_text"].strip()

    # Error analysis: the 20 validation sentences with the lowest sentence chrF, worst first.
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert list(errors.columns) == ["source", "reference", "hypothesis", "chrf"]
    assert len(errors) == 20 and errors["chrf"].is_monotonic_increasing
    val_en = read_lines(multi30k / "val.en", "en")
    assert set(errors["source"]) <= set(val_en)

    # predict translates a text file of sources, one line each.
    sources_file = tmp_path / "sources.en"
    sources_file.write_text("A dog runs.\nTwo men sit on a bench.\nA girl in a red coat.\n")
    assert predict(str(out), str(sources_file), str(tmp_path / "translations.tsv")) == 3
    lines = (tmp_path / "translations.tsv").read_text().splitlines()
    assert lines[0] == "source\treference\thypothesis" and lines[2].startswith("Two men sit on a bench.\t")


def test_bleu_is_scored_against_raw_references(test_data, tmp_path):
    """BLEU and chrF of each split are scored against its raw references, not the label ids cut at
    --max_target_length and decoded back to text."""
    from common.models.tiny import tiny_marian

    multi30k = test_data / "toy_en_de"
    en, de = read_lines(multi30k / "train.en", "en"), read_lines(multi30k / "train.de", "de")
    marian = tiny_marian(tmp_path / "marian", en[:1500] + de[:1500], vocab_size=600)
    # References of three sentences each, far over --max_target_length 16. Validation and test share their
    # sources, so the test predictions in predictions.txt are the validation predictions too; their references
    # differ, and the splits have the same size: the metric must still tell them apart.
    sources = read_lines(multi30k / "val.en", "en")[:8]
    val_de = read_lines(multi30k / "val.de", "de")
    references = {"validation": [f"{val_de[i]} {val_de[i + 1]} {val_de[i + 2]}" for i in range(8)],
                  "test": [f"{val_de[i + 20]} {val_de[i + 30]} {val_de[i + 40]}" for i in range(8)]}
    files = []
    for split, refs in references.items():
        files += [f"--{split}_source_file", write_lines(tmp_path / f"{split}.en", sources),
                  f"--{split}_target_file", write_lines(tmp_path / f"{split}.de", refs)]
    out = tmp_path / "out"
    translation.main([
        "--model_name_or_path", marian, "--train_source_file", write_lines(tmp_path / "train.en", en[:64]),
        "--train_target_file", write_lines(tmp_path / "train.de", de[:64]), *files,
        # Generation runs past the 16 label tokens: Seq2SeqTrainer pads the labels to 20 with the pad id.
        "--max_target_length", "16", "--generation_max_length", "20", "--eval_strategy", "no",
        *fast_args(out, per_device_train_batch_size=16, learning_rate=3e-3),
    ])
    results = json.loads((out / "all_results.json").read_text())
    rows = [line.split("\t") for line in (out / "predictions.txt").read_text(encoding="utf-8").splitlines()[1:]]
    assert [r[1] for r in rows] == references["test"]  # predictions.txt holds the raw references
    hypotheses = [r[2] for r in rows]

    # What the old code scored against: the label ids (cut at 16 tokens) decoded back to text.
    tokenizer = AutoTokenizer.from_pretrained(marian)
    cut = tokenizer(text_target=references["test"], truncation=True, max_length=16)["input_ids"]
    truncated = [t.strip() for t in tokenizer.batch_decode(cut, skip_special_tokens=True)]
    assert all(len(t) < len(r) for t, r in zip(truncated, references["test"]))
    bleu = {split: sacrebleu.corpus_bleu(hypotheses, [refs]).score for split, refs in references.items()}
    chrf = {split: sacrebleu.corpus_chrf(hypotheses, [refs]).score for split, refs in references.items()}
    # The test can tell: chrF (character n-grams) differs between the references even for a tiny model's output,
    # where BLEU may be 0 against both.
    assert abs(sacrebleu.corpus_chrf(hypotheses, [truncated]).score - chrf["test"]) > 0.01

    reported = {key: round(results[key], 6) for key in ("eval_bleu", "eval_chrf", "test_bleu", "test_chrf")}
    expected = {"eval_bleu": bleu["validation"], "eval_chrf": chrf["validation"], "test_bleu": bleu["test"],
                "test_chrf": chrf["test"]}
    assert reported == {key: round(value, 6) for key, value in expected.items()}, \
        "BLEU/chrF must be scored against each split's raw references"


def test_a_model_that_gives_one_translation_for_every_sentence_is_flagged(marian, multi30k, tmp_path):
    """Left untrained (learning rate 0), the tiny model says the same words whatever the sentence: the run is flagged
    degenerate for it and for not improving on its start, and the model card speaks of translations."""
    out = tmp_path / "out"
    results = translation.main([
        "--model_name_or_path", marian, *pair_args(multi30k, "train", "train"), *pair_args(multi30k, "validation", "val"),
        "--max_train_samples", "32", "--max_eval_samples", "50", "--generation_max_length", "12",
        "--eval_strategy", "no", "--do_predict", "false", *fast_args(out, learning_rate=0),
    ])
    reason = results["degenerate_reason"]
    assert "only 1 of the model's outputs for the 50 validation rows are distinct (of the references, 50)" in reason
    assert "eval_bleu" in reason and "eval_chrf" in reason and "no better than before training" in reason
    assert "gives the same translation for almost every input" in (out / "README.md").read_text()


def test_line_aligned_files_load_like_jsonl_and_csv(multi30k, tmp_path):
    import pandas as pd

    en, de = read_lines(multi30k / "val.en", "en")[:40], read_lines(multi30k / "val.de", "de")[:40]
    en[5] += "\u2028and a line separator"  # a separator inside a sentence must not split it
    de[5] += "\u2028und ein Zeilentrenner"
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps({"translation": {"en": e, "de": d}}, ensure_ascii=False) + "\n"
                             for e, d in zip(en, de)), encoding="utf-8")
    pd.DataFrame({"english": en, "german": de}).to_parquet(tmp_path / "train.parquet")

    def load(*argv: str):
        return translation.load_pairs(translation.TranslationDataArguments(**dict(zip(argv[::2], argv[1::2]))))[0]

    lines = load("train_source_file", write_lines(tmp_path / "t.en", en), "train_target_file",
                 write_lines(tmp_path / "t.de", de))["train"]
    dicts = load("train_file", str(jsonl), "source_lang", "en", "target_lang", "de")["train"]
    columns = load("train_file", str(tmp_path / "train.parquet"), "source_column", "english",
                   "target_column", "german")["train"]
    assert lines.to_dict() == dicts.to_dict() == columns.to_dict() == {"source": en, "target": de}

    # A Hub dataset's `translation` column has the Translation feature type, not a struct.
    from datasets import Dataset, Features, Translation

    from common.data.parallel import pairs_from_table

    hub = Dataset.from_dict({"translation": [{"en": e, "de": d} for e, d in zip(en, de)]},
                            features=Features({"translation": Translation(languages=["de", "en"])}))
    assert pairs_from_table(hub, "en", "de", "wmt", "train").to_dict() == lines.to_dict()


@pytest.mark.parametrize("strategy", ["encoder", "decoder"])
def test_freezing_one_stack_keeps_it_bit_identical(marian, multi30k, tmp_path, strategy):
    out = tmp_path / "out"
    translation.main([
        "--model_name_or_path", marian, *pair_args(multi30k, "train", "train"), "--max_train_samples", "64",
        "--freeze", strategy, "--eval_strategy", "no", "--do_eval", "false", "--max_eval_samples", "8",
        *fast_args(out, learning_rate=1e-2),
    ])
    before = AutoModelForSeq2SeqLM.from_pretrained(marian).state_dict()
    after = AutoModelForSeq2SeqLM.from_pretrained(out).state_dict()
    other = "decoder" if strategy == "encoder" else "encoder"
    frozen = [k for k in before if k.startswith(f"model.{strategy}.layers.")]
    trained = [k for k in before if k.startswith(f"model.{other}.layers.") and k.endswith("weight")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    # The token embeddings are shared by both stacks (and the output layer): freezing one stack freezes them.
    assert torch.equal(before["model.shared.weight"], after["model.shared.weight"])
    assert sum(not torch.equal(before[k], after[k]) for k in trained) == len(trained)


def test_t5_prefix_travels_with_the_model_and_lora_round_trip(t5, multi30k, tmp_path):
    from peft import PeftModel

    out = tmp_path / "out"
    results = translation.main([
        "--model_name_or_path", t5, "--source_prefix", PREFIX, *pair_args(multi30k, "train", "train"),
        *pair_args(multi30k, "test", "test"), "--max_train_samples", "96", "--max_eval_samples", "16",
        "--max_predict_samples", "6", "--validation_split", "0.2", "--generation_max_length", "12",
        "--peft", "lora", *fast_args(out, learning_rate=1e-2),
    ])
    assert "test_bleu" in results
    assert set(json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"]) == {"q", "v"}
    config = json.loads((out / "config.json").read_text())
    assert config["task_specific_params"]["translation"]["prefix"] == PREFIX

    # The merged model, and the adapter on the base model, translate as the trained model did.
    rows = [line.split("\t") for line in (out / "predictions.txt").read_text().splitlines()[1:]]
    sources, hypotheses = [r[0] for r in rows], [r[2] for r in rows]  # a seeded sample of 6 test pairs
    assert generate(out, sources, PREFIX) == hypotheses
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer([PREFIX + s for s in sources], return_tensors="pt", padding=True)
    base = AutoModelForSeq2SeqLM.from_pretrained(t5).eval()
    settings = GenerationConfig.from_pretrained(out)
    with torch.no_grad():
        before = tokenizer.batch_decode(base.generate(**inputs, generation_config=settings), skip_special_tokens=True)
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
        ids = adapted.generate(**inputs, generation_config=settings)
    assert [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)] == hypotheses
    assert [t.strip() for t in before] != hypotheses  # the adapter is what makes the difference

    translate = pipeline("translation", model=str(out), trust_remote_code=True, device="cpu")
    assert translate.preprocess("A dog.")["input_ids"][0].tolist() == tokenizer(PREFIX + "A dog.")["input_ids"]


def test_nllb_language_codes_set_tokenizer_and_forced_bos(nllb, multi30k, tmp_path):
    en, de = read_lines(multi30k / "val.en", "en")[:48], read_lines(multi30k / "val.de", "de")[:48]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"translation": {"en": e, "de": d}}) + "\n" for e, d in zip(en, de)))
    out = tmp_path / "out"
    common = ["--model_name_or_path", nllb, "--train_file", str(data), "--source_column", "en", "--target_column", "de"]
    with pytest.raises(RecipeInputError, match=r"NllbTokenizer is multilingual: set --source_lang and --target_lang"):
        translation.main([*common, *fast_args(out)])
    with pytest.raises(RecipeInputError, match=r"--target_lang deu_Latin is not a language code of NllbTokenizer"):
        translation.main([*common, "--source_lang", "eng_Latn", "--target_lang", "deu_Latin", *fast_args(out)])
    assert not out.exists()

    translation.main([*common, "--source_lang", "eng_Latn", "--target_lang", "deu_Latn", "--generation_max_length",
                      "8", "--do_predict", "false", *fast_args(out, learning_rate=1e-2)])
    tokenizer = AutoTokenizer.from_pretrained(out)
    deu = tokenizer.convert_tokens_to_ids("deu_Latn")
    assert json.loads((out / "generation_config.json").read_text())["forced_bos_token_id"] == deu
    translate = pipeline("translation", model=str(out), trust_remote_code=True, device="cpu")
    inputs = translate.preprocess("A man.")
    assert inputs["input_ids"][0, 0].item() == tokenizer.convert_tokens_to_ids("eng_Latn")
    generated = translate.model.generate(**inputs)
    assert generated[0, 1].item() == deu  # after the decoder start token, the target language code


def capture_task(monkeypatch) -> dict:
    """Run the recipe up to the trainer: the Task it builds is captured instead of trained."""
    captured = {}

    def run(task, *args) -> dict:
        captured["task"] = task
        return {}

    monkeypatch.setattr(translation, "finetune", run)
    return captured


def test_text_augment_changes_sources_and_never_targets(marian, multi30k, tmp_path, monkeypatch):
    captured = capture_task(monkeypatch)
    translation.main([
        "--model_name_or_path", marian, *pair_args(multi30k, "train", "train"), "--max_train_samples", "40",
        *pair_args(multi30k, "validation", "val"), "--max_eval_samples", "4", "--text_augment", "swap=0.3", "delete=0.2", "--source_prefix", PREFIX, *fast_args(tmp_path / "out"),
    ])
    task = captured["task"]
    tokenizer = AutoTokenizer.from_pretrained(marian)
    rows = range(len(task.train_dataset))
    epochs = []
    for epoch in (0, 1):
        dataset = task.augmentation.wrap(task.train_dataset)
        dataset.epoch = epoch
        epochs.append(dataset.__getitems__(list(rows)))
        again = task.augmentation.wrap(task.train_dataset)
        again.epoch = epoch
        assert again.__getitems__(list(rows)) == epochs[-1]  # deterministic under the seed
    original = task.train_dataset
    for items in epochs:
        assert [item["labels"] for item in items] == original["labels"]
        assert sum(item["input_ids"] != original["input_ids"][i] for i, item in enumerate(items)) > len(rows) // 2
        assert all(tokenizer.decode(item["input_ids"]).startswith(PREFIX.strip()) for item in items)
    assert [i["input_ids"] for i in epochs[0]] != [i["input_ids"] for i in epochs[1]]
    # Labels are the sampled rows' targets, untouched (the tiny BPE vocabulary round-trips nearly every line).
    decoded = tokenizer.batch_decode(list(original["labels"]), skip_special_tokens=True)
    targets = set(read_lines(multi30k / "train.de", "de"))
    assert len(decoded) == len(rows) and sum(line in targets for line in decoded) >= 0.9 * len(rows)
    assert "source" not in task.eval_dataset.column_names


def test_truncation_and_t5_without_prefix_are_reported(t5, multi30k, tmp_path, monkeypatch, caplog):
    capture_task(monkeypatch)
    # The first 50 pairs as the train files: --max_train_samples would train on a random 50.
    sources = read_lines(multi30k / "train.en", "en")[:50]
    train = ["--train_source_file", write_lines(tmp_path / "t.en", sources),
             "--train_target_file", write_lines(tmp_path / "t.de", read_lines(multi30k / "train.de", "de")[:50])]
    with caplog.at_level(logging.WARNING):
        translation.main(["--model_name_or_path", t5, *train, *pair_args(multi30k, "validation", "val"),
                          "--max_eval_samples", "5", "--max_source_length", "12", *fast_args(tmp_path / "out")])
    assert "is a T5 model but no --source_prefix is set" in caplog.text
    # Same data, same tokenizer: count the sources over 12 tokens independently.
    tokenizer = AutoTokenizer.from_pretrained(t5)
    over = sum(len(ids) > 12 for ids in tokenizer(sources)["input_ids"])
    assert 0 < over < 50
    assert f"train: {over} of 50 sources were longer than --max_source_length 12 tokens and were truncated" in caplog.text


def test_pairs_empty_on_both_sides_are_dropped_with_a_report(tmp_path, caplog):
    en = ["a cat", "", "a dog", "a bird", ""]
    de = ["eine Katze", "", "ein Hund", "ein Vogel", "  "]
    args = translation.TranslationDataArguments(train_source_file=write_lines(tmp_path / "t.en", en),
                                                train_target_file=write_lines(tmp_path / "t.de", de))
    with caplog.at_level(logging.WARNING):
        train = translation.load_pairs(args)[0]["train"]
    assert train["source"] == ["a cat", "a dog", "a bird"] and train["target"] == ["eine Katze", "ein Hund", "ein Vogel"]
    assert "dropped 2 pair(s) empty on both sides" in caplog.text and "at lines 2, 5" in caplog.text


def _files(d, en: list[str], de: list[str], split: str = "train") -> list[str]:
    return [f"--{split}_source_file", write_lines(d / f"{split}.en", en),
            f"--{split}_target_file", write_lines(d / f"{split}.de", de)]


EN, DE = [f"sentence {i}" for i in range(10)], [f"Satz {i}" for i in range(10)]
BAD_INPUTS = {
    "line counts differ": (
        lambda d: _files(d, EN, DE[:7]),
        r"--train_source_file .*train.en has 10 lines but --train_target_file .*train.de has 7.*stop aligning at "
        r"line 8, the first line of .*train.en with no counterpart in .*train.de \(3 extra lines\)",
    ),
    "target empty on one side": (
        lambda d: _files(d, EN, DE[:3] + [""] + DE[4:8] + [" ", DE[9]]),
        r"--train_target_file .*train.de is empty at lines 4, 9, where --train_source_file .*train.en has text",
    ),
    "source empty on one side": (
        lambda d: _files(d, EN[:2] + [""] + EN[3:], DE),
        r"--train_source_file .*train.en is empty at lines 3, where --train_target_file",
    ),
    "language missing from the translation dict": (
        lambda d: ["--train_file", str(_jsonl(d / "t.jsonl")), "--source_lang", "en", "--target_lang", "fr"],
        r"language 'fr' not in the 'translation' column of train split .*t.jsonl.*which holds: de, en",
    ),
    "missing target column": (
        lambda d: ["--train_file", str(_csv(d / "t.csv")), "--source_column", "en", "--target_column", "german"],
        r"column 'german' not found in train split .*t.csv.*Columns present: en, de",
    ),
    "no language or column named": (
        lambda d: ["--train_file", str(_csv(d / "t.csv"))],
        r"name the source and target text: --source_lang/--target_lang",
    ),
    "both a table and line files for train": (
        lambda d: ["--train_file", str(_csv(d / "t.csv")), *_files(d, EN, DE)],
        r"give the train split once: --train_file or --train_source_file, not both",
    ),
    "target file missing": (
        lambda d: ["--train_source_file", write_lines(d / "t.en", EN)],
        r"--train_source_file and --train_target_file go together",
    ),
    "validation without references": (
        lambda d: [*_files(d, EN, DE), "--validation_file", str(_csv(d / "v.csv", target=False)),
                   "--source_lang", "en", "--target_lang", "de"],
        r"column 'de' not found in validation split",
    ),
    "missing line file": (
        lambda d: ["--train_source_file", str(d / "nope.en"), "--train_target_file", str(d / "nope.de")],
        r"--train_source_file .*nope.en does not exist",
    ),
    "cross-validation": (
        lambda d: [*_files(d, EN, DE), "--cv_folds", "3"],
        r"--cv_folds applies to classification recipes",
    ),
}


def _jsonl(path):
    path.write_text("".join(json.dumps({"translation": {"en": e, "de": d}}) + "\n" for e, d in zip(EN, DE)))
    return path


def _csv(path, target: bool = True):
    import pandas as pd

    pd.DataFrame({"en": EN, **({"de": DE} if target else {})}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_training(case, marian, tmp_path):
    make_args, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    with pytest.raises(RecipeInputError, match=message):
        translation.main(["--model_name_or_path", marian, *make_args(tmp_path), *fast_args(out)])
    assert not out.exists()


def test_a_model_that_is_not_seq2seq_is_refused(tiny_bert, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RecipeInputError, match=r"\(bert\) is not an encoder-decoder: translation needs an "
                                               r"AutoModelForSeq2SeqLM"):
        translation.main(["--model_name_or_path", tiny_bert, *_files(tmp_path, EN, DE), *fast_args(out)])
    assert not out.exists()


def test_shipped_configs_parse():
    from transformers import Seq2SeqTrainingArguments

    from common.core.config import RunArguments, parse_args
    from common.dispatch import FinetuneArguments
    from common.models.loading import ModelArguments
    from recipes import available

    types = (ModelArguments, translation.TranslationDataArguments, FinetuneArguments, RunArguments,
             Seq2SeqTrainingArguments)
    parsed = {path.stem: parse_args(types, ["--config", str(path)], translation.DEFAULTS)
              for path in available()["translation"]}
    assert {"multi30k_tiny_marian", "opus_mt_en_de", "t5_small_en_de", "nllb_en_de"} <= parsed.keys()
    assert parsed["t5_small_en_de"][1].source_prefix == PREFIX
    assert (parsed["nllb_en_de"][1].source_lang, parsed["nllb_en_de"][1].target_lang) == ("eng_Latn", "deu_Latn")
    assert parsed["opus_mt_en_de"][4].generation_num_beams == 4  # --num_beams is an alias
    assert parsed["opus_mt_en_de"][4].predict_with_generate
