"""--text_augment: EDA-style ops, deterministic per (seed, epoch, row), train split only, clear errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import fast_args
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
)
from transformers import TrainingArguments as HfTrainingArguments

from common.core.errors import RecipeInputError
from common.dispatch import FinetuneArguments
from common.toolkit.augment import TrainAugmentation
from common.toolkit.augment.text import parse_text_augment, text_augmenter
from common.training.single_run import build_trainer
from common.training.task import Task
from recipes import text_classification

SENTENCES = [
    "a stirring , funny and finally transporting film",
    "apparently reassembled from the cutting-room floor",
    "the performances are uniformly excellent and the script is sharp",
    "dull , lifeless and far too long for its own good",
    "an utterly charming and hilarious film that reminds us",
    "the plot is nothing but boilerplate cliches from start to finish",
    "a gorgeous , witty , seductive movie",
    "it 's a lot to ask people to sit still for two hours",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


def test_parse_spec_forms():
    expected = {"swap": 0.1, "delete": 0.2, "insert": 0.0, "unk": 1.0}
    assert parse_text_augment(["swap=0.1", "delete=0.2", "insert=0", "unk=1"]) == expected
    assert parse_text_augment("swap=0.1,delete=0.2 insert=0 unk=1") == expected
    assert parse_text_augment({"swap": 0.1, "delete": 0.2, "insert": 0, "unk": 1}) == expected


def test_yaml_forms(tmp_path):
    from common.core.config import parse_args

    for i, value in enumerate(["{swap: 0.1, unk: 0.2}", "[swap=0.1, unk=0.2]"]):
        config = tmp_path / f"augment{i}.yaml"
        config.write_text(f"text_augment: {value}\n")
        (finetune_args,) = parse_args((FinetuneArguments,), ["--config", str(config)])
        assert parse_text_augment(finetune_args.text_augment) == {"swap": 0.1, "unk": 0.2}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["swapp=0.1"], r"unknown operation 'swapp' \(did you mean 'swap'\?\)"),
        (["shuffle=0.1"], r"unknown operation 'shuffle'.*Operations: swap, delete, insert, unk, mask"),
        (["swap"], r"'swap': write each operation as op=probability"),
        (["delete=1.5"], r"delete=1.5: the probability must be in \[0, 1\]"),
        (["insert=often"], r"insert=often: the probability must be a number"),
        (["unk=0.1", "unk=0.2"], r"'unk' is given twice"),
    ],
)
def test_bad_spec_names_the_op(spec, message):
    with pytest.raises(RecipeInputError, match=message):
        parse_text_augment(spec)


def test_bad_spec_fails_the_recipe(tiny_bert, csv_file, tmp_path):
    train = csv_file([{"text": s, "label": i % 2} for i, s in enumerate(SENTENCES)])
    with pytest.raises(RecipeInputError, match="unknown operation 'delet'"):
        text_classification.main(["--model_name_or_path", tiny_bert, "--train_file", train,
                                  "--text_augment", "swap=0.1", "delet=0.1", *fast_args(tmp_path / "out")])


def test_ops(tokenizer):
    text = SENTENCES[2]
    words = text.split()

    def run(seed: int = 0, **probabilities) -> list[str]:
        return text_augmenter(probabilities, ["text"], tokenizer).augment(text, np.random.default_rng(seed)).split()

    assert run(swap=0.0, delete=0.0, insert=0.0, unk=0.0) == words
    assert run(unk=1.0) == [tokenizer.unk_token] * len(words)
    assert run(mask=1.0) == [tokenizer.mask_token] * len(words)
    assert len(run(delete=1.0)) == 1 and run(delete=1.0)[0] in words
    augmenter = text_augmenter({"unk": 1.0}, ["text"], tokenizer)
    assert augmenter({"text": "", "label": 1}, np.random.default_rng(0)) == {"text": "", "label": 1}

    # Over many draws, each op acts on its probability's share of the words, using only in-sentence words.
    seeds = range(300)
    swapped = [run(seed, swap=0.2) for seed in seeds]
    assert all(Counter(out) == Counter(words) for out in swapped)
    assert 0.2 < np.mean([np.mean([a != b for a, b in zip(out, words)]) for out in swapped]) < 0.45
    deleted = [run(seed, delete=0.3) for seed in seeds]
    assert all(set(out) <= set(words) for out in deleted)
    assert np.mean([len(out) for out in deleted]) / len(words) == pytest.approx(0.7, abs=0.04)
    inserted = [run(seed, insert=0.3) for seed in seeds]
    assert all(set(out) <= set(words) for out in inserted)
    assert np.mean([len(out) for out in inserted]) / len(words) == pytest.approx(1.3, abs=0.04)
    dropped = [run(seed, unk=0.3) for seed in seeds]
    assert np.mean([out.count(tokenizer.unk_token) for out in dropped]) / len(words) == pytest.approx(0.3, abs=0.04)


def test_word_dropout_needs_the_token(tokenizer):
    class NoMask:
        unk_token = "[UNK]"
        mask_token = None

    with pytest.raises(RecipeInputError, match="mask=0.1: the tokenizer NoMask has no mask_token"):
        text_augmenter(["mask=0.1"], ["text"], NoMask())


def _augmentation(tokenizer, seed: int = 0) -> TrainAugmentation:
    augmenter = text_augmenter(["swap=0.2", "delete=0.1", "insert=0.1", "unk=0.2"], ["text"], tokenizer)
    return TrainAugmentation(augmenter, lambda batch: tokenizer(batch["text"], truncation=True), ["text"], seed)


def _train_split(tokenizer) -> Dataset:
    raw = Dataset.from_dict({"text": SENTENCES, "labels": [i % 2 for i in range(len(SENTENCES))]})
    return raw.map(lambda batch: tokenizer(batch["text"]), batched=True)


def test_deterministic_per_seed_and_epoch(tokenizer):
    train = _train_split(tokenizer)
    rows = list(range(len(train)))

    def fetch(seed: int, epoch: int, indices=rows) -> list[dict]:
        dataset = _augmentation(tokenizer, seed).wrap(train)
        dataset.epoch = epoch
        return dataset.__getitems__(indices)

    first = fetch(0, 0)
    assert first == fetch(0, 0)
    assert fetch(0, 0, [5, 2]) == [first[5], first[2]]  # independent of batch composition and order
    assert first != fetch(0, 1) and first != fetch(1, 0)
    clean = train["input_ids"]
    assert sum(row["input_ids"] != ids for row, ids in zip(first, clean)) >= len(rows) // 2
    for row, original in zip(first, train):
        assert set(row) == {"input_ids", "token_type_ids", "attention_mask", "labels"}  # raw text dropped
        assert row["labels"] == original["labels"]


class _Recorder(TrainerCallback):
    """Collates like DataCollatorWithPadding and files each batch under the phase the trainer is in."""

    def __init__(self, tokenizer):
        self.collate = DataCollatorWithPadding(tokenizer)
        self.phase = "eval"
        self.batches: dict[str, list[list[int]]] = {}

    def __call__(self, features):
        self.batches.setdefault(self.phase, []).extend(f["input_ids"] for f in features)
        return self.collate(features)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.phase = f"train{round(state.epoch)}"

    def on_epoch_end(self, args, state, control, **kwargs):
        self.phase = "eval"


def test_trainer_augments_train_only_and_per_epoch(tiny_bert, tokenizer, tmp_path):
    train = _train_split(tokenizer)
    evaluation = train.remove_columns("text")

    def train_recorded(seed: int) -> dict[str, list]:
        recorder = _Recorder(tokenizer)
        task = Task(
            name="augment", model_init=lambda: AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2),
            train_dataset=train, eval_dataset=evaluation, test_dataset=None, data_collator=recorder,
            compute_metrics=None, processing_class=tokenizer, main_metric="loss", pipeline_task="text-classification",
            augmentation=_augmentation(tokenizer, seed),
        )
        args = HfTrainingArguments(output_dir=str(tmp_path / f"seed{seed}"), num_train_epochs=2, per_device_train_batch_size=4,
                                   eval_strategy="epoch", save_strategy="no", report_to="none", seed=seed,
                                   disable_tqdm=True)
        trainer = build_trainer(task, args, FinetuneArguments())
        trainer.add_callback(recorder)
        trainer.train()
        return recorder.batches

    batches = train_recorded(0)
    clean = sorted(train["input_ids"])
    # Evaluation saw the eval split exactly as tokenized, at both epochs.
    assert sorted(batches["eval"]) == sorted(clean * 2)
    # Training saw augmented text, new variants each epoch; the same seed repeats them exactly.
    assert sorted(batches["train0"]) != clean and sorted(batches["train0"]) != sorted(batches["train1"])
    assert any(tokenizer.unk_token_id in ids for ids in batches["train0"])
    again = train_recorded(0)
    assert sorted(again["train0"]) == sorted(batches["train0"]) and sorted(again["train1"]) == sorted(batches["train1"])


def test_recipe_trains_with_augmentation(tiny_bert, test_data, tmp_path, monkeypatch):
    from common.toolkit.augment import AugmentedDataset

    seen: list[tuple[int, int]] = []  # (epoch, rows) of every augmented batch
    fetch = AugmentedDataset.__getitems__
    monkeypatch.setattr(AugmentedDataset, "__getitems__",
                        lambda self, indices: seen.append((self.epoch, len(indices))) or fetch(self, indices))
    out = tmp_path / "sms"
    results = text_classification.main([
        "--model_name_or_path", tiny_bert,
        "--train_file", str(test_data / "sms_spam/train.tsv"), "--validation_file", str(test_data / "sms_spam/dev.tsv"),
        "--max_train_samples", "24", "--max_eval_samples", "16",
        "--text_augment", "swap=0.1", "delete=0.1", "insert=0.1", "unk=0.1",
        *fast_args(out, num_train_epochs=2),
    ])
    assert results["eval_samples"] == 16 and results["train_samples"] == 24
    assert results["epoch"] == pytest.approx(2.0)
    assert np.isfinite(results["train_loss"])
    assert (out / "model.safetensors").is_file()
    # Every train row went through the augmentation once per epoch; evaluation did not.
    assert {epoch: sum(n for e, n in seen if e == epoch) for epoch, _ in seen} == {0: 24, 1: 24}
