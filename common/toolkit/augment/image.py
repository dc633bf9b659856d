"""Image augmentation on torchvision.transforms.v2: named presets, per-op parameters, MixUp/CutMix.

Presets (`--image_augment`), each a list of torchvision v2 ops applied to the decoded RGB image:

| preset   | ops                                                                                        |
|----------|--------------------------------------------------------------------------------------------|
| none     | Resize + CenterCrop (exactly what evaluation does)                                         |
| light    | RandomResizedCrop(scale 0.5-1) + RandomHorizontalFlip                                      |
| standard | light with RandomResizedCrop(scale 0.3-1), + RandomAffine (rotation ±15°, scale 0.85-1.15) |
|          | + ColorJitter(0.3, 0.3, 0.3, 0.05)                                                         |
| strong   | RandomResizedCrop(scale 0.08-1) + RandomHorizontalFlip + TrivialAugmentWide + RandomErasing |

`image_augment_params` (a YAML mapping) changes an op's parameters by its torchvision class name, removes
it with `null`, or adds any other v2 op, e.g.

    image_augment: standard
    image_augment_params:
      RandomAffine: {degrees: 5}
      ColorJitter: null
      RandomGrayscale: {p: 0.1}

The output size always comes from the model's image processor (RandomResizedCrop's `size`, or Resize +
CenterCrop when no op sets it), as do the mean and std; crops resample bilinearly. Evaluation always gets
the processor's own Resize + CenterCrop only. Training images decode at the reduced JPEG scale the crop
allows (`decode_side`), and only evaluation rows pay for the image processor.
`--mixup_alpha`/`--cutmix_alpha` mix whole training batches in `ImageCollator` (v2.MixUp / v2.CutMix),
which turns the labels into class distributions; `SoftTargetLoss` trains on them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torchvision.transforms import v2
from torchvision.utils import save_image
from transformers import TrainerCallback

from common.core.errors import RecipeInputError, nearest
from common.data.images import open_image

PRESETS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "none": [],
    "light": [("RandomResizedCrop", {"scale": (0.5, 1.0)}), ("RandomHorizontalFlip", {"p": 0.5})],
    "standard": [
        ("RandomResizedCrop", {"scale": (0.3, 1.0)}),
        ("RandomHorizontalFlip", {"p": 0.5}),
        ("RandomAffine", {"degrees": 15, "scale": (0.85, 1.15)}),  # rotation and scaling in one resampling
        ("ColorJitter", {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}),
    ],
    "strong": [
        ("RandomResizedCrop", {"scale": (0.08, 1.0)}),
        ("RandomHorizontalFlip", {"p": 0.5}),
        ("TrivialAugmentWide", {}),
        ("RandomErasing", {"p": 0.25}),
    ],
}
TENSOR_OPS = {"RandomErasing"}  # work on the float tensor, after the image ops
# Set on rows that went through the training augmentation (only those get mixed), to a seed drawn from the
# row's own generator, from which ImageCollator seeds the batch's mix.
TRAIN_MARK = "_augmented"


@dataclass
class ImageAugmentArguments:
    _argument_group_name = "image augmentation"

    image_augment: str = field(
        default="light", metadata={"help": "Augmentation preset for training images: none | light | standard | strong."}
    )
    image_augment_params: str | None = field(
        default=None,
        metadata={"help": "Per-op parameters by torchvision v2 class name (a mapping under image_augment_params: "
                          "in YAML, or YAML text), e.g. '{RandomAffine: {degrees: 5}, ColorJitter: null}'."},
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp Beta(alpha, alpha) on training batches; 0 = off."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix Beta(alpha, alpha) on training batches; 0 = off."})
    save_augment_preview: bool = field(
        default=False, metadata={"help": "Write augment_preview.png: a grid of augmented training images."}
    )

    def __post_init__(self) -> None:
        if self.image_augment not in PRESETS:
            raise RecipeInputError(
                f"--image_augment {self.image_augment}: choose one of {', '.join(PRESETS)}{nearest(self.image_augment, PRESETS)}."
            )
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise RecipeInputError(f"--{name} {getattr(self, name)} must be >= 0 (0 turns it off).")

    @property
    def augments(self) -> bool:
        return self.image_augment != "none" or bool(self.image_augment_params) or self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class ImageGeometry:
    """What the model's image processor expects: resize target, crop size, normalization and resampling."""

    resize: int | tuple[int, int]  # an int resizes the shorter side, keeping the aspect ratio
    crop: tuple[int, int]
    mean: list[float]
    std: list[float]
    interpolation: int = 2  # PIL resampling code (2 = bilinear)


