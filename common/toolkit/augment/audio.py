"""Waveform augmentation for speech, with a probability per operation (`--audio_augment`), plus SpecAugment.

    speed=P       speed perturbation: resample by a factor drawn from --speed_range (0.9-1.1), which changes
                  tempo and pitch together, as Kaldi's 3-way speed perturbation does
    shift=P       time shift: delay the speech by up to --shift_max_s of prepended silence (nothing is cut,
                  so the transcript stays right)
    gain=P        gain drawn from --gain_db
    background=P  mix a random stretch of a random file of --background_noise_dir at an SNR from --background_snr_db
    noise=P       Gaussian noise at an SNR drawn from --noise_snr_db

Operations run in that order, on the mono waveform at the model's rate, for train rows only; each example's
random generator comes from `common.toolkit.augment` (seed, epoch, row), so the same seed gives the same audio.
The operations are a few lines of numpy/scipy each. audiomentations (which has noise, gain, shift and
background noise, but no speed perturbation) draws from the process-global `random` and `np.random` state,
so it cannot follow the per-example generator without reseeding global state around every call.

SpecAugment (time and feature masking of the model's hidden features) is the model's own: --mask_time_prob
and --mask_feature_prob set `mask_time_prob`/`mask_feature_prob` in its config (Whisper also gets
`apply_spec_augment`). It is active in training mode only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Audio
from scipy.signal import resample_poly

from common.core.errors import RecipeInputError, nearest

OPS = ("speed", "shift", "gain", "background", "noise")
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif"}


@dataclass
class AudioAugmentArguments:
    _argument_group_name = "audio augmentation"

    audio_augment: list[str] = field(
        default_factory=list,
        metadata={"help": "Waveform augmentation of train clips, op=probability: speed, shift, gain, background, "
                          "noise. E.g. --audio_augment speed=0.5 noise=0.3 gain=0.3."},
    )
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 40.0],
                                      metadata={"help": "SNR range (dB) of the Gaussian noise (op noise)."})
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 6.0], metadata={"help": "Gain range in dB (op gain)."})
    shift_max_s: float = field(default=0.2, metadata={"help": "Longest delay in seconds (op shift)."})
    speed_range: list[float] = field(default_factory=lambda: [0.9, 1.1],
                                     metadata={"help": "Speed factor range (op speed)."})
    background_noise_dir: str | None = field(
        default=None, metadata={"help": "Folder of noise recordings mixed in by op background (searched recursively)."}
    )
    background_snr_db: list[float] = field(default_factory=lambda: [5.0, 30.0],
                                           metadata={"help": "SNR range (dB) of the background noise (op background)."})
    mask_time_prob: float | None = field(
        default=None, metadata={"help": "SpecAugment: share of time steps masked in training (model config)."}
    )
    mask_time_length: int | None = field(default=None, metadata={"help": "SpecAugment: length of each time mask."})
    mask_feature_prob: float | None = field(
        default=None, metadata={"help": "SpecAugment: share of feature channels masked in training (model config)."}
    )
    mask_feature_length: int | None = field(default=None, metadata={"help": "SpecAugment: width of each feature mask."})

    def __post_init__(self) -> None:
        self.probabilities = parse_audio_augment(self.audio_augment)
        for name in ("noise_snr_db", "gain_db", "speed_range", "background_snr_db"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise RecipeInputError(f"--{name} takes two numbers, low then high; got {low_high}.")
        if self.speed_range[0] <= 0:
            raise RecipeInputError(f"--speed_range {self.speed_range}: speed factors must be positive.")
        if self.shift_max_s < 0:
            raise RecipeInputError(f"--shift_max_s {self.shift_max_s} must be >= 0.")
        if self.probabilities.get("background") and not self.background_noise_dir:
            raise RecipeInputError("--audio_augment background needs --background_noise_dir, a folder of noise recordings.")
        for name in ("mask_time_prob", "mask_feature_prob"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise RecipeInputError(f"--{name} {value} must be in [0, 1).")

    def spec_augment(self, model_type: str) -> dict[str, Any]:
        """Config overrides for SpecAugment (only the options given)."""
        names = ("mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length")
        overrides = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if model_type == "whisper" and (self.mask_time_prob or self.mask_feature_prob):
            overrides["apply_spec_augment"] = True
        return overrides


def parse_audio_augment(spec: Iterable[str] | dict | str) -> dict[str, float]:
    """'speed=0.5 noise=0.3' (a string, a list of op=P, or a YAML mapping) -> {op: probability}."""
    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        tokens = (spec if isinstance(spec, str) else " ".join(spec)).replace(",", " ").split()
        if any("=" not in token for token in tokens):
            raise RecipeInputError(f"--audio_augment {' '.join(tokens)}: write each operation as op=probability, "
                                   f"e.g. speed=0.5. Operations: {', '.join(OPS)}.")
        items = [tuple(token.split("=", 1)) for token in tokens]
    probabilities = {}
    for op, value in items:
        if op not in OPS:
            raise RecipeInputError(f"--audio_augment: unknown operation '{op}'{nearest(op, OPS)}. Operations: "
                                   f"{', '.join(OPS)}.")
        try:
            p = float(value)
        except (TypeError, ValueError):
            p = -1.0
        if not 0.0 <= p <= 1.0:
            raise RecipeInputError(f"--audio_augment {op}={value}: the probability must be a number in [0, 1].")
        probabilities[op] = p
    return probabilities


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 20 log10(rms(speech) / rms(noise)) = snr_db."""
    noise_rms = _rms(noise)
    if noise_rms == 0:
        return speech
    return speech + noise * (_rms(speech) / (10 ** (snr_db / 20)) / noise_rms)


