"""`finetune-recipes predict OUTPUT_DIR --input FILE --output FILE`: batch inference with a trained model or a saved
ensemble, reading inputs with the recipe's own reader and the options the run was trained with.

The output dir's run_config.json names the recipe, its input columns and its options (delimiter, column names,
image size cap, audio column...), and the pipeline call arguments with which the model predicts as the run's own
predictions did (texts cut at the run's max length, its generation settings); ensemble.json, when present, makes
the ensemble predict.

What the input is and what the output holds differ by task, so each recipe module says it in one function,
`predict_file(run: PredictRun, input_path, output) -> rows written`, which `recipes.predictor` finds by the
recorded recipe name. `PredictRun` gives it the run's record and the pieces every recipe shares: tables read
with the run's options, file lists (a folder, a list file or a table column), decoded clips, bad inputs that fail
with their row numbers or are skipped and counted (--skip_bad_examples, default: the run's own setting), chunked
progress, and class scores through the recorded pipeline task (one model or the ensemble).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import numpy as np
import torch
from datasets import Audio
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoFeatureExtractor

from common.core.errors import RecipeInputError
from common.data.audio import decode_audio, input_window, window_problem
from common.data.files import load_file, require_columns
from common.data.parallel import read_lines
from common.models.runtime import EXPORT_CONFIG, ExportConfig, serving
from common.strategies.ensembling import ENSEMBLE_FILE, Ensemble, load_ensemble
from common.training.html_report import PIPELINE_CALL_KWARGS, RUN_CONFIG_FILE

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm"})
SHOWN = 10  # bad rows quoted in an error


@dataclass
class PredictRun:
    """What `predict` hands a recipe's `predict_file`: the trained output dir, what its run recorded, and the
    readers and checks that every recipe's inputs share."""

    model: Path  # the output dir: a model, or the ensemble.json of several
    config: dict[str, Any]  # its run_config.json: recipe, pipeline_task, input_columns, options, pipeline_call_kwargs
    ensemble: Ensemble | None
    skip_bad_examples: bool
    batch_size: int

    @property
    def options(self) -> dict[str, Any]:
        """The run's data options (delimiter, column names, max lengths...)."""
        return self.config["options"]

    @property
    def input_columns(self) -> list[str]:
        return self.config["input_columns"]

    @property
    def call_kwargs(self) -> dict[str, Any]:
        """The pipeline() call arguments that repeat the run's own predictions ({} when none were recorded)."""
        return self.config.get(PIPELINE_CALL_KWARGS) or {}

    @property
    def device(self) -> int:
        return 0 if torch.cuda.is_available() else -1

    def chunks(self, items: Sequence, what: str) -> Iterator[Sequence]:
        """The inputs in chunks of a few batches, behind a progress bar counting rows."""
        size = self.batch_size * 4
        with tqdm(total=len(items), desc=f"predict ({what})", unit=what) as bar:
            for start in range(0, len(items), size):
                chunk = items[start:start + size]
                yield chunk
                bar.update(len(chunk))

    def drop_bad(self, problems: list[tuple[int, str]], total: int, where: str) -> set[int]:
        """Rows (0-based) to leave out: none when all are fine; the bad ones with --skip_bad_examples; otherwise
        an error quoting them."""
        if not problems:
            return set()
        listed = "; ".join(f"row {row + 1}: {why}" for row, why in problems[:SHOWN])
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        if not self.skip_bad_examples:
            raise RecipeInputError(f"{where}: {len(problems)} of {total} inputs cannot be read: {listed}{more}. Fix "
                                   "them, or pass --skip_bad_examples true to predict on the rest.")
        logger.warning("%s: skipped %d of %d unreadable inputs: %s%s", where, len(problems), total, listed, more)
        return {row for row, _ in problems}

    def table(self, path: str) -> datasets.Dataset:
        """A csv/tsv/jsonl/json/parquet file, read with the run's reader options (delimiter, column names...)."""
        return load_file(path, "--input", "test", SimpleNamespace(**self.options))

    def files(self, path: str, extensions: frozenset[str]) -> list[str]:
        """Paths from a folder (recursive), a list file (one path per line) or the run's file column of a table;
        relative ones resolve against the list or table, as the recipes read manifests."""
        path, column = Path(path), (self.input_columns or [None])[0]
        if path.is_dir():
            files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in extensions)
            if not files:
                raise RecipeInputError(f"--input {path} holds no files ending in {', '.join(sorted(extensions))}.")
            return files
        if path.suffix.lower() in (".txt", ""):
            values = read_lines(str(path), "--input")
        elif column is None:
            raise RecipeInputError(f"--input {path}: give a folder or a list of files; this run had no file column.")
        else:
            table = self.table(str(path))
            require_columns(table, [column], f"--input {path}", "--input_columns")
            values = table[column]
        base = path.resolve().parent
        return [str(base / value) if value and not Path(value).is_absolute() else value for value in values]

    def clips(self, path: str, whole: bool = False) -> tuple[list[tuple[str, dict]], int]:
        """The audio files of the input, decoded at the model's rate, with that rate; unreadable ones fail or are
        skipped. With `whole` (a model that sees its feature extractor's window alone, where a speech pipeline
        goes over long clips window by window), so do clips longer than that window, as in training."""
        files = self.files(path, AUDIO_EXTENSIONS)
        extractor = AutoFeatureExtractor.from_pretrained(self.ensemble.members[0] if self.ensemble else self.model)
        rate, window = extractor.sampling_rate, input_window(extractor) if whole else None
        feature = Audio(sampling_rate=rate)
        clips = [decode_audio(f, None, feature) for f in tqdm(files, desc="decode audio", unit="clips")]
        problems = [c["problem"] or window_problem(c["num_samples"] / rate, window) for c in clips]
        bad = self.drop_bad([(i, why) for i, why in enumerate(problems) if why], len(files), f"--input {path}")
        return [(f, c) for i, (f, c) in enumerate(zip(files, clips)) if i not in bad], rate

    def classify(self, inputs: Sequence, what: str) -> tuple[np.ndarray, str, list[str] | None]:
        """Class scores for each input (the ensemble's, or the one model's) through the run's pipeline task, with
        the problem type and class names, called as the run's own predictions were (its pipeline call arguments)."""
        ensemble, recorded = self.ensemble, self.config.get(PIPELINE_CALL_KWARGS)
        if ensemble is None:
            config = AutoConfig.from_pretrained(self.model)
            names = [config.id2label[i] for i in range(config.num_labels)]
            ensemble = Ensemble("soft_vote", [str(self.model)], config.problem_type or "single_label_classification",
                                names, self.config["pipeline_task"], pipeline_call_kwargs=recorded)
        elif ensemble.pipeline_call_kwargs is None:
            ensemble.pipeline_call_kwargs = recorded
        scores = [ensemble.predict_scores(chunk, self.batch_size) for chunk in self.chunks(inputs, what)]
        return np.concatenate(scores), ensemble.problem_type, ensemble.label_names


