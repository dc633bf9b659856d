"""`finetune-recipes predict OUTPUT_DIR --input FILE --output FILE`: batch inference with a trained model or a saved
ensemble, reading inputs with the recipe's own readers and the options the run was trained with.

The output dir's run_config.json names the recipe, its input columns and its options (delimiter, column names,
text columns, image size cap, audio column...), and the pipeline call arguments with which the model predicts as
the run's own predictions did (texts and sources cut at the run's max length, its generation settings);
ensemble.json, when present, makes the ensemble predict.
Inputs per recipe:
- text classification: a csv/tsv/jsonl/parquet table with the run's text column(s);
- image classification: a folder of images (searched recursively), a text file listing one image path per line,
  or a table with the run's image column;
- speech recognition and audio classification: a folder of audio files, or a manifest table with the run's
  audio column;
- translation: a text file of source sentences, one per line;
- token classification: a CoNLL file (the first field of each line is the token), or a table with a list of
  tokens or a text (split on whitespace) per sentence; sentences are windowed as the run windowed them, and the
  output is CoNLL (`token<TAB>predicted tag`).

The output has the columns of the recipe's own predictions file. Unreadable rows (an empty text, an image or
clip that does not decode) fail with their row numbers, or are skipped and counted with --skip_bad_examples
(default: the run's own setting).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import torch
from datasets import Audio
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoFeatureExtractor, pipeline

from common.core.errors import RecipeInputError
from common.data.audio import SPEECH, decode_audio, input_window, normalize_text, window_problem
from common.data.files import FORMATS, load_file, require_columns
from common.data.images import IMAGE_EXTENSIONS, image_problem, open_image
from common.data.parallel import read_lines
from common.data.word_tags import TABLE_FORMATS, TOKEN_COLUMNS, TOKENS, read_conll
from common.strategies.ensembling import ENSEMBLE_FILE, Ensemble, load_ensemble
from common.training.html_report import PIPELINE_CALL_KWARGS, RUN_CONFIG_FILE
from common.training.reporting import write_classification_predictions
from common.training.seq2seq import write_translations
from common.training.speech import write_speech_predictions
from common.training.tagging import word_scores, write_conll
from common.training.translation_pipeline import TranslationPipeline

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm"})
SHOWN = 10  # bad rows quoted in an error


def _chunks(items: Sequence, size: int, what: str) -> Iterator[Sequence]:
    """The inputs in chunks, behind a progress bar counting rows."""
    with tqdm(total=len(items), desc=f"predict ({what})", unit=what) as bar:
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            yield chunk
            bar.update(len(chunk))


def _drop_bad(problems: list[tuple[int, str]], total: int, where: str, skip: bool) -> set[int]:
    """Rows to leave out: none when all are fine; the bad ones with --skip_bad_examples; otherwise an error."""
    if not problems:
        return set()
    listed = "; ".join(f"row {row + 1}: {why}" for row, why in problems[:SHOWN])
    more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
    if not skip:
        raise RecipeInputError(f"{where}: {len(problems)} of {total} inputs cannot be read: {listed}{more}. Fix them, "
                               "or pass --skip_bad_examples true to predict on the rest.")
    logger.warning("%s: skipped %d of %d unreadable inputs: %s%s", where, len(problems), total, listed, more)
    return {row for row, _ in problems}


def _table(path: str, options: dict[str, Any]):
    """A csv/tsv/jsonl/json/parquet file, read with the run's reader options (delimiter, column names...)."""
    return load_file(path, "--input", "test", SimpleNamespace(**options))


