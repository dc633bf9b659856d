"""The speech recognition recipe: CTC and Whisper on real FSDD speech, its data pipeline, bad input and predict."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import fast_args
from safetensors.numpy import load_file
from transformers import pipeline

from common.core.errors import RecipeInputError
from common.data.audio import SPEECH
from common.toolkit.augment import TrainAugmentation
from common.training.speech import AudioInputs
from recipes import predict, speech_recognition

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_ctc(tmp_path_factory) -> str:
    from common.models.tiny import tiny_wav2vec2_ctc

    return tiny_wav2vec2_ctc(tmp_path_factory.mktemp("tiny-ctc"))


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> str:
    from common.models.tiny import tiny_whisper

    return tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"), DIGITS, chunk_length=3)


def manifest(fsdd, path, per_split: dict[str, int], extra_rows: list[dict] = ()) -> str:
    """A csv manifest of random FSDD clips (absolute paths, no clip twice) with a split column."""
    meta = pd.read_csv(fsdd / "metadata.csv").sample(frac=1.0, random_state=0)
    pools = {name: meta[meta["split"] == name] for name in ("train", "test")}
    rows, taken = [], {"train": 0, "test": 0}
    for split, n in per_split.items():
        pool = "test" if split == "test" else "train"
        picked = pools[pool].iloc[taken[pool]: taken[pool] + n]
        taken[pool] += n
        rows += [{"audio": str(fsdd / f), "text": t, "split": split} for f, t in zip(picked["file"], picked["transcript"])]
    rows += list(extra_rows)
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def dry_run(monkeypatch, argv: list[str]):
    """Run the recipe up to training and return the Task it hands to `run` (nothing trains)."""
    captured = {}
    monkeypatch.setattr(speech_recognition, "finetune", lambda task, args, ft: captured.update(task=task) or {})
    speech_recognition.main(argv)
    return captured["task"]


# ------------------------------------------------------------------------------------------------ recipe


def test_shipped_configs_parse():
    from common.core.config import parse_args
    from recipes import CONFIGS_DIR

    configs = sorted((CONFIGS_DIR / "speech_recognition").glob("*.yaml"))
    assert len(configs) == 4
    for path in configs:
        model, data, *_ = parse_args(speech_recognition.ARGUMENTS, ["--config", str(path)], speech_recognition.DEFAULTS)
        assert (data.dataset_name, data.audio_column, data.text_column) == ("PolyAI/minds14", "audio", "transcription")
        # An FSDD-style manifest on the command line replaces the Hub dataset.
        model, data, *_ = parse_args(speech_recognition.ARGUMENTS, ["--config", str(path), "--train_file", "m.csv",
                                                                    "--split_column", "split"], speech_recognition.DEFAULTS)
        assert data.dataset_name is None and data.dataset_config_name is None and data.train_file == "m.csv", path


def test_data_pipeline_resamples_builds_vocab_and_augments_train_only(fsdd, tiny_ctc, tmp_path, monkeypatch, caplog):
    data = manifest(fsdd, tmp_path / "m.csv", {"train": 12, "validation": 4},
                    [{"audio": str(fsdd / "recordings/1_lucas_9.wav"), "text": "Oné!", "split": "validation"}])
    with caplog.at_level(logging.WARNING):
        task = dry_run(monkeypatch, ["--model_name_or_path", tiny_ctc, "--train_file", data, "--split_column", "split",
                                     "--audio_augment", "noise=1.0", "speed=1.0", *fast_args(tmp_path / "out")])
    assert "characters missing from the CTC vocabulary" in caplog.text and "'é'" in caplog.text
    vocab = task.processing_class.tokenizer.get_vocab()
    train_text = pd.read_csv(data).query("split == 'train'")["text"]
    assert set(vocab) == set("".join(train_text)) | {"|", "[UNK]", "[PAD]"}

    raw = task.train_dataset.with_format(None)[0][SPEECH]
    eval_row = task.eval_dataset[0]
    eval_raw = task.eval_dataset.with_format(None)[0][SPEECH]
    assert len(eval_row["input_values"]) == len(eval_raw)  # eval gets the clean clip, only normalised
    expected = task.processing_class.feature_extractor(np.asarray(eval_raw, np.float32), sampling_rate=16000)
    np.testing.assert_allclose(eval_row["input_values"], expected["input_values"][0], rtol=1e-5)
    original, _ = sf.read(pd.read_csv(data).query("split == 'validation'")["audio"].iloc[0])
    assert abs(len(eval_raw) - 2 * len(original)) <= 2  # resampled from 8 kHz to 16 kHz

    augmented = task.augmentation.wrap(task.train_dataset)
    row = augmented[0]
    plain = AudioInputs(task.processing_class.feature_extractor).encode({SPEECH: [raw]})["input_values"][0]
    assert len(row["input_values"]) != len(plain) or not np.allclose(row["input_values"], plain)
    np.testing.assert_array_equal(row["input_values"], augmented[0]["input_values"])  # same seed, same epoch
    assert isinstance(task.augmentation, TrainAugmentation)
    assert list(row["labels"]) == task.train_dataset[0]["labels"]


def test_ctc_trains_on_fsdd_with_frozen_feature_encoder(fsdd, tiny_ctc, tmp_path):
    out = tmp_path / "ctc"
    data = manifest(fsdd, tmp_path / "m.csv", {"train": 32, "validation": 8, "test": 8})
    results = speech_recognition.main([
        "--model_name_or_path", tiny_ctc, "--train_file", data, "--split_column", "split",
        "--freeze", "feature_encoder", "--mask_time_prob", "0", "--mask_feature_prob", "0.05",
        *fast_args(out, num_train_epochs=2, learning_rate=3e-3),
    ])
    assert results["eval_loss"] < results["before_loss"] - 2.0  # the same validation clips, before and after
    for name in ("all_results.json", "training_curves.png", "predictions.tsv", "vocab.json", "config.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "all_results.json").read_text())
    for key in ("eval_wer", "eval_cer", "eval_wer_raw", "eval_cer_raw", "test_wer", "test_cer"):
        assert key in saved and key in results
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t", keep_default_na=False)
    assert list(predictions.columns) == ["audio_file", "reference", "hypothesis", "wer"]
    assert set(predictions["reference"]) <= set(DIGITS) and len(predictions) == 8

    config = json.loads((out / "config.json").read_text())
    assert (config["mask_time_prob"], config["mask_feature_prob"]) == (0.0, 0.05)  # SpecAugment options
    assert config["vocab_size"] == len(json.loads((out / "vocab.json").read_text()))
    before, after = load_file(f"{tiny_ctc}/model.safetensors"), load_file(str(out / "model.safetensors"))
    cnn = [k for k in before if k.startswith("feature_extractor.")]
    assert cnn and all(np.array_equal(before[k], after[f"wav2vec2.{k}"]) for k in cnn)
    assert not np.array_equal(before["encoder.layers.0.attention.q_proj.weight"],
                              after["wav2vec2.encoder.layers.0.attention.q_proj.weight"])

    transcribe = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    assert isinstance(transcribe(str(fsdd / "recordings/7_nicolas_3.wav"))["text"], str)

    # Error analysis: the validation clips by WER, worst first, with their 8 kHz files' durations.
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert list(errors.columns) == ["audio_file", "reference", "hypothesis", "wer", "duration_s"]
    assert len(errors) == 8 and errors["wer"].is_monotonic_decreasing
    for file, duration in zip(errors["audio_file"], errors["duration_s"]):
        info = sf.info(file)
        assert duration == pytest.approx(info.frames / info.samplerate, abs=1e-3)

    # predict transcribes a folder of clips, resampled to the model's rate.
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("7_nicolas_3.wav", "2_yweweler_1.wav"):
        (clips / name).symlink_to(fsdd / "recordings" / name)
    assert predict(str(out), str(clips), str(tmp_path / "transcripts.tsv")) == 2
    transcripts = pd.read_csv(tmp_path / "transcripts.tsv", sep="\t", keep_default_na=False)
    assert list(transcripts.columns) == ["audio_file", "hypothesis"] and len(transcripts) == 2


def test_whisper_trains_on_fsdd(fsdd, tiny_whisper, tmp_path):
    out = tmp_path / "whisper"
    data = manifest(fsdd, tmp_path / "m.csv", {"train": 16, "validation": 4, "test": 4})
    results = speech_recognition.main([
        "--model_name_or_path", tiny_whisper, "--language", "english", "--train_file", data, "--split_column", "split",
        "--generation_max_length", "8", *fast_args(out, num_train_epochs=3, learning_rate=2e-3),
    ])
    assert results["eval_loss"] < results["before_loss"] - 0.5
    assert {"eval_wer", "eval_cer", "test_wer", "eval_wer_raw"} <= set(results)
    predictions = pd.read_csv(out / "predictions.tsv", sep="\t", keep_default_na=False)
    assert len(predictions) == 4 and (out / "training_curves.png").is_file()
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["language"] == "english" and generation["task"] == "transcribe"

    transcribe = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    assert isinstance(transcribe(str(fsdd / "recordings/2_yweweler_1.wav"))["text"], str)


def test_whisper_lora_on_attention_projections(fsdd, tiny_whisper, tmp_path):
    out = tmp_path / "lora"
    data = manifest(fsdd, tmp_path / "m.csv", {"train": 8, "validation": 2, "test": 2})
    speech_recognition.main([
        "--model_name_or_path", tiny_whisper, "--language", "en", "--train_file", data, "--split_column", "split",
        "--peft", "lora", "--lora_target_modules", "q_proj", "v_proj", "--generation_max_length", "4",
        *fast_args(out, max_steps=2, eval_strategy="no", do_eval="false"),
    ])
    adapter = json.loads((out / "adapter/adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    transcribe = pipeline("automatic-speech-recognition", model=str(out), device="cpu")  # the merged model
    assert isinstance(transcribe(str(fsdd / "recordings/6_lucas_2.wav"))["text"], str)


def test_bad_files_fail_together_or_are_skipped(fsdd, tiny_ctc, tmp_path):
    corrupt, empty = tmp_path / "corrupt.wav", tmp_path / "empty.wav"
    corrupt.write_bytes(b"this is not audio at all" * 20)
    empty.touch()
    bad = [{"audio": str(p), "text": "zero", "split": "train"} for p in (corrupt, empty, tmp_path / "missing.wav")]
    data = manifest(fsdd, tmp_path / "m.csv", {"train": 12, "validation": 4}, bad)
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_ctc, "--train_file", data, "--split_column", "split",
            *fast_args(out, max_steps=1, eval_strategy="no")]
    with pytest.raises(RecipeInputError) as err:
        speech_recognition.main(argv)
    assert all(name in str(err.value) for name in ("corrupt.wav", "empty.wav", "missing.wav"))
    assert not out.exists()
    results = speech_recognition.main([*argv, "--skip_bad_examples", "--max_bad_fraction", "0.25"])
    assert results["skipped_bad_examples"] == 3
    assert json.loads((out / "all_results.json").read_text())["skipped_bad_examples"] == 3


def test_bad_input_errors(fsdd, tiny_ctc, tiny_whisper, tiny_bert, tmp_path, monkeypatch):
    data = manifest(fsdd, tmp_path / "m.csv", {"train": 6, "validation": 2},
                    [{"audio": str(fsdd / "recordings/4_theo_9.wav"), "text": " ?! ", "split": "train"}])
    base = ["--train_file", data, "--split_column", "split", *fast_args(tmp_path / "out")]
    with pytest.raises(RecipeInputError, match=r"4_theo_9.wav \(transcript ' \?! ' is empty once normalised\)"):
        dry_run(monkeypatch, ["--model_name_or_path", tiny_ctc, *base])
    with pytest.raises(RecipeInputError, match="not a speech recognition architecture"):
        dry_run(monkeypatch, ["--model_name_or_path", tiny_bert, *base])
    with pytest.raises(RecipeInputError, match="column 'wav' not found"):
        dry_run(monkeypatch, ["--model_name_or_path", tiny_ctc, "--audio_column", "wav", *base])
    with pytest.raises(RecipeInputError, match="set --language"):
        dry_run(monkeypatch, ["--model_name_or_path", tiny_whisper, "--skip_bad_examples", "--max_bad_fraction", "0.2",
                              *base])

    # The ten digits in a row (over 3 s) are past the tiny Whisper's 3 s window: an error, or dropped on request.
    long_clip = np.concatenate([sf.read(fsdd / f"recordings/{d}_theo_8.wav")[0] for d in range(10)])
    sf.write(tmp_path / "long.wav", long_clip, 8000)
    assert len(long_clip) / 8000 > 3
    data = manifest(fsdd, tmp_path / "long.csv", {"train": 6, "validation": 2},
                    [{"audio": str(tmp_path / "long.wav"), "text": " ".join(DIGITS), "split": "train"}])
    argv = ["--model_name_or_path", tiny_whisper, "--language", "en", "--train_file", data, "--split_column", "split",
            *fast_args(tmp_path / "out")]
    with pytest.raises(RecipeInputError, match=r"longer than the model's 3 s input limit.*long.wav"):
        dry_run(monkeypatch, argv)
    task = dry_run(monkeypatch, [*argv, "--max_duration_s", "3"])
    assert len(task.train_dataset) == 6


def test_a_ctc_model_exports_to_onnx_and_transcribes_as_pytorch_does(fsdd, tiny_ctc, tmp_path):
    """CTC is an encoder: the ONNX export's frame-wise ids agree with PyTorch's on the validation clips, and
    predict with --runtime onnx writes PyTorch's transcripts."""
    from common import cli

    out = tmp_path / "ctc"
    data = manifest(fsdd, tmp_path / "m.csv", {"train": 16, "validation": 6, "test": 6})
    speech_recognition.main(["--model_name_or_path", tiny_ctc, "--train_file", data, "--split_column", "split",
                             *fast_args(out, num_train_epochs=1, learning_rate=3e-3)])
    cli.main(["export", str(out), "--output", str(tmp_path / "onnx")])
    report = json.loads((tmp_path / "onnx" / "export_report.json").read_text())
    assert report["passed"] and report["top1_agreement"] == 1.0 and report["validation_rows"] == 6
    clips = pd.read_csv(data)
    clips[clips["split"] == "test"].to_csv(tmp_path / "test.csv", index=False)
    written = {}
    for runtime in ("torch", "onnx"):
        written[runtime] = tmp_path / f"{runtime}.tsv"
        cli.main(["predict", str(out), "--runtime", runtime, "--export_dir", str(tmp_path / "onnx"),
                  "--input", str(tmp_path / "test.csv"), "--output", str(written[runtime])])
    assert written["torch"].read_text() == written["onnx"].read_text()