def _get(size: Any, key: str) -> Any:
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def geometry_from_processor(processor: Any) -> ImageGeometry:
    """Read resize, center crop, mean and std from any transformers image processor."""
    size, crop_size = processor.size, getattr(processor, "crop_size", None)
    height, width, shortest = _get(size, "height"), _get(size, "width"), _get(size, "shortest_edge")
    if height and width:
        resize: int | tuple[int, int] = (height, width)
        crop = (height, width)
    elif shortest:
        resize, crop = shortest, (shortest, shortest)
        crop_pct = getattr(processor, "crop_pct", None)
        if crop_pct and shortest < 384:  # ConvNeXt-style: resize to shortest/crop_pct, crop back to shortest
            resize = int(shortest / crop_pct)
    else:
        raise RecipeInputError(f"image processor {type(processor).__name__} gives no usable size ({size}).")
    if getattr(processor, "do_center_crop", False) and crop_size is not None and _get(crop_size, "height"):
        crop = (_get(crop_size, "height"), _get(crop_size, "width"))
    normalize = getattr(processor, "do_normalize", True)
    mean = list(processor.image_mean) if normalize else [0.0, 0.0, 0.0]
    std = list(processor.image_std) if normalize else [1.0, 1.0, 1.0]
    return ImageGeometry(resize, crop, mean, std, int(getattr(processor, "resample", 2) or 2))


def parse_params(value: str | dict | None) -> dict[str, dict[str, Any] | None]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise RecipeInputError(f"--image_augment_params is not valid YAML/JSON: {err}") from None
    if not isinstance(value, dict):
        raise RecipeInputError("image_augment_params must map torchvision op names to parameters, e.g. "
                               "{RandomAffine: {degrees: 5}}.")
    for name, params in value.items():
        if params is not None and not isinstance(params, dict):
            raise RecipeInputError(f"image_augment_params.{name}: give a mapping of parameters, or null to drop the op.")
    return value


def _make_op(name: str, params: dict[str, Any]) -> v2.Transform:
    op = getattr(v2, name, None)
    if not (isinstance(op, type) and issubclass(op, v2.Transform)):
        choices = [n for n in dir(v2) if isinstance(getattr(v2, n), type) and issubclass(getattr(v2, n), v2.Transform)]
        raise RecipeInputError(f"image_augment_params: '{name}' is not a torchvision.transforms.v2 op{nearest(name, choices)}.")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    try:
        return op(**params)
    except (TypeError, ValueError) as err:
        raise RecipeInputError(f"image_augment_params.{name}: {err}") from None


def train_transform(preset: str, params: str | dict | None, geometry: ImageGeometry) -> v2.Compose:
    """The preset's ops with `params` applied, producing a float tensor in [0, 1] of the crop size."""
    overrides = parse_params(params)
    ops = [(name, dict(args)) for name, args in copy.deepcopy(PRESETS[preset])]
    names = [name for name, _ in ops]
    for name, args in overrides.items():
        if name in names:
            ops[names.index(name)] = (name, {**ops[names.index(name)][1], **(args or {})}) if args is not None else None
        elif args is not None:
            ops.append((name, args))
    ops = [op for op in ops if op is not None]
    for name, args in ops:
        if name == "RandomResizedCrop":
            args.setdefault("size", geometry.crop)
            # Bilinear, as torchvision's reference recipes and HF's example crop: cheaper than the bicubic some
            # processors evaluate with, and the crop rescales the image anyway. Evaluation keeps the processor's.
            args.setdefault("interpolation", v2.InterpolationMode.BILINEAR)
        if name == "RandomErasing":
            args.setdefault("value", geometry.mean)  # erased patches become the mean colour: zero once normalized
    image_ops = [_make_op(n, a) for n, a in ops if n not in TENSOR_OPS]
    if not any(n == "RandomResizedCrop" for n, _ in ops):  # the evaluation geometry, then the ops
        image_ops = [v2.Resize(geometry.resize, interpolation=geometry.interpolation), v2.CenterCrop(geometry.crop),
                     *image_ops]
    tensor_ops = [_make_op(n, a) for n, a in ops if n in TENSOR_OPS]
    # Image ops on the PIL image: single-threaded C, while tiny tensor ops pay for torch's thread pool.
    return v2.Compose([*image_ops, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), *tensor_ops])


class ImageAugmenter:
    """A `common.toolkit.augment.Augmenter`: one training image through the train transform, seeded by `rng`."""

    def __init__(self, transform: v2.Compose, column: str):
        self.transform = transform
        self.column = column

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        # v2 ops draw from torch's global CPU generator: fork it so the draw depends on `rng` alone. Seeding that
        # generator alone costs microseconds; torch.manual_seed also seeds every accelerator's (about 0.4 ms).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(rng.integers(2**63)))
            example[self.column] = self.transform(example[self.column])
        example[TRAIN_MARK] = int(rng.integers(1, 2**62))
        return example


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """v2.MixUp, v2.CutMix, or a random choice of the two per batch; None when both alphas are 0."""
    mixers = []
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class ImageCollator:
    """Stack pixel values and labels; training batches (rows marked by the augmenter) go through `mixer`."""

    def __init__(self, mixer: v2.Transform | None = None):
        self.mixer = mixer

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {"pixel_values": torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows])}
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
            if self.mixer is not None and rows[0].get(TRAIN_MARK):
                # Seeded by the rows, i.e. by (seed, epoch, row), not by the process's generator: a run
                # resumed from a checkpoint (which restores that generator only after fetching its first
                # batch) mixes every batch as the uninterrupted run did.
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(sum(int(r[TRAIN_MARK]) for r in rows) % 2**63)
                    mixed = self.mixer(batch["pixel_values"], batch["labels"])
                batch["pixel_values"], batch["labels"] = mixed
        return batch


