"""Audio data: clips decoded, resampled and downmixed, bad files listed together, and audio folders read,
on real FSDD recordings."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from datasets import Dataset

from common.core.errors import RecipeInputError
from common.data.audio import SPEECH, check_examples, decode_splits, load_speech_splits, normalize_text
from common.data.options import DataArguments
from recipes import speech_recognition

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decoding_resamples_downmixes_and_lists_bad_files(fsdd, tmp_path):
    clip = fsdd / "recordings/3_theo_7.wav"
    original, rate = sf.read(clip)
    assert rate == 8000
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([original, np.zeros_like(original)], axis=1), rate)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)))
    empty = tmp_path / "empty.wav"
    empty.touch()
    data = Dataset.from_dict({"audio": [str(clip), "stereo.wav", str(corrupt), str(empty), "gone.wav"],
                              "text": ["three", "three", "x", "y", ""]})
    decoded = decode_splits({"train": data}, "audio", 16000, {"train": tmp_path})["train"]
    speech = decoded[SPEECH]
    assert abs(len(speech[0]) - 2 * len(original)) <= 2  # 8 kHz -> 16 kHz
    assert decoded["channels"][:2] == [1, 2]
    np.testing.assert_allclose(speech[1], np.asarray(speech[0]) / 2, atol=1e-4)  # mean of the two channels
    problems = decoded["problem"]
    assert problems[:2] == ["", ""]
    assert problems[2].startswith("could not decode")
    assert problems[3] == "zero-length file (0 bytes)"
    assert problems[4] == "file not found"

    strict = DataArguments(train_file="train.csv")
    with pytest.raises(RecipeInputError) as err:
        check_examples({"train": decoded}, "text", {"train": "train.csv"}, strict, normalize_text)
    message = str(err.value)
    assert all(name in message for name in ("corrupt.wav", "empty.wav", "gone.wav", "--skip_bad_examples"))
    assert "3 bad rows" in message  # the empty transcript belongs to the missing file, listed once
    lenient = DataArguments(train_file="train.csv", skip_bad_examples=True, max_bad_fraction=0.6)
    kept, counts = check_examples({"train": decoded}, "text", {"train": "train.csv"}, lenient, normalize_text)
    assert len(kept["train"]) == 2 and counts["skipped_bad_examples"] == 3


def test_audiofolder_loads_and_decodes(fsdd, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("0_george_5.wav", "1_george_5.wav"):
        shutil.copy(fsdd / "recordings" / name, folder / name)
    (folder / "metadata.csv").write_text("file_name,transcription\n0_george_5.wav,zero\n1_george_5.wav,one\n")
    args = speech_recognition.SpeechDataArguments(audio_folder=str(folder))
    splits, sources, bases = load_speech_splits(args)
    assert sorted(splits["train"]["transcription"]) == ["one", "zero"]
    decoded = decode_splits(splits, "audio", 16000, bases)["train"]
    assert decoded["problem"] == ["", ""] and all(len(x) > 1000 for x in decoded[SPEECH])