def change_speed(speech: np.ndarray, factor: float) -> np.ndarray:
    """Play `factor` times faster (shorter, higher): polyphase resampling by 1/factor, to 1% precision."""
    ratio = Fraction(1 / factor).limit_denominator(100)
    if ratio == 1:
        return speech
    return resample_poly(speech, ratio.numerator, ratio.denominator)


def load_noise_files(folder: str, sampling_rate: int) -> list[np.ndarray]:
    """Every readable recording under `folder`, mono at `sampling_rate`."""

    root = Path(folder)
    if not root.is_dir():
        raise RecipeInputError(f"--background_noise_dir {folder} is not a directory.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    feature, noises = Audio(sampling_rate=sampling_rate), []
    for file in files:
        try:
            data = feature.decode_example({"path": str(file), "bytes": None}).get_all_samples().data.numpy()
        except Exception as err:  # noqa: BLE001 - FFmpeg's reasons vary
            raise RecipeInputError(f"--background_noise_dir: {file} could not be decoded: {err}") from None
        if data.size:
            noises.append(data.mean(0).astype(np.float32))
    if not noises:
        raise RecipeInputError(f"--background_noise_dir {folder} holds no readable audio file "
                               f"({', '.join(sorted(AUDIO_SUFFIXES))}).")
    return noises


class AudioAugmenter:
    """A `common.toolkit.augment.Augmenter` for the waveform column of a train example."""

    def __init__(self, args: AudioAugmentArguments, sampling_rate: int, column: str):
        self.args, self.sampling_rate, self.column = args, sampling_rate, column
        self.probabilities = {op: p for op, p in args.probabilities.items() if p > 0}
        self.noises = load_noise_files(args.background_noise_dir, sampling_rate) if "background" in self.probabilities else []

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {**example, self.column: self.augment(np.asarray(example[self.column], dtype=np.float32), rng)}

    def augment(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = self.args
        for op in OPS:
            apply = rng.random() < self.probabilities.get(op, 0.0)
            if not apply or x.size == 0:
                continue
            if op == "speed":
                x = change_speed(x, rng.uniform(*a.speed_range))
            elif op == "shift":
                x = np.concatenate([np.zeros(int(rng.uniform(0, a.shift_max_s) * self.sampling_rate), x.dtype), x])
            elif op == "gain":
                x = x * 10 ** (rng.uniform(*a.gain_db) / 20)
            elif op == "background":
                noise = self.noises[int(rng.integers(len(self.noises)))]
                reps = int(np.ceil(len(x) / len(noise))) + 1  # loop short noise files
                start = int(rng.integers(len(noise)))
                x = mix_at_snr(x, np.tile(noise, reps)[start:start + len(x)], rng.uniform(*a.background_snr_db))
            elif op == "noise":
                x = mix_at_snr(x, rng.standard_normal(len(x)), rng.uniform(*a.noise_snr_db))
        return x.astype(np.float32)