class SoftTargetLoss:
    """Cross-entropy that takes class indices or class distributions (MixUp/CutMix), for `compute_loss_func`."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=self.label_smoothing)
        if num_items_in_batch is None:
            return loss / len(labels)
        # Trainer counts label entries over the accumulated batches: a distribution row has one per class.
        return loss / (num_items_in_batch / (labels.shape[-1] if labels.ndim == 2 else 1))


def decode_side(transform: v2.Compose, geometry: ImageGeometry) -> int:
    """The shorter side a training image must keep so that the train transform never enlarges it: the
    evaluation resize, or what the smallest, most elongated RandomResizedCrop window needs to cover the
    output size (scale s at aspect ratio r spans sqrt(s / r) of the image's side)."""
    crop = next((op for op in transform.transforms if isinstance(op, v2.RandomResizedCrop)), None)
    if crop is None:
        return max(geometry.resize) if isinstance(geometry.resize, tuple) else geometry.resize
    return math.ceil(max(crop.size) * math.sqrt(max(crop.ratio) / min(crop.scale)))


class ImageInputs:
    """Lazy model inputs for `Dataset.set_transform`: decode, then the model's own image processor.

    Every split reads through it, so evaluation (and a CV fold's held-out rows) sees exactly what
    `pipeline("image-classification")` feeds the saved model (Resize, CenterCrop where the processor does
    one, normalization). Augmented training rows read through `raw` instead (`TrainAugmentation.raw_view`):
    decoded images only, JPEGs at the reduced scale `train_side` allows, since the train transform resizes
    them anyway; the augmentation then ends in `encode`.
    """

    def __init__(self, processor: Any, column: str, max_side: int, train_side: int | None = None):
        self.processor = processor
        geometry = geometry_from_processor(processor)
        self.mean, self.std = torch.tensor(geometry.mean).view(3, 1, 1), torch.tensor(geometry.std).view(3, 1, 1)
        self.column, self.max_side, self.train_side = column, max_side, train_side

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images = [open_image(value, self.max_side) for value in batch[self.column]]
        out = {"pixel_values": list(self.processor(images, return_tensors="pt")["pixel_values"])}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    def decode(self, value: Any) -> Any:
        """One training image as the train transform starts from it."""
        return open_image(value, self.max_side, self.train_side)

    def raw(self, batch: dict[str, list]) -> dict[str, list]:
        """Decoded training images (and labels), for the augmentation."""
        out = {self.column: [self.decode(value) for value in batch[self.column]]}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    def raw_view(self, dataset: Any) -> Any:
        return dataset.with_transform(self.raw)

    def view(self, image: Any) -> torch.Tensor:
        """The evaluation input of one image, back in [0, 1] for display."""
        return self.processor(image, return_tensors="pt")["pixel_values"][0] * self.std + self.mean

    def encode(self, raw: dict[str, list]) -> dict[str, list]:
        """Augmented [0, 1] tensors -> normalized `pixel_values` (the `TrainAugmentation.encode` step), the whole
        batch in one operation (per image, v2.Normalize's dispatch costs more than the arithmetic)."""
        return {"pixel_values": list((torch.stack(raw[self.column]) - self.mean) / self.std)}


def save_preview(dataset: Any, inputs: ImageInputs, transform: v2.Compose, seed: int, path: str | Path,
                 rows: int = 4, variants: int = 5) -> None:
    """A PNG grid of `rows` train images spread over `dataset`: each one's evaluation view, then its augmented
    draws in epochs 0..variants-1. The draws use the training seeding (seed, epoch, row), so the grid shows
    exactly what training sees (before MixUp/CutMix, which mix whole batches)."""

    raw = dataset.with_format(None)  # undecoded rows, whatever transform the split carries
    augmenter = ImageAugmenter(transform, "image")
    tiles = []
    for row in np.linspace(0, len(raw) - 1, min(rows, len(raw))).astype(int).tolist():
        value = raw[row][inputs.column]
        tiles.append(inputs.view(open_image(value, inputs.max_side)))
        image = inputs.decode(value)  # as training decodes it
        tiles += [augmenter({"image": image}, np.random.default_rng([seed, epoch, row]))["image"] for epoch in range(variants)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.stack(tiles).clamp(0, 1), str(path), nrow=variants + 1, padding=2, pad_value=1.0)


class PreviewCallback(TrainerCallback):
    """Writes the augmentation preview when training begins, once.

    Not earlier: until the trainer has built the model, an option can still turn out bad (--freeze, --peft),
    and a failed run must leave the output dir as it found it.
    """

    def __init__(self, write: Callable[[], None]):
        self.write = write
        self.done = False

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.done and state.is_world_process_zero:
            self.write()
        self.done = True