def _files(path: Path, extensions: frozenset[str], table_column: str | None, options: dict) -> list[str]:
    """Paths from a folder (recursive), a list file (one path per line) or a table's column; relative ones
    resolve against the list or table, as the recipes read manifests."""
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in extensions)
        if not files:
            raise RecipeInputError(f"--input {path} holds no files ending in {', '.join(sorted(extensions))}.")
        return files
    if path.suffix.lower() in (".txt", ""):
        values = read_lines(str(path), "--input")
    elif table_column is None:
        raise RecipeInputError(f"--input {path}: give a folder or a list of files; this run had no file column.")
    else:
        table = _table(str(path), options)
        require_columns(table, [table_column], f"--input {path}", "--input_columns")
        values = table[table_column]
    base = path.resolve().parent
    return [str(base / value) if value and not Path(value).is_absolute() else value for value in values]


CLASSIFIERS = {"texts": "text-classification", "images": "image-classification", "clips": "audio-classification"}


def _classify(model: str | Path, ensemble: Ensemble | None, config: dict, inputs: list, batch_size: int,
              what: str) -> tuple:
    """Class scores for each input (the ensemble's, or the one model's), with its problem type and class names,
    called as the run's own predictions were (its recorded pipeline call arguments)."""
    call_kwargs = config.get(PIPELINE_CALL_KWARGS)
    if ensemble is None:
        config = AutoConfig.from_pretrained(model)
        names = [config.id2label[i] for i in range(config.num_labels)]
        ensemble = Ensemble("soft_vote", [str(model)], config.problem_type or "single_label_classification",
                            names, CLASSIFIERS[what], pipeline_call_kwargs=call_kwargs)
    elif ensemble.pipeline_call_kwargs is None:
        ensemble.pipeline_call_kwargs = call_kwargs
    scores = [ensemble.predict_scores(chunk, batch_size) for chunk in _chunks(inputs, batch_size * 4, what)]
    return np.concatenate(scores), ensemble.problem_type, ensemble.label_names


def _text(model, ensemble, config, path, output, skip, batch_size) -> int:
    columns = config["input_columns"]
    dataset = _table(path, config["options"])
    require_columns(dataset, columns, f"--input {path}", "--input_columns")
    texts = {c: dataset[c] for c in columns}
    problems = [(i, f"empty '{c}'") for c in columns for i, t in enumerate(texts[c]) if t is None or not str(t).strip()]
    bad = _drop_bad(sorted(problems), len(dataset), f"--input {path}", skip)
    keep = [i for i in range(len(dataset)) if i not in bad]
    texts = {c: [texts[c][i] for i in keep] for c in columns}
    inputs = (texts[columns[0]] if len(columns) == 1 else
              [{"text": a, "text_pair": b} for a, b in zip(texts[columns[0]], texts[columns[1]])])
    scores, problem_type, names = _classify(model, ensemble, config, inputs, batch_size, "texts")
    write_classification_predictions(output, texts, scores, problem_type, names)
    return len(keep)


def _images(model, ensemble, config, path, output, skip, batch_size) -> int:
    options = config["options"]
    files = _files(Path(path), IMAGE_EXTENSIONS, (config["input_columns"] or [None])[0], options)
    bad = _drop_bad([(i, why) for i, f in enumerate(files) if (why := image_problem(f))], len(files),
                    f"--input {path}", skip)
    files = [f for i, f in enumerate(files) if i not in bad]
    side = options.get("max_image_side")
    if side is None:
        side = 1024
        logger.warning("run_config.json records no max_image_side: images are decoded at up to %d pixels, the "
                       "recipe's default; the run may have used another.", side)
    images = _Lazy(files, lambda f: open_image(f, side))
    scores, problem_type, names = _classify(model, ensemble, config, images, batch_size, "images")
    write_classification_predictions(output, {"image": files}, scores, problem_type, names)
    return len(files)


class _Lazy(Sequence):
    """Decodes each item when read, so a chunk of images is in memory at a time, not the whole input."""

    def __init__(self, items: Sequence, load: Callable):
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.load(item) for item in self.items[index]]
        return self.load(self.items[index])


