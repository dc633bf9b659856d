"""On-the-fly data augmentation of the train split, one interface for every modality.

An `Augmenter` changes one raw example (text, image, audio) with the random generator it is handed:

    def __call__(self, example: dict, rng: numpy.random.Generator) -> dict

It must draw all its randomness from `rng` (torchvision v2 transforms draw from torch's default CPU
generator: seed it from `rng.integers(2**63)` inside `torch.random.fork_rng(devices=[])`), and it returns the
example with the columns it augments replaced. Text lives in `common.toolkit.augment.text`; image
(torchvision v2) and audio (noise, gain, time shift, speed) augmenters plug in the same way.

A recipe hands a `TrainAugmentation` to its `Task`: the augmenter, the raw columns it reads, and
`encode`, the recipe's own batched preprocessing (tokenizer, image processor, feature extractor)
that turns those raw columns into model inputs. When the trainer is built, `wrap` puts the train
split (or a CV fold of it) in an `AugmentedDataset`, which augments and re-encodes each batch as the
data loader fetches it, and drops the raw columns. Eval and test data, and CV held-out rows, never
pass through it. Text keeps its raw columns beside the tokenized ones (the trainer removes them from
what reaches the model). Images and audio are model inputs only at batch time, through the split's
`set_transform`, which eval rows need in full (image processor, feature extractor); `raw_view` gives
the wrapped split another view of the same rows that yields just the raw columns (decoded images;
stored waveforms as numpy arrays), so no augmented row pays for preprocessing that `encode` replaces.

Each example's generator is seeded with (seed, epoch, row): the same seed and epoch give the same
augmented data, whatever the batch size, shuffling or number of data loader workers, and every epoch
sees new variants. The epoch comes from `EpochCallback` at the start of each epoch, before the data
loader asks for its first batch; it lives in shared memory, so persistent workers read it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from transformers import TrainerCallback

from common.data.arrow import list_lengths


class Augmenter(Protocol):
    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]: ...


@dataclass
class TrainAugmentation:
    """What a recipe gives its Task: augment `raw_columns` of train rows, then `encode` the batch."""

    augmenter: Augmenter
    encode: Callable[[dict[str, list]], dict[str, list]]  # batched raw columns -> model inputs
    raw_columns: list[str]
    seed: int
    # The view of the train split the augmentation reads (None: the split as it is): raw columns and labels only,
    # in place of the split's own set_transform, e.g. `lambda d: d.with_transform(decode)`.
    raw_view: Callable[[Any], Any] | None = None

    def wrap(self, dataset) -> AugmentedDataset:
        return AugmentedDataset(dataset if self.raw_view is None else self.raw_view(dataset), self)


class AugmentedDataset(torch.utils.data.Dataset):
    """A train split seen through its augmentation; `epoch` is set by `callback` each epoch."""

    def __init__(self, dataset, augmentation: TrainAugmentation):
        self.dataset = dataset
        self.augmentation = augmentation
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by worker processes too
        self.callback = EpochCallback(self)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(value)

    def __len__(self) -> int:
        return len(self.dataset)

    def lengths(self, column: str) -> list[int] | None:
        """Each row's length in `column` as encoded before augmentation, for length-grouped batches; without
        it the sampler would read (so augment and re-encode) every row to measure it."""
        if column not in self.dataset.column_names:
            return None
        return list_lengths(self.dataset, column)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        aug, epoch = self.augmentation, self.epoch
        batch = self.dataset[list(indices)]
        rows = [{key: values[j] for key, values in batch.items()} for j in range(len(indices))]
        rows = [aug.augmenter(row, np.random.default_rng([aug.seed, epoch, int(i)])) for row, i in zip(rows, indices)]
        raw = {column: [row[column] for row in rows] for column in aug.raw_columns}
        encoded = aug.encode(raw)
        return [
            {**{k: v for k, v in row.items() if k not in aug.raw_columns}, **{k: v[j] for k, v in encoded.items()}}
            for j, row in enumerate(rows)
        ]


class EpochCallback(TrainerCallback):
    def __init__(self, dataset: AugmentedDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch sums per-step fractions; a resumed run starts mid-epoch.
        self.dataset.epoch = math.floor(state.epoch + 1e-6)
