"""Image decoding: huge images are decoded small, at the smallest scale that still covers the crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.data.images import open_image
from common.toolkit.augment.image import ImageGeometry, decode_side, train_transform

pytestmark = pytest.mark.usefixtures("one_thread")


def test_huge_images_are_decoded_small(tmp_path, monkeypatch):
    gradient = np.linspace(0, 255, 3000, dtype=np.uint8)
    array = np.stack([np.tile(gradient, (3000, 1))] * 3, axis=-1)
    decoded = []  # the size each image had when it reached thumbnail(), i.e. as decoded
    thumbnail = Image.Image.thumbnail
    monkeypatch.setattr(Image.Image, "thumbnail", lambda self, *a, **k: decoded.append(self.size) or thumbnail(self, *a, **k))
    for name in ("huge.jpg", "huge.png"):
        Image.fromarray(array).save(tmp_path / name)
        image = open_image(str(tmp_path / name), max_side=512)
        assert max(image.size) <= 512 and image.mode == "RGB"
    # The JPEG decoded straight at 1/4 scale (draft mode): its 3000x3000 bitmap never existed. PNG has no such
    # mode, so it decodes in full once and is shrunk at once.
    assert decoded == [(750, 750), (3000, 3000)]
    # Training decodes at the smallest scale that still covers its crops: 1/4 leaves 750 >= 700, 1/8 would not.
    assert open_image(str(tmp_path / "huge.jpg"), max_side=4096, min_side=700).size == (750, 750)
    geometry = ImageGeometry(resize=73, crop=(64, 64), mean=[0.5] * 3, std=[0.5] * 3)
    assert decode_side(train_transform("light", None, geometry), geometry) == 105  # 64 * sqrt((4/3) / 0.5)
    assert decode_side(train_transform("none", None, geometry), geometry) == 73  # the evaluation resize
