"""The image-classification recipe: real clothing photos, tiny ViT and ConvNeXt; augmentation through the recipe's
data path, other data sources and image modes, bad input."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, fast_args
from helpers import assert_class_folders_named_by_digits_are_classes
from PIL import Image

from common.core.errors import RecipeInputError
from common.data.images import check_class_folders, open_image
from common.toolkit.augment import TrainAugmentation
from common.toolkit.augment.image import (
    TRAIN_MARK,
    ImageAugmenter,
    ImageInputs,
    decode_side,
    geometry_from_processor,
    train_transform,
)
from recipes import image_classification, predict

CLASSES = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def convnext(tmp_path_factory) -> str:
    from common.models.tiny import tiny_convnext

    return tiny_convnext(tmp_path_factory.mktemp("tiny-convnext"))


def _subset(data: Path, dest: Path, counts: dict[str, int], classes: list[str] = CLASSES) -> dict[str, Path]:
    """Class folders of links to the first real clothing photos of each class, per split."""
    dirs = {}
    for split, n in counts.items():
        for name in classes:
            folder = dest / split / name
            folder.mkdir(parents=True)
            for file in sorted((data / "clothing_small" / split / name).iterdir())[:n]:
                (folder / file.name).symlink_to(file)
        dirs[split] = dest / split
    return dirs


@pytest.fixture(scope="module")
def clothing(test_data, tmp_path_factory) -> dict[str, Path]:
    return _subset(test_data, tmp_path_factory.mktemp("clothing"), {"train": 12, "validation": 10, "test": 2})


def _run(model: str, dirs: dict[str, Path], out: Path, *extra: str, **args) -> dict:
    flags = [f"--{split}_dir" for split in dirs]
    paths = [str(d) for d in dirs.values()]
    data = [x for pair in zip(flags, paths) for x in pair]
    return image_classification.main(["--model_name_or_path", model, *data, *fast_args(out, **args), *extra])


# --- learning on real photos, outputs, pipeline() -------------------------------------------------------------


@pytest.mark.slow
def test_convnext_learns_clothing_and_output_loads_with_pipeline(convnext, clothing, tmp_path):
    from transformers import pipeline

    out = tmp_path / "run"
    results = _run(convnext, clothing, out, "--save_augment_preview", num_train_epochs=8, learning_rate=3e-3,
                   per_device_train_batch_size=16, eval_strategy="no", image_augment="light")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3  # training loss falls
    assert results["eval_accuracy"] > 0.18  # 10 balanced validation classes: chance is 0.10
    assert results["eval_accuracy"] > results["before_accuracy"]
    assert {"eval_f1_macro", "eval_top5_accuracy", "test_accuracy"} <= set(results)
    for name in ("all_results.json", "training_curves.png", "confusion_matrix.png", "predictions.csv",
                 "augment_preview.png", "preprocessor_config.json", "config.json"):
        assert (out / name).is_file(), name
    preview = Image.open(out / "augment_preview.png")
    assert preview.size == (6 * 34 + 2, 4 * 34 + 2)  # 4 rows of eval view + 5 draws, 32 px tiles, 2 px padding

    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 20 and set(predictions["prediction"]) <= set(CLASSES)
    classify = pipeline("image-classification", model=str(out), device="cpu")
    photos = [str(p) for p in sorted((clothing["test"] / "shoes").iterdir())]
    top = classify(photos, top_k=3)
    assert all(len(row) == 3 and row[0]["label"] in CLASSES for row in top)
    # pipeline() preprocesses with the saved image processor: its scores match the recipe's evaluation path.
    first = predictions.set_index("image").loc[photos[0]]
    assert top[0][0]["label"] == first["prediction"]
    assert top[0][0]["score"] == pytest.approx(first["score"], abs=1e-4)

    # Error analysis: the 16 highest-loss validation images, in errors.csv and a captioned 4 x 4 grid.
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.columns) == ["image", "true_label", "predicted_label", "confidence", "loss"]
    assert len(errors) == 16 and errors["loss"].is_monotonic_decreasing
    assert all(Path(f).is_file() and Path(f).parent.name == label for f, label in zip(errors["image"], errors["true_label"]))
    assert Image.open(out / "errors.png").size[0] > 800
    page = (out / "report.html").read_text()
    assert "Augmentation preview" in page and "highest-loss images" in page

    # predict on the test folder gives predictions.csv's rows again, with the same scores.
    predicted = tmp_path / "folder_predictions.csv"
    assert predict(str(out), str(clothing["test"]), str(predicted)) == 20
    again = pd.read_csv(predicted).set_index("image").loc[predictions["image"]]
    assert list(again["prediction"]) == list(predictions["prediction"])
    assert np.allclose(again["score"], predictions["score"], atol=1e-4)


@pytest.mark.slow
def test_vit_freeze_backbone_keeps_it_bit_identical(vit, clothing, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "frozen"
    _run(vit, {"train": clothing["train"], "validation": clothing["validation"]}, out, "--freeze", "backbone",
         learning_rate=1e-2, eval_strategy="no", image_augment="standard")
    before, after = load_file(Path(vit) / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(after) == {f"vit.{k}" for k in before} | {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(before[k], after[f"vit.{k}"]) for k in before)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["6"] == "shoes" and len(config["id2label"]) == 10


@pytest.mark.slow
def test_vit_lora_round_trip(vit, clothing, tmp_path):
    from peft import PeftModel
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out = tmp_path / "lora"
    _run(vit, {"train": clothing["train"], "validation": clothing["validation"]}, out, "--peft", "lora",
         learning_rate=1e-2, eval_strategy="no", lora_r=4)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    # The query and value projections (named q_proj/v_proj in ViT), the head trained in full.
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"} and "classifier" in adapter["modules_to_save"]

    processor = AutoImageProcessor.from_pretrained(out)
    photos = [Image.open(p) for p in sorted((clothing["validation"] / "hat").iterdir())[:4]]
    pixels = processor(photos, return_tensors="pt")["pixel_values"]
    merged = AutoModelForImageClassification.from_pretrained(out).eval()
    base = AutoModelForImageClassification.from_pretrained(vit, num_labels=10)
    reloaded = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits, atol=1e-5)


# --- augmentation -----------------------------------------------------------------------------------------------


def test_train_split_is_augmented_per_epoch_eval_split_is_not(vit, clothing):
    """Through the recipe's own data path: AugmentedDataset for train, set_transform for eval."""
    import datasets
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(vit)
    geometry = geometry_from_processor(processor)
    files = {"train": str(clothing["train"] / "**")}
    dataset = datasets.load_dataset("imagefolder", data_files=files, split="train").rename_column("label", "labels")
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    transform = train_transform("standard", None, geometry)
    inputs = ImageInputs(processor, "image", 1024, decode_side(transform, geometry))
    evaluation = dataset.with_transform(inputs)
    train = dataset.with_transform(inputs)
    wrapped = TrainAugmentation(ImageAugmenter(transform, "image"), inputs.encode, ["image"], seed=0,
                                raw_view=inputs.raw_view).wrap(train)
    epoch0 = wrapped.__getitems__([0, 5])
    wrapped.epoch = 1
    epoch1 = wrapped.__getitems__([0, 5])
    assert set(epoch0[0]) == {"pixel_values", "labels", TRAIN_MARK}
    assert not torch.equal(epoch0[0]["pixel_values"], epoch1[0]["pixel_values"])
    wrapped.epoch = 0
    assert torch.equal(epoch0[1]["pixel_values"], wrapped.__getitems__([5])[0]["pixel_values"])
    assert torch.equal(evaluation[0]["pixel_values"], evaluation[0]["pixel_values"])
    assert torch.equal(train[0]["pixel_values"], evaluation[0]["pixel_values"])  # unwrapped rows (CV held-out) as eval
    assert not torch.equal(evaluation[0]["pixel_values"], epoch0[0]["pixel_values"])