def _clips(model, config, path, skip, whole: bool = False) -> tuple[list[tuple[str, dict]], int]:
    """The audio files of the input, decoded at the model's rate; unreadable ones fail or are skipped. With
    `whole` (a classifier, which sees its feature extractor's window alone, where the speech pipeline transcribes
    long clips window by window), so do clips longer than that window, as in training."""
    files = _files(Path(path), AUDIO_EXTENSIONS, (config["input_columns"] or [None])[0], config["options"])
    extractor = AutoFeatureExtractor.from_pretrained(model)
    rate, window = extractor.sampling_rate, input_window(extractor) if whole else None
    feature = Audio(sampling_rate=rate)
    clips = [decode_audio(f, None, feature) for f in tqdm(files, desc="decode audio", unit="clips")]
    problems = [c["problem"] or window_problem(c["num_samples"] / rate, window) for c in clips]
    bad = _drop_bad([(i, why) for i, why in enumerate(problems) if why], len(files), f"--input {path}", skip)
    return [(f, c) for i, (f, c) in enumerate(zip(files, clips)) if i not in bad], rate


def _audio_classes(model, ensemble, config, path, output, skip, batch_size) -> int:
    kept, rate = _clips(ensemble.members[0] if ensemble else model, config, path, skip, whole=True)
    inputs = [{"raw": c[SPEECH], "sampling_rate": rate} for _, c in kept]
    scores, problem_type, names = _classify(model, ensemble, config, inputs, batch_size, "clips")
    write_classification_predictions(output, {"audio_file": [f for f, _ in kept]}, scores, problem_type, names)
    return len(kept)


def _speech(model, config, path, output, skip, batch_size) -> int:
    kept, rate = _clips(model, config, path, skip)
    pipe = pipeline("automatic-speech-recognition", model=str(model), device=_device())
    call_kwargs = config.get(PIPELINE_CALL_KWARGS) or {}
    hypotheses = []
    for chunk in _chunks(kept, batch_size * 4, "clips"):
        outputs = pipe([{"raw": c[SPEECH], "sampling_rate": rate} for _, c in chunk], batch_size=batch_size,
                       **call_kwargs)
        hypotheses += [o["text"].strip() for o in outputs]
    write_speech_predictions(output, [f for f, _ in kept], None, hypotheses, normalize_text)
    return len(kept)


def _translate(model, config, path, output, skip, batch_size) -> int:
    lines = read_lines(path, "--input")
    bad = _drop_bad([(i, "empty line") for i, line in enumerate(lines) if not line.strip()], len(lines),
                    f"--input {path}", skip)
    sources = [line for i, line in enumerate(lines) if i not in bad]
    # The recipe's own pipeline class, imported: no code from the model dir runs.
    pipe = pipeline("translation", model=str(model), pipeline_class=TranslationPipeline, device=_device())
    call_kwargs = config.get(PIPELINE_CALL_KWARGS) or {}
    hypotheses = []
    for chunk in _chunks(sources, batch_size * 4, "sentences"):
        hypotheses += [o["translation_text"] for o in pipe(list(chunk), batch_size=batch_size, **call_kwargs)]
    write_translations(output, sources, hypotheses)
    return len(sources)


def _sentences(path: str, config: dict, skip: bool) -> list[list[str]]:
    """Sentences as token lists: a CoNLL file's first fields, or a table's column of token lists or of texts split
    on whitespace (the run's tokens column, tokens, words or text, unless --input_columns names it)."""
    if Path(path).suffix.lower() not in (*TABLE_FORMATS, ".csv", ".tsv"):
        return read_conll(path, "--input", skip, tagged=False)[0][TOKENS]
    table = _table(path, config["options"])
    candidates = list(dict.fromkeys([*config["input_columns"], *TOKEN_COLUMNS, "text"]))
    column = next((c for c in candidates if c in table.column_names), None)
    if column is None:
        raise RecipeInputError(f"--input {path} has none of the columns {', '.join(candidates)}: give each sentence "
                               "as a list of tokens or a text, or name its column with --input_columns.")
    sentences = [[str(t) for t in v] if isinstance(v, list) else str(v or "").split() for v in table[column]]
    bad = _drop_bad([(i, f"no tokens in '{column}'") for i, s in enumerate(sentences) if not s], len(sentences),
                    f"--input {path}", skip)
    return [s for i, s in enumerate(sentences) if i not in bad]


