"""Image data: class-folder and path-column loading, RGB decoding that stays small, and the bad-file check.

Images stay on disk (or as the bytes a Hub dataset ships) until a batch needs them: every split's image
column is cast to `Image(decode=False)`, so a row holds `{"path": ..., "bytes": ...}` and `open_image`
decodes it when the data loader asks. Huge files never decode at full size: JPEGs are decoded at a
reduced scale (PIL draft mode) and anything still larger than `max_side` is shrunk with `thumbnail`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image, ImageOps, UnidentifiedImageError

from common.core.errors import RecipeInputError
from common.data import BadRow, load_splits, source

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(ImageFolder.EXTENSIONS)  # the files `imagefolder` picks up


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def check_class_folders(directory: str | Path, option: str, split: str) -> None:
    """One sub-folder per class with images inside. Empty class folders: an error in train, a warning elsewhere.

    A training class without images could never be predicted, yet its folder says the user expects it,
    so training refuses to start; an empty folder in validation or test only means that class is absent there.
    """
    root = Path(directory)
    if not root.is_dir():
        raise RecipeInputError(f"{option} {directory} is not a directory. Give a folder with one sub-folder per class.")
    loose = sorted(entry.name for entry in os.scandir(root) if entry.is_file() and _is_image(entry.name))
    if loose:
        raise RecipeInputError(
            f"{option} {directory} has images directly inside it ({', '.join(loose[:5])}{' ...' if len(loose) > 5 else ''}); "
            "put them in one sub-folder per class, e.g. train/cat/1.jpg, train/dog/2.jpg."
        )
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise RecipeInputError(f"{option} {directory} has no class sub-folders. Put images in one sub-folder per class.")
    empty = [name for name in classes if not any(_is_image(f) for _, _, files in os.walk(root / name) for f in files)]
    if not empty:
        return
    where = f"{option} {directory}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} {'have' if len(empty) > 1 else 'has'} no images"
    if split == "train":
        raise RecipeInputError(
            f"{where}, so the model could never predict {'those classes' if len(empty) > 1 else 'that class'}. "
            f"Add images (extensions: .jpg, .png, .webp, ...) or remove the empty folder{'s' if len(empty) > 1 else ''}."
        )
    logger.warning("%s; those classes are absent from the %s split", where, split)


def load_image_folder(directory: str, option: str, split: str) -> Dataset:
    """A class-folder tree read with `datasets`' imagefolder builder: columns `image` and `label` (the folder)."""
    check_class_folders(directory, option, split)
    # Each split on its own, so its ClassLabel holds only its own folders: a validation class that training
    # lacks then reaches `encode_labels` as an unknown name instead of hiding among the class names.
    pattern = str(Path(directory).resolve() / "**")
    return datasets.load_dataset("imagefolder", data_files={split: pattern}, split=split, drop_labels=False)


def image_name(value: Any, index: int) -> str:
    """A file name for messages and predictions: the path, else the row number."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return path or f"row {index}"


def open_image(value: Any, max_side: int, min_side: int | None = None) -> Image.Image:
    """Decode one image as RGB, oriented by its EXIF tag, at most `max_side` pixels on its longer side; with
    `min_side`, a JPEG decodes at the smallest scale (1/2, 1/4 or 1/8) that keeps both sides >= min_side."""
    if isinstance(value, Image.Image):
        image = ImageOps.exif_transpose(value)  # a new image: the caller's stays as it is
    else:
        data = value.get("bytes") if isinstance(value, dict) else None
        path = value.get("path") if isinstance(value, dict) else value
        image = Image.open(io.BytesIO(data) if data else path)
        target = min(max_side, min_side) if min_side else max_side
        if max(image.size) > target:
            image.draft("RGB", (target, target))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; no-op elsewhere
        ImageOps.exif_transpose(image, in_place=True)  # our own image: no copy
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette transparency cannot convert to RGB directly
    if image.mode != "RGB":
        image = image.convert("RGB")  # grayscale, RGBA, palette, CMYK, 16-bit
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side))
    return image


def image_problem(value: Any) -> str | None:
    """Why an image cannot be used (missing, empty, unreadable, corrupt), or None when it decodes."""
    data = value.get("bytes") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else value
    if data is None and not path:
        return "no image"
    if data is None:
        if not os.path.isfile(path):
            return "file not found"
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data) if data else path) as image:
            image.verify()  # structure only: cheap, but it misses a truncated JPEG body
        with Image.open(io.BytesIO(data) if data else path) as image:
            image.draft("RGB", (64, 64))  # so decode at the smallest scale to find truncation cheaply
            image.load()
    except UnidentifiedImageError:
        return "not a readable image (corrupt or unknown format)"
    except Exception as err:  # noqa: BLE001 - whatever else PIL raises makes the file unusable
        return f"corrupt: {err}"
    return None


def find_bad_images(dataset: Dataset, column: str, num_proc: int | None = None) -> list[BadRow]:
    """Every image that cannot be decoded (row, file, problem), checked in parallel with `map`."""

    def check(batch: dict[str, list]) -> dict[str, list]:
        return {"_problem": [image_problem(v) for v in batch[column]]}

    checked = dataset.select_columns([column]).map(
        check, batched=True, batch_size=64, num_proc=num_proc if num_proc and len(dataset) > 256 else None,
        keep_in_memory=True, load_from_cache_file=False,  # files can be fixed on disk between runs
    )
    problems = checked["_problem"]
    bad = [i for i, p in enumerate(problems) if p]
    values = dataset.select(bad)[column] if bad else []
    return [BadRow(i, image_name(v, i), problems[i]) for i, v in zip(bad, values)]


def load_image_splits(args: Any) -> tuple[DatasetDict, dict[str, str]]:
    """Splits from --train_dir/--validation_dir/--test_dir (class folders), or from a Hub dataset or files.

    Returns the splits and, per split, where it came from (for error messages). Relative image paths in
    csv/jsonl/parquet files are read relative to the file's folder.
    """
    splits = load_splits(args, load_image_folder)
    return splits, {split: source(args, split) for split in splits}


def image_column(columns: Sequence[str], requested: str | None, where: str) -> str:
    """--image_column, else the first of 'image' or 'img' present."""
    if requested:
        return requested
    found = next((c for c in ("image", "img") if c in columns), None)
    if found is None:
        raise RecipeInputError(f"no image column found in {where}: looked for 'image' and 'img'. Columns present: "
                               f"{', '.join(columns)}. Set --image_column.")
    return found


def prepare_image_column(splits: DatasetDict, column: str, args: Any) -> DatasetDict:
    """Every split's image column as undecoded `{"path", "bytes"}` rows; file paths made absolute."""
    result = DatasetDict()
    for split, dataset in splits.items():
        path = getattr(args, f"{split}_file", None)
        if path and isinstance(dataset.features[column], datasets.Value):
            base = Path(path).resolve().parent

            def absolute(batch: dict[str, list], base: Path = base) -> dict[str, list]:
                return {column: [p if not p or os.path.isabs(p) else str(base / p) for p in batch[column]]}

            dataset = dataset.map(absolute, batched=True, keep_in_memory=True, load_from_cache_file=False)
        result[split] = dataset.cast_column(column, datasets.Image(decode=False))
    return result
