"""Fine-tune a speech recognition model: CTC (wav2vec2, HuBERT, WavLM, Data2VecAudio) or seq2seq (Whisper, ...).

    python recipes/speech_recognition.py --config recipes/configs/speech_recognition/fsdd_tiny_ctc.yaml
    accelerate launch recipes/speech_recognition.py --config recipes/configs/speech_recognition/fsdd_tiny_ctc.yaml

The family comes from the checkpoint's config. CTC models without a tokenizer get a character vocabulary built
from the training transcripts. Data: a Hub dataset, an audiofolder (--audio_folder), or csv/tsv/jsonl/parquet
manifests with an audio path column and a transcript column. Every option: `python recipes/speech_recognition.py --help`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from transformers import (
    AutoFeatureExtractor,
    AutoModelForCTC,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    GenerationConfig,
    Seq2SeqTrainingArguments,
    Wav2Vec2Processor,
    set_seed,
)

from common.core.config import TRAINING_DEFAULTS, RunArguments, input_loader_defaults, parse_args
from common.core.errors import RecipeInputError, run_main
from common.data import add_validation_split, cap_splits, drop_unused_splits, require_columns
from common.data.arrow import list_lengths
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
    normalize_text,
)
from common.data.bad_rows import add_counts
from common.data.files import fill_path_template, find_column
from common.data.rows import cv_groups
from common.dispatch import FinetuneArguments, finetune
from common.models.loading import ModelArguments, load_config, load_processor
from common.models.runtime import inference_pipeline
from common.strategies.prediction import PredictRun
from common.toolkit.augment import TrainAugmentation
from common.toolkit.augment.audio import AudioAugmentArguments, AudioAugmenter
from common.toolkit.finetuning import prepare_model
from common.training.baseline import speech_baseline
from common.training.inspection import DataReport, audio_files, chosen, clip_durations, stop_for_inspection
from common.training.seq2seq import generation_kwargs
from common.training.single_run import predicted_split, setup_run
from common.training.speech import (
    CTC,
    SEQ2SEQ,
    AudioInputs,
    CTCTrainer,
    SpeechCollator,
    SpeechMetrics,
    SpeechSeq2SeqTrainer,
    checkpoint_generation,
    checkpoint_tokenizer,
    ctc_vocabulary,
    decode_predictions,
    load_speech_model,
    model_family,
    set_whisper_prefix,
    speech_errors,
    write_speech_predictions,
)
from common.training.task import Task

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")

DEFAULTS = {
    **TRAINING_DEFAULTS,
    **input_loader_defaults(),
    "output_dir": "outputs/speech-recognition",
    "per_device_eval_batch_size": 32,
    "learning_rate": 1e-4,
    "num_train_epochs": 5,
    "weight_decay": 0.0,
    "predict_with_generate": True,  # seq2seq models transcribe by generation at evaluation
    "metric_for_best_model": "wer",  # early stopping and the best checkpoint follow WER, lower being better
    "greater_is_better": False,
    "remove_unused_columns": False,  # features are computed by set_transform at batch time
}


@dataclass
class SpeechModelArguments(ModelArguments):
    language: str | None = field(
        default=None, metadata={"help": "Whisper: language of the speech, e.g. english or en (multilingual checkpoints)."}
    )
    task: str = field(default="transcribe", metadata={"help": "Whisper: transcribe | translate (to English)."})
    layerdrop: float | None = field(
        default=None, metadata={"help": "Probability of skipping each transformer layer in training (LayerDrop)."}
    )
    build_vocab: bool = field(
        default=False,
        metadata={"help": "CTC: build the character vocabulary from the training transcripts even when the "
                          "checkpoint has a tokenizer (its CTC head is then re-initialised)."},
    )


@dataclass
class SpeechDataArguments(AudioDataArguments):
    text_column: str | None = field(
        default=None, metadata={"help": "Transcript column. Default: text, transcript, transcription or sentence."}
    )
    chars_to_ignore: str = field(
        default=r"[^\w\s']", metadata={"help": "Regex of characters removed by text normalisation (after lowercasing)."}
    )
    normalize_transcripts: bool = field(
        default=True, metadata={"help": "Train on normalised transcripts. WER is reported normalised and raw either way."}
    )


ARGUMENTS = (SpeechModelArguments, SpeechDataArguments, AudioAugmentArguments, FinetuneArguments, RunArguments,
             Seq2SeqTrainingArguments)


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments: recipe defaults < --config YAML < command line.
    model_args, data_args, augment_args, finetune_args, run_args, training_args = parse_args(ARGUMENTS, argv, DEFAULTS)
    if finetune_args.cv_folds or finetune_args.ensemble or finetune_args.ensemble_models or finetune_args.cache_features:
        raise RecipeInputError("--cv_folds, --ensemble and --cache_features work on classification heads; speech "
                               "recognition does not support them.")
    setup_run(training_args, run_args)
    set_seed(training_args.seed)

    # 2. Data: Hub dataset, audiofolder or manifests; columns; validation split; caps.
    splits, sources, bases = load_speech_splits(data_args)
    if "train" not in splits:
        raise RecipeInputError("no training split: pass --train_file, --audio_folder or a --dataset_name with a train split.")
    columns = splits["train"].column_names
    audio_column = find_column(columns, data_args.audio_column, AUDIO_COLUMNS, "audio", sources["train"])
    text_column = find_column(columns, data_args.text_column, TEXT_COLUMNS, "text", sources["train"])
    for split, dataset in splits.items():
        text = [text_column] if split != "test" else []
        require_columns(dataset, [audio_column, *text], sources[split], "--audio_column / --text_column")
    splits, missing = fill_path_template(splits, audio_column, data_args.audio_path_template, "--audio_path_template",
                                         bases, sources, data_args)
    groups = (cv_groups(splits["train"], finetune_args.cv_group_column, sources["train"])
              if finetune_args.cv_group_column else None)
    splits = add_validation_split(splits, data_args.validation_split, training_args.seed, groups=groups)
    sources.setdefault("validation", f"validation split held out from {sources['train']}")
    bases.setdefault("validation", bases["train"])
    splits = cap_splits(drop_unused_splits(splits, training_args), data_args, training_args.seed)

    # 3. Model family (from the config) and feature extractor, whose sampling rate the audio is decoded at.
    config = load_config(model_args)
    family = model_family(config)
    config.update(augment_args.spec_augment(config.model_type))
    feature_extractor = load_processor(AutoFeatureExtractor, model_args)
    sampling_rate = feature_extractor.sampling_rate

    # 4. Decode every clip once (resampled, mono), then fail on or skip bad rows, then filter by duration.
    with training_args.main_process_first(desc="decode audio"):
        splits = decode_splits(splits, audio_column, sampling_rate, bases, data_args.preprocessing_num_workers)
    normalize = partial(normalize_text, chars_to_ignore=data_args.chars_to_ignore or None)
    splits, counts = check_examples(splits, text_column, sources, data_args, normalize)
    splits, filtered = filter_durations(splits, sampling_rate, data_args.min_duration_s, data_args.max_duration_s,
                                        input_window(feature_extractor), sources)
    counts = add_counts(missing, counts, filtered)
    logger.info("%s model (%s); clips %s at %d Hz", family, config.model_type, {k: len(v) for k, v in splits.items()},
                sampling_rate)
    stop_for_inspection(DataReport(  # `finetune-recipes inspect` ends here (the config and feature extractor only)
        "speech_recognition", splits, sources, skipped=counts, data_args=data_args,
        columns={"audio": chosen(audio_column, "--audio_column", data_args.audio_column, AUDIO_COLUMNS),
                 "text": chosen(text_column, "--text_column", data_args.text_column, TEXT_COLUMNS)},
        first_columns=[FILE, "num_samples", text_column], shown_as=clip_durations(sampling_rate),
        measures=[audio_files(sampling_rate)]))

    # 5. Transcripts and tokenizer: CTC builds a character vocabulary when the checkpoint has none.
    references = {split: list(d[text_column]) for split, d in splits.items() if text_column in d.column_names}
    if family == SEQ2SEQ:
        processor = load_processor(AutoProcessor, model_args)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise RecipeInputError(f"seq2seq checkpoint '{model_args.model_name_or_path}' has no tokenizer; give one "
                                   "with --tokenizer_name.")
        if config.model_type == "whisper":
            set_whisper_prefix(tokenizer, model_args)
    else:
        tokenizer = None if model_args.build_vocab else checkpoint_tokenizer(model_args)
    # Checkpoint CTC vocabularies in capitals (wav2vec2-base-960h: A-Z) get capitalised targets.
    upper = family == CTC and tokenizer is not None and not any(c.islower() for c in tokenizer.get_vocab() if len(c) == 1)

    def target(text: str) -> str:
        text = normalize(text) if data_args.normalize_transcripts else text
        return text.upper() if upper else text

    if family == CTC:
        tokenizer = ctc_vocabulary(tokenizer, {split: [target(t) for t in texts] for split, texts in references.items()},
                                   sources)
        processor = Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)
        config.update({"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                       "ctc_loss_reduction": "mean", "ctc_zero_infinity": True})
        if training_args.label_smoothing_factor:
            raise RecipeInputError("--label_smoothing does not apply to CTC training.")
    if model_args.layerdrop is not None:
        names = [n for n in ("layerdrop", "encoder_layerdrop", "decoder_layerdrop") if hasattr(config, n)]
        config.update(dict.fromkeys(names, model_args.layerdrop))
        logger.info("--layerdrop %.3g set %s", model_args.layerdrop, ", ".join(names))

    def add_labels(batch: dict) -> dict:
        return {"labels": tokenizer([target(t) for t in batch[text_column]]).input_ids}

    files = {split: list(d[FILE]) for split, d in splits.items()}
    durations = {split: np.asarray(list_lengths(d, SPEECH)) / sampling_rate for split, d in splits.items()}
    with training_args.main_process_first(desc="tokenize transcripts"):
        splits = {split: (d.map(add_labels, batched=True) if split in references else d) for split, d in splits.items()}
    splits = {split: d.select_columns([SPEECH, "labels"] if "labels" in d.column_names else [SPEECH])
              for split, d in splits.items()}

    # 6. Model: CTC head or seq2seq, with the toolkit (freezing, LoRA, dropout) applied per fresh load.
    auto_class = AutoModelForCTC if family == CTC else AutoModelForSpeechSeq2Seq
    model_init = partial(prepare_model, partial(load_speech_model, auto_class, model_args, config), finetune_args)

    # 7. Lazy inputs: features per batch; --audio_augment changes train waveforms first.
    augment = any(augment_args.probabilities.values())
    inputs = AudioInputs(feature_extractor)
    for dataset in splits.values():
        dataset.set_transform(inputs)
    augmentation = None
    if augment:
        augmentation = TrainAugmentation(AudioAugmenter(augment_args, sampling_rate, SPEECH), inputs.encode,
                                         [SPEECH], training_args.seed, raw_view=inputs.raw_view)
    decode = partial(decode_predictions, tokenizer=tokenizer, family=family)
    metrics = SpeechMetrics(decode, references, normalize)

    predicted = predicted_split(splits)

    def write_predictions(output, out_dir: Path) -> None:
        write_speech_predictions(out_dir / "predictions.tsv", files[predicted], references.get(predicted),
                                 decode(output.predictions), normalize)

    def error_analysis(output, n: int):
        return speech_errors(files["validation"], references["validation"], decode(output.predictions),
                             durations["validation"], normalize, n)

    # Seq2seq models generate as Seq2SeqTrainer does, not with the pipeline's defaults (5 beams, 256 new tokens).
    call_kwargs = {}
    if family == SEQ2SEQ:
        generation = checkpoint_generation(model_args) or GenerationConfig.from_model_config(config)
        call_kwargs = {"generate_kwargs": generation_kwargs(training_args, generation)}

    # 8. Train, evaluate, predict, report.
    task = Task(
        name="speech_recognition",
        model_init=model_init,
        train_dataset=splits["train"],
        eval_dataset=splits.get("validation"),
        test_dataset=splits.get("test"),
        data_collator=SpeechCollator(feature_extractor, config.decoder_start_token_id if family == SEQ2SEQ else None),
        compute_metrics=metrics,
        processing_class=processor,
        main_metric="wer",
        greater_is_better=False,
        pipeline_task="automatic-speech-recognition",
        pipeline_call_kwargs=call_kwargs,
        input_columns=[audio_column],
        model_name=model_args.model_name_or_path,
        trainer_class=CTCTrainer if family == CTC else SpeechSeq2SeqTrainer,
        write_predictions=write_predictions if predicted else None,
        error_analysis=error_analysis if "validation" in references else None,
        augmentation=augmentation,
        data_results=counts,
        baseline=partial(speech_baseline, references["train"], references.get("validation", []), normalize),
        output_texts=lambda output: ([normalize(t) for t in decode(output.predictions)],
                                     [normalize(r) for r in references["validation"]]),
        output_noun="transcript",
    )
    return finetune(task, training_args, finetune_args)


def predict_file(run: PredictRun, input_path: str, output: str) -> int:
    """`finetune-recipes predict`: a folder of audio files or a manifest with the run's audio column ->
    predictions.tsv's columns (audio_file, hypothesis), transcribed with the run's generation settings."""
    kept, rate = run.clips(input_path)
    pipe = inference_pipeline("automatic-speech-recognition", run.model, run.device)
    hypotheses = []
    for chunk in run.chunks(kept, "clips"):
        outputs = pipe([{"raw": c[SPEECH], "sampling_rate": rate} for _, c in chunk], batch_size=run.batch_size,
                       **run.call_kwargs)
        hypotheses += [o["text"].strip() for o in outputs]
    write_speech_predictions(output, [f for f, _ in kept], None, hypotheses, normalize_text)
    return len(kept)


if __name__ == "__main__":
    run_main(main)
