"""A faithful minimal equivalent of transformers' examples/pytorch/image-classification/run_image_classification.py on
local class folders, run as `run_image_classification.py --train_dir TRAIN_DIR --train_val_split 0 --do_train
--remove_unused_columns False --eval_strategy no --save_strategy no --report_to none`, with no `--do_eval` and
otherwise the example's and transformers' defaults: random sampling, no warmup, no weight decay, logging every 500
steps, no dataloader workers.

    python bench/peers/hf_run_image_classification.py TRAIN_DIR SEED OUTPUT_DIR --model_name_or_path PATH
        [--num_train_epochs 3] [--per_device_train_batch_size 8] [--learning_rate 5e-5]
        [--dataloader_num_workers 0] [--logging_steps 500] [--train_val_split 0]

What run_image_classification does, step for step: set_seed(seed) before anything random; the class folders loaded
with the `imagefolder` builder (one image per file, the `label` ClassLabel taken from the parent folder's name);
without a validation folder, `train_val_split` of the train split held out as validation by an unseeded
`train_test_split` (so drawn from the numpy state set_seed left; with --train_val_split 0, the default here, nothing
is held out and every image is trained on); label2id / id2label from the ClassLabel names (ids written as strings,
as the example does); AutoConfig(num_labels, label2id, id2label, finetuning_task="image-classification") +
AutoModelForImageClassification (ignore_mismatched_sizes False: a checkpoint without a head gets a freshly
initialised one) + AutoImageProcessor; the crop size taken from the processor (`size["shortest_edge"]`, else
(height, width)) and its image_mean/image_std as the normalisation (identity when the processor has none); the
torchvision v1 train pipeline RandomResizedCrop(size) -> RandomHorizontalFlip -> ToTensor -> normalize, applied on
the fly to each image converted to RGB (a dataset transform writing `pixel_values`); a collator stacking
pixel_values and putting the labels in a LongTensor; a plain transformers.Trainer (the image processor as its
processing_class, remove_unused_columns False so the `image` column reaches the transform); train.

Differences, none of them inside `trainer.train()`: the folder is given as `data_dir` rather than as a
`TRAIN_DIR/**` data_files pattern (the same `imagefolder` builder and the same single train split for plain class
folders); no validation transforms, evaluation or accuracy metric (no `--do_eval`, and `evaluate.load` needs the
Hub); no output-directory / last-checkpoint check, no resuming; the trained model, metrics files, trainer state and
model card are not written (the example's `save_model`, `save_metrics`, `save_state` and `create_model_card` come
after `train()` returns); transformers' log verbosity is left at its default. `use_cpu` is set when there is no
CUDA device (what the Trainer would pick anyway). Prints and writes OUTPUT_DIR/results.json: train_samples_per_second,
train_runtime (both from `trainer.train()`'s metrics) and train_loss.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from torchvision import transforms  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    set_seed,
)


def crop_size(image_processor):
    """The example's target size: the processor's shortest edge when it has one, else its (height, width)."""
    size = image_processor.size
    if "shortest_edge" in size:
        return size["shortest_edge"]
    return (size["height"], size["width"])


def train_pipeline(image_processor) -> transforms.Compose:
    """RandomResizedCrop -> RandomHorizontalFlip -> ToTensor -> normalize (identity without processor statistics)."""
    if hasattr(image_processor, "image_mean") and hasattr(image_processor, "image_std"):
        normalize = transforms.Normalize(mean=image_processor.image_mean, std=image_processor.image_std)
    else:
        normalize = transforms.Lambda(lambda tensor: tensor)
    size = crop_size(image_processor)
    return transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), normalize])


def collate(batch):
    """Stack the transformed images; labels as int64, the way the example's collate_fn builds them."""
    return {"pixel_values": torch.stack([item["pixel_values"] for item in batch]),
            "labels": torch.tensor([item["label"] for item in batch], dtype=torch.long)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_dir", help="a folder of class folders")
    parser.add_argument("seed", type=int)
    parser.add_argument("output_dir")
    parser.add_argument("--model_name_or_path", required=True, help="a local model directory")
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--logging_steps", type=float, default=500)
    parser.add_argument("--train_val_split", type=float, default=0.0,
                        help="fraction of the train folder held out (unused: no evaluation); the example's "
                             "default is 0.15")
    options = parser.parse_args()

    training_args = TrainingArguments(
        output_dir=options.output_dir, seed=options.seed,
        per_device_train_batch_size=options.per_device_train_batch_size, learning_rate=options.learning_rate,
        num_train_epochs=options.num_train_epochs, eval_strategy="no", save_strategy="no", report_to=[],
        logging_steps=options.logging_steps, dataloader_num_workers=options.dataloader_num_workers,
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), do_train=True,
    )
    set_seed(training_args.seed)  # the example seeds before loading data and building the model

    dataset = load_dataset("imagefolder", data_dir=options.train_dir)
    if options.train_val_split > 0.0:  # what the example does without a validation folder
        dataset["train"] = dataset["train"].train_test_split(options.train_val_split)["train"]
    train_set = dataset["train"]

    class_names = train_set.features["label"].names
    id2label = {str(index): name for index, name in enumerate(class_names)}
    label2id = {name: index for index, name in id2label.items()}

    config = AutoConfig.from_pretrained(options.model_name_or_path, num_labels=len(class_names), label2id=label2id,
                                        id2label=id2label, finetuning_task="image-classification")
    model = AutoModelForImageClassification.from_pretrained(options.model_name_or_path, config=config,
                                                            ignore_mismatched_sizes=False)
    image_processor = AutoImageProcessor.from_pretrained(options.model_name_or_path)
    pipeline = train_pipeline(image_processor)

    def to_pixel_values(batch):
        batch["pixel_values"] = [pipeline(image.convert("RGB")) for image in batch["image"]]
        return batch

    train_set = train_set.with_transform(to_pixel_values)

    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, processing_class=image_processor,
                      data_collator=collate)
    train_metrics = trainer.train().metrics
    results = {**train_metrics, "train_samples": len(train_set)}
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(options.output_dir) / "results.json").write_text(json.dumps(results, indent=1))
    print(f"train_samples_per_second {results['train_samples_per_second']:.3f}, "
          f"train_runtime {results['train_runtime']:.3f}, train_loss {results['train_loss']:.4f}")


if __name__ == "__main__":
    main()
