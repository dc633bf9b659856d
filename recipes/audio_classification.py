"""Fine-tune a pretrained audio model to classify clips: spoken digits, keywords, speakers, sounds.

    python recipes/audio_classification.py --config recipes/configs/audio_classification/minds14_intent_wav2vec2.yaml
    accelerate launch recipes/audio_classification.py --config recipes/configs/audio_classification/minds14_intent_wav2vec2.yaml

Data: a manifest (csv/tsv/jsonl/parquet with an audio path column and a label column), an audiofolder, or a Hub
dataset; clips are decoded and resampled to the model's rate. Models: AutoModelForAudioClassification (wav2vec2,
HuBERT, AST, Whisper encoder). Every option: `python recipes/audio_classification.py --help`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from datasets import DatasetDict
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, TrainingArguments, set_seed

from common.core.config import TRAINING_DEFAULTS, RunArguments, input_loader_defaults, parse_args
from common.core.errors import RecipeInputError, run_main
from common.data import require_columns
from common.data.audio import (
    AUDIO_COLUMNS,
    FILE,
    SPEECH,
    AudioDataArguments,
    check_examples,
    decode_splits,
    filter_durations,
    input_window,
    load_speech_splits,
)
from common.data.bad_rows import add_counts
from common.data.files import fill_path_template, find_column
from common.data.labelled import prepare_labelled_splits
from common.data.labels import SINGLE
from common.dispatch import FinetuneArguments, finetune
from common.models.loading import ModelArguments, load_config, load_model, load_processor
from common.strategies.prediction import PredictRun
from common.toolkit.augment import TrainAugmentation
from common.toolkit.augment.audio import AudioAugmentArguments, AudioAugmenter
from common.toolkit.finetuning import prepare_model
from common.training.error_analysis import classification_errors
from common.training.inspection import DataReport, audio_files, chosen, clip_durations, stop_for_inspection
from common.training.metrics import build_compute_metrics, scores_from_logits
from common.training.reporting import write_classification_predictions
from common.training.single_run import predicted_split, setup_run
from common.training.speech import AudioInputs, SpeechCollator
from common.training.task import Task

logger = logging.getLogger(__name__)

DEFAULTS = {**TRAINING_DEFAULTS, **input_loader_defaults(), "output_dir": "outputs/audio-classification",
            "learning_rate": 3e-5, "num_train_epochs": 5,
            "remove_unused_columns": False}  # features are computed by set_transform


@dataclass
class AudioClassificationDataArguments(AudioDataArguments):
    label_column: str = field(default="label", metadata={"help": "Column holding each clip's class."})
    class_names: list[str] | None = field(
        default=None, metadata={"help": "Class names for integer labels, in sorted id order."})
    class_names_file: str | None = field(default=None, metadata={"help": "A text file with one class name per line."})


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments: recipe defaults < --config YAML < command line.
    model_args, data_args, augment_args, finetune_args, run_args, training_args = parse_args(
        (ModelArguments, AudioClassificationDataArguments, AudioAugmentArguments, FinetuneArguments, RunArguments,
         TrainingArguments), argv, DEFAULTS)
    setup_run(training_args, run_args)
    set_seed(training_args.seed)

    # 2. Data: manifests, an audiofolder or a Hub dataset; columns.
    splits, sources, bases = load_speech_splits(data_args)
    if "train" not in splits:
        raise RecipeInputError("no training split: pass --train_file, --audio_folder or a --dataset_name with a train split.")
    audio_column = find_column(splits["train"].column_names, data_args.audio_column, AUDIO_COLUMNS, "audio",
                               sources["train"])
    label = data_args.label_column
    for split, dataset in splits.items():
        require_columns(dataset, [audio_column, *([label] if split != "test" else [])], sources[split],
                        "--audio_column / --label_column")
    splits, missing = fill_path_template(splits, audio_column, data_args.audio_path_template, "--audio_path_template",
                                         bases, sources, data_args)

    # 3. Labels (an empty one is a bad row); validation held out by group (--cv_group_column speaker: no speaker on
    #    both sides); caps; then every clip left decoded once at the feature extractor's rate (resampled, mono),
    #    bad clips failed on or skipped, and durations filtered.
    feature_extractor = load_processor(AutoFeatureExtractor, model_args)
    rate = feature_extractor.sampling_rate

    def decode(splits: DatasetDict, sources: dict[str, str]) -> tuple[DatasetDict, dict[str, int]]:
        bases.setdefault("validation", bases["train"])  # a held-out validation split's clips sit where train's do
        with training_args.main_process_first(desc="decode audio"):
            splits = decode_splits(splits, audio_column, rate, bases, data_args.preprocessing_num_workers)
        splits, counts = check_examples(splits, None, sources, data_args, str)
        splits, filtered = filter_durations(splits, rate, data_args.min_duration_s, data_args.max_duration_s,
                                            input_window(feature_extractor), sources)
        return splits, add_counts(counts, filtered)

    data = prepare_labelled_splits(
        splits, sources, data_args, training_args, label, group_column=finetune_args.cv_group_column,
        class_names=data_args.class_names, class_names_file=data_args.class_names_file,
        one_class="gives each clip one class", disjoint_groups=True, check_sampled=decode)
    splits, sources, spec, groups, source_rows = (data.splits, data.sources, data.label_spec, data.groups,
                                                  data.source_rows)
    counts = add_counts(missing, data.skipped)

    # 4. Model, its head named by the classes.
    config = load_config(model_args, num_labels=spec.num_labels, id2label=spec.id2label, label2id=spec.label2id)
    model_init = partial(prepare_model, partial(load_model, AutoModelForAudioClassification, model_args, config),
                         finetune_args)

    # 5. What the run uses, logged; `finetune-recipes inspect` reports it and stops.
    logger.info("%d classes %s; clips %s at %d Hz", spec.num_labels, spec.names, {k: len(v) for k, v in splits.items()},
                rate)
    stop_for_inspection(DataReport(  # `finetune-recipes inspect` ends here; a run goes on
        "audio_classification", splits, sources, label_spec=spec, skipped=counts, data_args=data_args,
        columns={"audio": chosen(audio_column, "--audio_column", data_args.audio_column, AUDIO_COLUMNS),
                 "label": chosen(label, "--label_column", label != "label")},
        first_columns=[FILE, "num_samples"], shown_as=clip_durations(rate), measures=[audio_files(rate)]))

    # 6. Lazy inputs: features per batch; --audio_augment changes train waveforms first.
    files = {split: list(d[FILE]) for split, d in splits.items()}
    stratify = list(splits["train"]["labels"])
    splits = {split: d.select_columns([SPEECH, "labels"] if "labels" in d.column_names else [SPEECH])
              for split, d in splits.items()}
    augment = any(augment_args.probabilities.values())
    inputs = AudioInputs(feature_extractor)
    for dataset in splits.values():
        dataset.set_transform(inputs)
    augmentation = (TrainAugmentation(AudioAugmenter(augment_args, rate, SPEECH), inputs.encode, [SPEECH],
                                      training_args.seed, raw_view=inputs.raw_view) if augment else None)
    predicted = predicted_split(splits)

    def write_predictions(output, out_dir: Path) -> None:
        write_classification_predictions(out_dir / "predictions.csv", {"audio_file": files[predicted]},
                                         scores_from_logits(output.predictions, SINGLE), SINGLE, spec.names)

    def error_analysis(output, n: int):
        return classification_errors(output, spec, {"audio_file": files["validation"]}, n)

    # 7. Train, evaluate, predict, report.
    task = Task(
        name="audio_classification",
        model_init=model_init,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation"),
        test_dataset=splits.get("test"),
        data_collator=SpeechCollator(feature_extractor),
        compute_metrics=build_compute_metrics(SINGLE, run_args.metric),
        processing_class=feature_extractor,
        main_metric=spec.main_metric,
        pipeline_task="audio-classification",
        pipeline_call_kwargs={},  # clips decoded at the feature extractor's rate, as predict decodes them
        model_name=model_args.model_name_or_path,
        label_spec=spec,
        input_columns=[audio_column],
        write_predictions=write_predictions if predicted else None,
        error_analysis=error_analysis if "validation" in splits else None,
        stratify=stratify,
        groups=groups,
        source_rows=source_rows,
        train_inputs=lambda: {"audio_file": files["train"]},
        augmentation=augmentation,
        data_results=counts,
    )
    return finetune(task, training_args, finetune_args)


def predict_file(run: PredictRun, input_path: str, output: str) -> int:
    """`finetune-recipes predict`: a folder of audio files or a manifest with the run's audio column ->
    predictions.csv's columns (audio_file, prediction, scores). Clips past the model's window fail or are skipped,
    as in training."""
    kept, rate = run.clips(input_path, whole=True)
    scores, problem_type, names = run.classify([{"raw": c[SPEECH], "sampling_rate": rate} for _, c in kept], "clips")
    write_classification_predictions(output, {"audio_file": [f for f, _ in kept]}, scores, problem_type, names)
    return len(kept)


if __name__ == "__main__":
    run_main(main)
