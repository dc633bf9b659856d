"""`finetune-recipes predict` preprocesses and generates as the run it loads did (its max length, generation
settings, recorded in run_config.json), so it repeats the run's own predictions file on the same inputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import fast_args
from transformers import AutoTokenizer

from common import cli
from common.data.parallel import read_lines
from common.training.html_report import RUN_CONFIG_FILE
from recipes import text_classification, translation

pytestmark = pytest.mark.usefixtures("one_thread")


def predict_cli(out, input_path, output, *options: str) -> None:
    """`finetune-recipes predict OUT --input INPUT --output OUTPUT [options]`, in this process."""
    cli.main(["predict", str(out), "--input", str(input_path), "--output", str(output), *options])


def longer_than(tokenizer, texts: list[str], limit: int) -> int:
    return sum(len(ids) > limit for ids in tokenizer(texts)["input_ids"])


def write_lines(path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def sst2_short(minilm, test_data, tmp_path_factory):
    """MiniLM trained a few steps at --max_seq_length 16 on SMS messages, with test predictions on 40 of them."""
    data = tmp_path_factory.mktemp("sst2")
    pd.read_csv(test_data / "sms_spam/train.tsv", sep="\t")[:64].to_csv(data / "train.csv", index=False)
    pd.read_csv(test_data / "sms_spam/test.tsv", sep="\t")[:40].to_csv(data / "test.csv", index=False)
    out = data / "run"
    text_classification.main([
        "--model_name_or_path", minilm, "--train_file", str(data / "train.csv"), "--test_file", str(data / "test.csv"),
        "--max_seq_length", "16", "--do_eval", "false", "--eval_strategy", "no",
        *fast_args(out, max_steps=3, learning_rate=1e-4, per_device_eval_batch_size=8),
    ])
    return data, out


def test_text_predict_truncates_at_the_runs_max_seq_length(sst2_short, minilm, tmp_path):
    """predict cuts texts at the run's --max_seq_length, not the tokenizer's 512: same labels, same scores."""
    data, out = sst2_short
    written = pd.read_csv(out / "predictions.csv")
    texts = list(written["sentence"])
    assert longer_than(AutoTokenizer.from_pretrained(minilm), texts, 16) > 10  # reviews the run cut

    predict_cli(out, data / "test.csv", tmp_path / "again.csv")
    again = pd.read_csv(tmp_path / "again.csv")
    assert list(again.columns) == list(written.columns) and list(again["sentence"]) == texts
    assert list(again["prediction"]) == list(written["prediction"])
    scores = [c for c in written.columns if c.startswith("score")]
    assert np.abs(again[scores].to_numpy() - written[scores].to_numpy()).max() < 1e-5


@pytest.mark.slow
def test_saved_ensemble_predicts_with_its_members_max_seq_length(sst2_short, tmp_path):
    """An ensemble of --ensemble_models saved at --max_seq_length 16 predicts with it: the ensemble's predictions."""
    data, out = sst2_short
    other = tmp_path / "other"  # a second member: the same model under another name
    other.symlink_to(out, target_is_directory=True)
    ensemble = tmp_path / "ensemble"
    text_classification.main([
        "--model_name_or_path", str(out), "--train_file", str(data / "train.csv"), "--test_file", str(data / "test.csv"),
        "--max_seq_length", "16", "--do_eval", "false", "--ensemble", "soft_vote", "--ensemble_models", str(out),
        str(other), *fast_args(ensemble, per_device_eval_batch_size=8),
    ])
    saved = json.loads((ensemble / "ensemble.json").read_text())
    assert saved["pipeline_call_kwargs"] == {"truncation": True, "max_length": 16}  # load_ensemble() predicts so too
    written = pd.read_csv(ensemble / "predictions.csv")
    predict_cli(ensemble, data / "test.csv", tmp_path / "again.csv")
    again = pd.read_csv(tmp_path / "again.csv")
    assert list(again["prediction"]) == list(written["prediction"])
    scores = [c for c in written.columns if c.startswith("score")]
    assert np.abs(again[scores].to_numpy() - written[scores].to_numpy()).max() < 1e-5


