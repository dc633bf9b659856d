"""Fine-tune a pretrained image model (ViT, DeiT, ConvNeXt, ResNet, Swin, ...) to classify images.

    python recipes/image_classification.py --config recipes/configs/image_classification/clothing_tiny_vit.yaml
    accelerate launch recipes/image_classification.py --config recipes/configs/image_classification/clothing_tiny_vit.yaml

Data: class folders (--train_dir/--validation_dir/--test_dir), a Hub dataset, or csv/jsonl/parquet files
with an image path column. Images are decoded lazily, per batch, so augmentation (common.toolkit.augment.image)
is fresh every epoch. Every option: `python recipes/image_classification.py --help`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from datasets import DatasetDict
from transformers import AutoImageProcessor, AutoModelForImageClassification, TrainingArguments, set_seed

from common.core.config import LOCAL_DATA, TRAINING_DEFAULTS, RunArguments, input_loader_defaults, parse_args
from common.core.errors import RecipeInputError, run_main
from common.data import BadRow, drop_bad_rows, require_columns
from common.data.bad_rows import add_counts
from common.data.files import fill_path_template
from common.data.images import (
    IMAGE_EXTENSIONS,
    find_bad_images,
    image_column,
    image_name,
    image_problem,
    load_image_splits,
    open_image,
    prepare_image_column,
)
from common.data.labelled import prepare_labelled_splits
from common.data.labels import SINGLE
from common.data.options import DataArguments
from common.dispatch import FinetuneArguments, finetune
from common.models.loading import ModelArguments, load_config, load_model, load_processor
from common.strategies.prediction import Lazy, PredictRun
from common.toolkit.augment import TrainAugmentation
from common.toolkit.augment.image import (
    ImageAugmentArguments,
    ImageAugmenter,
    ImageCollator,
    ImageInputs,
    PreviewCallback,
    SoftTargetLoss,
    batch_mixer,
    decode_side,
    geometry_from_processor,
    save_preview,
    train_transform,
)
from common.toolkit.finetuning import prepare_model
from common.training.error_analysis import classification_errors
from common.training.inspection import DataReport, chosen, image_sizes, stop_for_inspection
from common.training.metrics import build_compute_metrics, scores_from_logits
from common.training.reporting import write_classification_predictions
from common.training.single_run import predicted_split, setup_run
from common.training.task import Task

logger = logging.getLogger(__name__)

DEFAULTS = {
    **TRAINING_DEFAULTS,
    **input_loader_defaults(),
    "model_name_or_path": "google/vit-base-patch16-224-in21k",
    "output_dir": "outputs/image-classification",
    "per_device_train_batch_size": 32,
    "num_train_epochs": 5,
    "error_examples": 16,  # one 4 x 4 grid in errors.png
}


@dataclass
class ImageDataArguments(DataArguments):
    train_dir: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Training images, one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Validation images, one sub-folder per class."})
    test_dir: str | None = field(default=None, metadata={LOCAL_DATA: True, "help": "Test images, one sub-folder per class."})
    image_column: str | None = field(
        default=None, metadata={"help": "Column with the image (or its file path, relative to the data file). Default: image or img."}
    )
    image_path_template: str | None = field(
        default=None, metadata={"help": "The image column holds ids: each image's path with the id in place of {}, "
                                        "relative to the data file, e.g. 'images/{}.jpg'."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the class (name or id)."})
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Class names for integer labels, in sorted id order; folder and string labels name themselves."},
    )
    class_names_file: str | None = field(
        default=None, metadata={"help": "A text file with one class name per line, in sorted id order (classes.txt)."}
    )
    max_image_side: int = field(
        default=1024, metadata={"help": "Decode larger images reduced to this longer side (JPEG draft mode), so huge files stay small."}
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments: recipe defaults < --config YAML < command line.
    model_args, data_args, augment_args, finetune_args, run_args, training_args = parse_args(
        (ModelArguments, ImageDataArguments, ImageAugmentArguments, FinetuneArguments, RunArguments, TrainingArguments),
        argv,
        DEFAULTS,
    )
    setup_run(training_args, run_args)
    set_seed(training_args.seed)
    # The image column is decoded by set_transform at batch time: Trainer must not drop it first (transformers #17894).
    training_args.remove_unused_columns = False
    if finetune_args.cache_features and augment_args.augments:
        raise RecipeInputError("--cache_features computes each image's features once, so it needs --image_augment none "
                               "and no --mixup_alpha/--cutmix_alpha.")

    # 2. Data: class folders, Hub dataset or files; check columns.
    splits, sources = load_image_splits(data_args)
    if "train" not in splits:
        raise RecipeInputError("no training split: pass --train_dir, --train_file or a --dataset_name with a train split.")
    column = image_column(splits["train"].column_names, data_args.image_column, sources["train"])
    for split, dataset in splits.items():
        label = [data_args.label_column] if split != "test" else []
        require_columns(dataset, [column, *label], sources[split], "--image_column / --label_column")
    bases = {split: Path(file).resolve().parent for split in splits if (file := getattr(data_args, f"{split}_file"))}
    splits, missing = fill_path_template(splits, column, data_args.image_path_template, "--image_path_template", bases,
                                         sources, data_args)
    splits = prepare_image_column(splits, column, data_args)

    # 3. Bad labels reported or skipped; labels (one class per image); validation held out and every split sampled,
    #    keeping every class; then the image files checked, once sampled: a 300-image cap of a large folder opens
    #    300 files, not all of them.
    bad_images: dict[str, list[BadRow]] = {}

    def drop_bad_images(splits: DatasetDict, sources: dict[str, str]) -> tuple[DatasetDict, dict[str, int]]:
        bad_images.update({split: find_bad_images(ds, column, data_args.preprocessing_num_workers)
                           for split, ds in splits.items()})
        return drop_bad_rows(splits, bad_images, sources, data_args.skip_bad_examples, data_args.max_bad_fraction)

    data = prepare_labelled_splits(
        splits, sources, data_args, training_args, data_args.label_column,
        group_column=finetune_args.cv_group_column, class_names=data_args.class_names,
        class_names_file=data_args.class_names_file, one_class="classifies each image into one class",
        check_sampled=drop_bad_images)
    splits, sources, spec, groups, source_rows = (data.splits, data.sources, data.label_spec, data.groups,
                                                  data.source_rows)
    skipped = add_counts(missing, data.skipped)
    stop_for_inspection(DataReport(  # `finetune-recipes inspect` ends here; a run goes on
        "image_classification", splits, sources, label_spec=spec, data_args=data_args, first_columns=[column],
        measures=[image_sizes(column)], bad_rows=bad_images, skipped=skipped,
        columns={"image": chosen(column, "--image_column", data_args.image_column, ("image", "img")),
                 "label": chosen(data_args.label_column, "--label_column", data_args.label_column != "label")}))

    # 4. Model and image processor (its size, mean and std drive every transform).
    processor = load_processor(AutoImageProcessor, model_args)
    geometry = geometry_from_processor(processor)
    config = load_config(model_args, num_labels=spec.num_labels, id2label=spec.id2label, label2id=spec.label2id,
                         problem_type=SINGLE)
    model_init = partial(prepare_model, partial(load_model, AutoModelForImageClassification, model_args, config),
                         finetune_args)
    logger.info("%d classes: %s; images %s", spec.num_labels, spec.names, {k: len(v) for k, v in splits.items()})

    # 5. Lazy inputs: every split through the image processor (as pipeline() does); augmented train rows are
    #    only decoded, and the augmentation makes their inputs.
    stratify = list(splits["train"]["labels"])  # read before set_transform, which would decode every image
    predicted = predicted_split(splits)
    test_names = [image_name(v, i) for i, v in enumerate(splits[predicted][column])] if predicted else None
    raw_eval = splits["validation"].select_columns([column]) if "validation" in splits else None  # files, not pixels
    transform = train_transform(augment_args.image_augment, augment_args.image_augment_params, geometry)
    inputs = ImageInputs(processor, column, data_args.max_image_side, decode_side(transform, geometry))
    for dataset in splits.values():
        dataset.set_transform(inputs)
    augmentation = mixer = None
    callbacks = []
    if augment_args.augments:
        augmentation = TrainAugmentation(ImageAugmenter(transform, column), inputs.encode, [column],
                                         training_args.seed, raw_view=inputs.raw_view)
        mixer = batch_mixer(augment_args.mixup_alpha, augment_args.cutmix_alpha, spec.num_labels)
        if augment_args.save_augment_preview:
            callbacks.append(PreviewCallback(partial(save_preview, splits["train"], inputs, transform,
                                                     training_args.seed,
                                                     Path(training_args.output_dir) / "augment_preview.png")))
    elif augment_args.save_augment_preview:
        logger.warning("--save_augment_preview: --image_augment none without mixing leaves nothing to preview")

    def write_predictions(output, out_dir: Path) -> None:
        scores = scores_from_logits(output.predictions, SINGLE)
        write_classification_predictions(out_dir / "predictions.csv", {"image": test_names}, scores, SINGLE, spec.names)

    def error_analysis(output, n: int):
        names = [image_name(v, i) for i, v in enumerate(raw_eval[column])]
        return classification_errors(output, spec, {"image": names}, n,
                                     image=lambda i: open_image(raw_eval[i][column], data_args.max_image_side))

    # 6. Train, evaluate, predict, report.
    task = Task(
        name="image_classification",
        model_init=model_init,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation"),
        test_dataset=splits.get("test"),
        data_collator=ImageCollator(mixer),
        compute_metrics=build_compute_metrics(SINGLE, run_args.metric),
        processing_class=processor,
        main_metric=spec.main_metric,
        pipeline_task="image-classification",
        pipeline_call_kwargs={},  # predict decodes at --max_image_side (run_config.json's options), as ImageInputs does
        model_name=model_args.model_name_or_path,
        label_spec=spec,
        input_columns=[column],
        write_predictions=write_predictions if test_names is not None else None,
        error_analysis=error_analysis if raw_eval is not None else None,
        stratify=stratify,
        groups=groups,
        source_rows=source_rows,
        # The files, not pixels: the split without the transform set above.
        train_inputs=partial(lambda train: {"image": [image_name(v, i) for i, v in enumerate(train[column])]},
                             splits["train"].with_format(None)),
        augmentation=augmentation,
        compute_loss_func=SoftTargetLoss(training_args.label_smoothing_factor) if mixer else None,
        callbacks=callbacks,
        data_results=skipped,
    )
    return finetune(task, training_args, finetune_args)


def predict_file(run: PredictRun, input_path: str, output: str) -> int:
    """`finetune-recipes predict`: a folder of images (searched recursively), a text file listing one image path
    per line, or a table with the run's image column -> predictions.csv's columns (image, prediction, scores)."""
    files = run.files(input_path, IMAGE_EXTENSIONS)
    bad = run.drop_bad([(i, why) for i, f in enumerate(files) if (why := image_problem(f))], len(files),
                       f"--input {input_path}")
    files = [f for i, f in enumerate(files) if i not in bad]
    side = run.options.get("max_image_side")
    if side is None:
        side = ImageDataArguments.max_image_side
        logger.warning("run_config.json records no max_image_side: images are decoded at up to %d pixels, the "
                       "recipe's default; the run may have used another.", side)
    scores, problem_type, names = run.classify(Lazy(files, partial(open_image, max_side=side)), "images")
    write_classification_predictions(output, {"image": files}, scores, problem_type, names)
    return len(files)


if __name__ == "__main__":
    run_main(main)
