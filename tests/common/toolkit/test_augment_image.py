"""--image_augment: presets vary in training and are seeded while evaluation stays fixed, torchvision ops
changed, removed and added by --image_augment_params, and MixUp/CutMix soft targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.core.errors import RecipeInputError
from common.data.images import open_image
from common.toolkit.augment.image import (
    PRESETS,
    TRAIN_MARK,
    ImageAugmenter,
    ImageCollator,
    ImageInputs,
    SoftTargetLoss,
    batch_mixer,
    geometry_from_processor,
    train_transform,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photo(test_data) -> str:
    return str(sorted((test_data / "clothing_small/train/dress").iterdir())[0])


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_presets_vary_in_train_are_seeded_and_eval_is_fixed(preset, vit, photo):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(vit)
    geometry = geometry_from_processor(processor)
    augment = ImageAugmenter(train_transform(preset, None, geometry), "image")
    image = open_image(photo, 1024)

    def draw(*seed: int) -> torch.Tensor:
        return augment({"image": image}, np.random.default_rng(list(seed)))["image"]

    assert draw(0, 0, 1).shape == (3, 32, 32)
    assert torch.equal(draw(0, 0, 1), draw(0, 0, 1))  # same seed, epoch, row: same pixels
    assert not torch.equal(draw(0, 0, 1), draw(0, 1, 1))  # next epoch: new pixels
    inputs = ImageInputs(processor, "image", 1024)
    batch = {"image": [{"path": photo, "bytes": None}] * 2, "labels": [0, 0]}
    first, second = inputs(batch)["pixel_values"]
    assert torch.equal(first, second) and torch.equal(first, inputs(batch)["pixel_values"][0])


def test_augment_params_change_remove_and_add_ops(vit):
    from transformers import AutoImageProcessor

    geometry = geometry_from_processor(AutoImageProcessor.from_pretrained(vit))
    ops = train_transform("standard", "{RandomAffine: {degrees: 3}, ColorJitter: null, RandomGrayscale: {p: 1.0}}",
                          geometry).transforms
    names = [type(op).__name__ for op in ops]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomAffine", "RandomGrayscale", "ToImage", "ToDtype"]
    assert list(ops[2].degrees) == [-3.0, 3.0] and tuple(ops[0].size) == (32, 32)
    # Without RandomResizedCrop the image is resized and center-cropped to the processor's size first.
    assert [type(op).__name__ for op in train_transform("light", {"RandomResizedCrop": None}, geometry).transforms][:2] \
        == ["Resize", "CenterCrop"]
    with pytest.raises(RecipeInputError, match=r"'RandomRotate' is not a torchvision.transforms.v2 op \(did you mean 'RandomRotation'"):
        train_transform("light", {"RandomRotate": {"degrees": 5}}, geometry)
    with pytest.raises(RecipeInputError, match=r"image_augment_params.ColorJitter: .*brightness"):
        train_transform("standard", {"ColorJitter": {"brightness": -1}}, geometry)
    assert set(PRESETS) == {"none", "light", "standard", "strong"}


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_cutmix_give_soft_targets_that_sum_to_one(mixup, cutmix):
    torch.manual_seed(0)
    rows = [{"pixel_values": torch.rand(3, 8, 8), "labels": i % 4, TRAIN_MARK: True} for i in range(6)]
    collate = ImageCollator(batch_mixer(mixup, cutmix, num_classes=4))
    batch = collate(rows)
    assert batch["labels"].shape == (6, 4) and batch["labels"].dtype == torch.float32
    assert torch.allclose(batch["labels"].sum(-1), torch.ones(6))
    assert (batch["labels"].max(-1).values < 1).any()  # mixed, not one-hot
    # Evaluation rows carry no training mark: labels stay class ids and pixels untouched.
    plain = collate([{k: v for k, v in r.items() if k != TRAIN_MARK} for r in rows])
    assert plain["labels"].tolist() == [0, 1, 2, 3, 0, 1]
    assert torch.equal(plain["pixel_values"][2], rows[2]["pixel_values"])

    logits = torch.randn(6, 4)
    loss = SoftTargetLoss()
    hard = torch.tensor([0, 1, 2, 3, 0, 1])
    one_hot = torch.nn.functional.one_hot(hard, 4).float()
    expected = torch.nn.functional.cross_entropy(logits, hard)
    assert torch.allclose(loss({"logits": logits}, one_hot), expected)
    # Over 2 accumulated batches of 6, Trainer counts 48 label entries: 12 examples of 4 classes.
    assert torch.allclose(loss({"logits": logits}, one_hot, num_items_in_batch=torch.tensor(48)), expected / 2)
