"""--audio_augment: every operation changes the audio, deterministically per (seed, epoch, row); bad
specifications are named."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from common.core.errors import RecipeInputError
from common.data.audio import SPEECH
from common.toolkit.augment.audio import AudioAugmentArguments, AudioAugmenter

pytestmark = pytest.mark.usefixtures("one_thread")


def test_augmentation_is_seeded_and_every_op_changes_audio(fsdd, tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    sf.write(noise_dir / "hum.wav", np.sin(np.arange(4000) / 5.0) * 0.1, 16000)
    speech, _ = sf.read(fsdd / "recordings/5_jackson_9.wav", dtype="float32")
    for op in ("speed", "shift", "gain", "background", "noise"):
        args = AudioAugmentArguments(audio_augment=[f"{op}=1.0"], background_noise_dir=str(noise_dir))
        augmenter = AudioAugmenter(args, 16000, SPEECH)
        first = augmenter({SPEECH: speech}, np.random.default_rng([0, 0, 7]))[SPEECH]
        again = augmenter({SPEECH: speech}, np.random.default_rng([0, 0, 7]))[SPEECH]
        other_epoch = augmenter({SPEECH: speech}, np.random.default_rng([0, 1, 7]))[SPEECH]
        np.testing.assert_array_equal(first, again)
        assert len(first) != len(speech) or not np.allclose(first, speech), op
        assert len(first) != len(other_epoch) or not np.allclose(first, other_epoch), op
    with pytest.raises(RecipeInputError, match="unknown operation 'nose'"):
        AudioAugmentArguments(audio_augment=["nose=0.5"])
    with pytest.raises(RecipeInputError, match="background_noise_dir"):
        AudioAugmentArguments(audio_augment=["background=0.5"])