class Lazy(Sequence):
    """Loads each item when read (an image decoded from its file), so one chunk is in memory at a time."""

    def __init__(self, items: Sequence, load: Callable):
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.load(item) for item in self.items[index]]
        return self.load(self.items[index])


def find_export(out: Path, export_dir: str | None) -> Path:
    """The export dir that --runtime onnx predicts with: the one given, or the one under the output dir."""
    if export_dir is not None:
        ExportConfig.load(export_dir)  # a clear error when it is not an export
        return Path(export_dir)
    found = sorted(p.parent for p in out.glob(f"*/{EXPORT_CONFIG}"))
    if not found:
        raise RecipeInputError(f"{out} holds no export: run `finetune-recipes export {out} --format onnx` first, or "
                               "give --export_dir.")
    if len(found) > 1:
        raise RecipeInputError(f"{out} holds several exports ({', '.join(p.name for p in found)}); choose one with "
                               "--export_dir.")
    return found[0]


# A recipe's predictions on a file of new inputs: (run, --input, --output) -> rows written.
Predictor = Callable[[PredictRun, str, str], int]


def predict(output_dir: str, input_path: str, output: str, predictor_of: Callable[[str], Predictor],
            skip_bad_examples: bool | None = None, batch_size: int = 32, input_columns: list[str] | None = None,
            runtime: str = "torch", export_dir: str | None = None) -> int:
    """Predict on every input with the recorded recipe's predictor (`predictor_of(recipe name)`); returns the
    number of rows written. `runtime` "onnx" predicts with the export in `export_dir` (default: the one export
    under output_dir) through the same predictor: the same preprocessing, the same columns."""
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
    predictor = predictor_of(config["recipe"])
    if config.get(PIPELINE_CALL_KWARGS) is None:
        logger.warning("%s records no pipeline settings (a run from an earlier version): predicting with the "
                       "pipeline's defaults, which may preprocess or generate differently from the run (texts cut at "
                       "the tokenizer's maximum length rather than the run's, for one); retrain to record them.",
                       config_file)
    served = None
    if runtime == "onnx":
        if ensemble is not None:
            raise RecipeInputError(f"{output_dir} holds an ensemble; --runtime onnx predicts with one exported model.")
        served = find_export(out, export_dir)
    elif runtime != "torch":
        raise RecipeInputError(f"--runtime {runtime}: give torch or onnx.")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with serving(served):
        rows = predictor(PredictRun(out, config, ensemble, skip, batch_size), input_path, output)
    logger.info("%d predictions written to %s", rows, output)
    return rows