def test_whisper_predict_generates_as_the_run_did(test_data, tmp_path, monkeypatch):
    """predict transcribes with the run's generation settings (greedy, --generation_max_length 6), not the speech
    recognition pipeline's defaults (5 beams; the model's 64 tokens)."""
    from transformers.generation.utils import GenerationMixin

    from common.models.tiny import tiny_whisper
    from recipes import speech_recognition

    used = []  # (beams, max length, max new tokens) of every generate() call, as generate() resolves them
    prepare = GenerationMixin._prepare_generation_config

    def spy(self, *args, **kwargs):
        config, rest = prepare(self, *args, **kwargs)
        used.append((config.num_beams, config.max_length, config.max_new_tokens))
        return config, rest

    monkeypatch.setattr(GenerationMixin, "_prepare_generation_config", spy)
    fsdd = test_data / "fsdd"
    whisper = tiny_whisper(tmp_path / "whisper", ["zero", "one", "two", "three", "four", "five"], chunk_length=3)
    files = list(pd.read_csv(fsdd / "metadata.csv")["file"].sample(frac=1.0, random_state=0))
    pd.DataFrame({"audio": [str(fsdd / f) for f in files[:8]], "text": "one"}).to_csv(tmp_path / "train.csv",
                                                                                         index=False)
    pd.DataFrame({"audio": [str(fsdd / f) for f in files[8:12]]}).to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "out"
    speech_recognition.main([
        "--model_name_or_path", whisper, "--language", "english", "--train_file", str(tmp_path / "train.csv"),
        "--test_file", str(tmp_path / "test.csv"), "--generation_max_length", "6", "--do_eval", "false",
        "--eval_strategy", "no", *fast_args(out, max_steps=1, per_device_eval_batch_size=1),
    ])
    in_run, used[:] = set(used), []
    assert (1, 6, None) in in_run  # greedy, up to 6 tokens (Whisper's generate adds its prompt's 4 in a second call)
    written = pd.read_csv(out / "predictions.tsv", sep="\t", keep_default_na=False)
    predict_cli(out, tmp_path / "test.csv", tmp_path / "again.tsv", "--batch_size", "1")
    assert set(used) == in_run
    again = pd.read_csv(tmp_path / "again.tsv", sep="\t", keep_default_na=False)
    assert list(again["hypothesis"]) == list(written["hypothesis"])


def test_run_dir_without_recorded_preprocessing_predicts_as_before_with_a_note(sst2_short, tmp_path, caplog):
    """An older run dir, whose run_config.json records no pipeline settings, still predicts (the pipeline's
    defaults) and says so."""
    data, out = sst2_short
    config = json.loads((out / RUN_CONFIG_FILE).read_text())
    config.pop("pipeline_call_kwargs")
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in out.iterdir():
        (copy / item.name).symlink_to(item)
    (copy / RUN_CONFIG_FILE).unlink()
    (copy / RUN_CONFIG_FILE).write_text(json.dumps(config))
    with caplog.at_level(logging.INFO):
        predict_cli(copy, data / "test.csv", tmp_path / "old.csv")
    assert len(pd.read_csv(tmp_path / "old.csv")) == 40
    assert any("records no pipeline settings" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_translation_predict_cuts_sources_at_the_runs_max_source_length(test_data, tmp_path):
    """predict cuts sources at the run's --max_source_length and generates as the run did: the same translations."""
    from common.models.tiny import tiny_marian

    pairs = test_data / "toy_en_de"
    en, de = read_lines(pairs / "train.en", "en"), read_lines(pairs / "train.de", "de")
    marian = tiny_marian(tmp_path / "marian", en[:1500] + de[:1500], vocab_size=600)
    # Trained until it tells its 16 longest training sentences apart, so that its output depends on the (cut) source.
    longest = sorted(range(len(en)), key=lambda i: -len(en[i]))[:16]
    sources, targets = [en[i] for i in longest], [de[i] for i in longest]
    assert longer_than(AutoTokenizer.from_pretrained(marian), sources, 8) == 16
    out = tmp_path / "out"
    translation.main([
        "--model_name_or_path", marian, "--train_source_file", write_lines(tmp_path / "train.en", sources),
        "--train_target_file", write_lines(tmp_path / "train.de", targets),
        "--test_source_file", str(tmp_path / "train.en"), "--max_source_length", "8",
        "--generation_max_length", "12", "--do_eval", "false", "--eval_strategy", "no",
        # One sentence a batch, here and in predict: padding would flip the near-tied picks of a tiny model.
        *fast_args(out, max_steps=200, learning_rate=5e-3, per_device_eval_batch_size=1),
    ])
    written = [line.split("\t") for line in (out / "predictions.txt").read_text(encoding="utf-8").splitlines()[1:]]
    predict_cli(out, tmp_path / "train.en", tmp_path / "again.tsv", "--batch_size", "1")
    again = [line.split("\t") for line in (tmp_path / "again.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    assert [row[0] for row in again] == sources
    assert len({row[-1] for row in written}) > 4  # translations that differ with the source
    assert [row[-1] for row in again] == [row[-1] for row in written]