def _tag_tokens(model, ensemble, config, path, output, skip, batch_size) -> int:
    sentences = _sentences(path, config, skip)
    options, device = config["options"], "cuda" if torch.cuda.is_available() else "cpu"
    members = [word_scores(m, sentences, options["max_seq_length"], options.get("doc_stride"), batch_size, device)
               for m in (ensemble.members if ensemble is not None else [model])]
    names = members[0][1]
    scores = members[0][0] if ensemble is None else [ensemble.combine(np.stack([m[0][i] for m in members]))
                                                     for i in range(len(sentences))]
    write_conll(output, sentences, [[names[t] for t in row.argmax(-1)] for row in scores])
    return len(sentences)


def _device() -> int:
    return 0 if torch.cuda.is_available() else -1


def predict(output_dir: str, input_path: str, output: str, skip_bad_examples: bool | None = None,
            batch_size: int = 32, input_columns: list[str] | None = None) -> int:
    """Predict on every input; returns the number of rows written."""
    datasets.disable_progress_bars()  # one bar, predict's own
    out = Path(output_dir)
    config_file = out / RUN_CONFIG_FILE
    if not config_file.is_file():
        raise RecipeInputError(f"{output_dir} holds no {RUN_CONFIG_FILE}: give the output dir of a finetune-recipes "
                               "run (a trained model, or a cross-validation or ensemble run).")
    if not Path(input_path).exists():
        raise RecipeInputError(f"--input {input_path} does not exist.")
    if Path(output).exists():
        raise RecipeInputError(f"--output {output} already exists; choose another file (predict never overwrites).")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if input_columns:
        config["input_columns"] = list(input_columns)
    skip = config["options"].get("skip_bad_examples", False) if skip_bad_examples is None else skip_bad_examples
    ensemble = load_ensemble(out) if (out / ENSEMBLE_FILE).is_file() else None
    if ensemble is None and not (out / "config.json").is_file():
        raise RecipeInputError(f"{output_dir} holds neither a model (config.json) nor an {ENSEMBLE_FILE}.")
    task = config["pipeline_task"]
    if config.get(PIPELINE_CALL_KWARGS) is None:
        logger.warning("%s records no pipeline settings (a run from an earlier version): predicting with the "
                       "pipeline's defaults, which may preprocess or generate differently from the run (texts cut at "
                       "the tokenizer's maximum length rather than the run's, for one); retrain to record them.",
                       config_file)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if task == "text-classification":
        if Path(input_path).suffix.lower() not in FORMATS:
            raise RecipeInputError(f"--input {input_path}: give a table ({', '.join(sorted(FORMATS))}) with the "
                                   f"column(s) {', '.join(config['input_columns'])}.")
        rows = _text(out, ensemble, config, input_path, output, skip, batch_size)
    elif task == "image-classification":
        rows = _images(out, ensemble, config, input_path, output, skip, batch_size)
    elif task == "audio-classification":
        rows = _audio_classes(out, ensemble, config, input_path, output, skip, batch_size)
    elif task == "automatic-speech-recognition":
        rows = _speech(out, config, input_path, output, skip, batch_size)
    elif task == "translation":
        rows = _translate(out, config, input_path, output, skip, batch_size)
    elif task == "token-classification":
        rows = _tag_tokens(out, ensemble, config, input_path, output, skip, batch_size)
    else:
        raise RecipeInputError(f"{output_dir}: predict does not know the {task} task.")
    logger.info("%d predictions written to %s", rows, output)
    return rows