# --- other data sources, image modes ----------------------------------------------------------------------------


def _image(path: Path, mode: str, size: tuple[int, int] = (40, 30), seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(array, "RGBA").convert(mode) if mode != "P" else Image.fromarray(array[..., :3]).quantize(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return str(path)


@pytest.mark.slow
def test_csv_paths_parquet_bytes_modes_mixup_and_determinism(vit, tmp_path):
    """Relative paths in a csv; image bytes in parquet (as Hub datasets store them); grayscale, RGBA, palette and
    RGB files; MixUp + CutMix; and two runs with the same seed give the same model."""
    modes = ["L", "RGBA", "P", "RGB"]
    rows = [{"file": f"images/{i}.png", "kind": ["round", "square"][i % 2]} for i in range(24)]
    for i, row in enumerate(rows):
        _image(tmp_path / row["file"], modes[i % 4], seed=i)
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    assert {Image.open(tmp_path / r["file"]).mode for r in rows} == {"L", "RGBA", "P", "RGB"}
    assert open_image(str(tmp_path / rows[2]["file"]), 1024).mode == "RGB"
    validation = [{"file": {"bytes": (tmp_path / r["file"]).read_bytes(), "path": None}, "kind": r["kind"]} for r in rows[:6]]
    pd.DataFrame(validation).to_parquet(tmp_path / "validation.parquet")

    def train(out: Path) -> dict:
        return image_classification.main([
            "--model_name_or_path", vit, "--train_file", str(tmp_path / "train.csv"), "--image_column", "file",
            "--validation_file", str(tmp_path / "validation.parquet"), "--label_column", "kind",
            "--image_augment", "strong", "--mixup_alpha", "0.4", "--cutmix_alpha", "1.0",
            *fast_args(out, num_train_epochs=2, eval_strategy="no"),
        ])

    results = train(tmp_path / "out")
    assert results["eval_samples"] == 6 and results["train_samples"] == 24
    assert np.isfinite(results["train_loss"]) and "eval_top5_accuracy" not in results  # 2 classes: no top-5
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"] == {"0": "round", "1": "square"}
    again = train(tmp_path / "again")
    assert again["train_loss"] == results["train_loss"] and again["eval_loss"] == results["eval_loss"]


# --- bad input: fails before training, output dir untouched -----------------------------------------------------


@pytest.fixture
def bad_folder(test_data, tmp_path) -> dict[str, Path]:
    dirs = _subset(test_data, tmp_path / "data", {"train": 4, "validation": 2}, classes=["hat", "shoes"])
    photo = next((dirs["train"] / "hat").iterdir()).read_bytes()
    (dirs["train"] / "hat" / "corrupt.jpg").write_bytes(photo[: len(photo) // 3])  # truncated JPEG
    (dirs["train"] / "shoes" / "empty.jpg").write_bytes(b"")
    return dirs


def test_corrupt_and_empty_files_fail_listing_both(vit, bad_folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RecipeInputError) as err:
        _run(vit, bad_folder, out)
    message = str(err.value)
    assert "2 bad rows" in message and "--skip_bad_examples" in message
    assert "hat/corrupt.jpg (corrupt: image file is truncated" in message
    assert "shoes/empty.jpg (empty file (0 bytes))" in message
    assert not out.exists()


def test_skip_bad_examples_trains_and_reports_count(vit, bad_folder, tmp_path):
    # A huge photo in the same folder trains like any other.
    Image.fromarray(np.full((3000, 3000, 3), 128, np.uint8)).save(bad_folder["train"] / "hat" / "huge.jpg")
    out = tmp_path / "out"
    results = _run(vit, bad_folder, out, "--skip_bad_examples", "--max_bad_fraction", "0.2", eval_strategy="no")
    assert results["skipped_bad_examples"] == 2 and results["train_samples"] == 9
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["skipped_bad_examples"] == 2 and saved["skipped_bad_examples_train"] == 2


def test_empty_class_folder(test_data, vit, tmp_path, caplog):
    dirs = _subset(test_data, tmp_path / "data", {"train": 3, "validation": 2}, classes=["hat", "shoes"])
    (dirs["train"] / "scarf").mkdir()
    out = tmp_path / "out"
    with pytest.raises(RecipeInputError, match=r"--train_dir .*class folder scarf has no images, so the model could "
                                               r"never predict that class.*remove the empty folder"):
        _run(vit, dirs, out)
    assert not out.exists()
    (dirs["validation"] / "scarf").mkdir()  # absent from validation only: a warning
    check_class_folders(dirs["validation"], "--validation_dir", "validation")
    assert "class folder scarf has no images" in caplog.text


@pytest.mark.parametrize("case", ["unknown validation label", "loose images", "both sources", "not a folder"])
def test_bad_layouts_fail_before_training(case, test_data, vit, tmp_path):
    dirs = _subset(test_data, tmp_path / "data", {"train": 3, "validation": 2}, classes=["hat", "shoes"])
    extra: list[str] = []
    if case == "unknown validation label":
        _subset(test_data, tmp_path / "data", {"validation": 1}, classes=["skirt"])
        pattern = r"labels \['skirt'\] in validation split .*never occur in training \(hat, shoes\)"
    elif case == "loose images":
        (dirs["train"] / "loose.jpg").symlink_to(next((dirs["train"] / "hat").iterdir()).resolve())
        pattern = r"--train_dir .* has images directly inside it \(loose.jpg\); put them in one sub-folder per class"
    elif case == "both sources":
        extra = ["--train_file", str(tmp_path / "x.csv")]
        pattern = r"give class folders \(--train_dir ...\) or --train_file, not both"
    else:
        dirs["train"] = tmp_path / "missing"
        pattern = r"--train_dir .*missing is not a directory"
    out = tmp_path / "out"
    with pytest.raises(RecipeInputError, match=pattern):
        _run(vit, dirs, out, *extra)
    assert not out.exists()


# --- the honest pretrained start (bench/image_pretraining.py) at small scale ----------------------------------


@pytest.mark.slow
def test_rotation_pretraining_then_compare(test_data, clothing, tmp_path):
    """The bench's method: the recipe pretrains on rotation prediction, then compare fine-tunes it and a scratch twin."""
    spec = importlib.util.spec_from_file_location("image_pretraining", ROOT / "bench" / "image_pretraining.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from common.models.tiny import tiny_convnext
    from common.strategies.comparison import compare

    random.seed(0)
    count = bench.make_rotation_dataset(test_data / "clothing_small" / "train", tmp_path / "rotation", side=48,
                                        per_class=4)
    assert count == 40 and len(list((tmp_path / "rotation" / "rot90").iterdir())) == 40
    init = tiny_convnext(tmp_path / "init")
    pretext = image_classification.main(
        [*bench.pretext_args(init, str(tmp_path / "rotation"), str(tmp_path / "pretext"), 4, 3e-3), "--seed", "0"])
    assert pretext["eval_samples"] == 16 and pretext["train_loss"] < pretext["before_loss"]
    labels = json.loads((tmp_path / "pretext" / "config.json").read_text())["id2label"]
    assert sorted(labels.values()) == ["rot0", "rot180", "rot270", "rot90"]

    summary = compare(image_classification.main, [
        *bench.finetune_args(str(tmp_path / "pretext"), str(clothing["train"]), str(clothing["validation"]),
                             str(tmp_path / "compare"), 2, 3e-3), "--seed", "0"])
    assert summary["metric_key"] == "eval_accuracy"
    assert set(summary["runs"]) == {"pretrained", "from_scratch"}
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        assert (tmp_path / "compare" / name).is_file()
    # The pretrained run started from the rotation model's backbone, its 4-way head replaced by a 10-way one.
    config = json.loads((tmp_path / "compare" / "pretrained" / "config.json").read_text())
    assert len(config["id2label"]) == 10 and config["id2label"]["0"] == "dress"


def test_class_folders_named_by_digits_are_classes_in_numeric_order(test_data, vit, tmp_path, capsys):
    """Class folders 0, 1, 2 and 10 (MNIST-like): four classes named by their folders, in numeric order (not 0, 1,
    10, 2), both in `inspect` and in a run."""
    root = tmp_path / "digits"
    for name, source in zip(["0", "1", "2", "10"], CLASSES):
        (root / name).mkdir(parents=True)
        for file in sorted((test_data / "clothing_small/train" / source).iterdir())[:4]:
            (root / name / file.name).symlink_to(file)
    argv = ["--model_name_or_path", vit, "--train_dir", str(root), "--validation_split", "0.25"]
    assert_class_folders_named_by_digits_are_classes("image_classification", argv, tmp_path, capsys)
