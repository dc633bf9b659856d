"""`finetune-recipes inspect`: read the data exactly as a recipe would, print what it found, train nothing.

A recipe calls `stop_for_inspection(DataReport(...))` once, when its data is ready (labels encoded, validation
held out, samples capped, bad rows handled) and before any model weights load. Outside `inspecting()` the call
returns at once; inside it the report is printed to stdout and `InspectionDone` ends the recipe, which the CLI
turns into exit code 0. Bad input fails exactly as in a real run (the recipe's own `RecipeInputError`, exit 2).

The report holds what the recipe knows at that point; the few facts a run learns later are measured here from
the data alone: token lengths (the tokenizer only, never the model), image sizes (file headers only) and the
audio files' native sample rates.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc
import transformers
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from common.data.arrow import column_array
from common.data.audio import FILE
from common.data.labels import MULTI, REGRESSION, SINGLE, LabelSpec
from common.data.sampling import class_counts
from common.models.loading import load_processor

EXAMPLES = 3  # example rows per split
BAD_SHOWN = 5  # bad rows named per split
RATE_FILES = 2000  # audio files per split whose header is read for the native sample rate
SIZE_IMAGES = 5000  # images per split whose header is read for width and height (evenly spaced)
CELL = 100  # characters of a value shown in an example row
TOKENIZE_BATCH = 1000

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("finetune_recipes_inspecting", default=False)
# Set by `taking_task`: what receives the recipe's Task in place of training (common.dispatch.finetune).
_TAKER: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("finetune_recipes_task_taker", default=None)


class InspectionDone(BaseException):  # noqa: N818 - a signal, not an error; BaseException so no `except Exception` eats it
    """The report is printed: the recipe stops here (the CLI catches it and exits 0)."""


@contextlib.contextmanager
def inspecting() -> Iterator[None]:
    """Inspect mode for the duration of the block: `stop_for_inspection` prints and stops instead of returning."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def taking_task(take: Callable[[Any, Any, Any], Any]) -> Iterator[None]:
    """A dry run for the duration of the block that goes past the data report up to the recipe's `Task`: there
    `common.dispatch.finetune` returns `take(task, training_args, finetune_args)` instead of training. Tools that
    need a trained run's data as its recipe prepares it (export's parity check on the validation split) use it;
    like inspect, nothing is written to the output dir."""
    token = _TAKER.set(take)
    try:
        yield
    finally:
        _TAKER.reset(token)


def task_taker() -> Callable[[Any, Any, Any], Any] | None:
    return _TAKER.get()


def active() -> bool:
    """A dry run (inspect, or a tool taking the Task): the output dir is not the run's concern."""
    return _ACTIVE.get() or _TAKER.get() is not None


# One part of a split's section, in the recipe's terms: (the split's rows) -> report lines. The recipe picks them
# for its inputs: TokenLengths for texts, char_lengths, image_sizes, audio_files.
Measure = Callable[[Dataset], list[str]]


@dataclass
class DataReport:
    """What a recipe knows about its data once it is prepared, before any model loads."""

    recipe: str
    splits: DatasetDict  # raw rows, labels encoded in `labels` where present
    sources: dict[str, str] = field(default_factory=dict)  # split -> where it came from
    columns: dict[str, str] = field(default_factory=dict)  # role -> "name (why)", see `chosen`
    label_spec: LabelSpec | None = None
    problem_type_given: bool = False  # --problem_type set it (else inferred from the label values)
    bad_rows: dict[str, list] = field(default_factory=dict)  # split -> common.data.BadRow found (as loaded)
    skipped: dict[str, int] = field(default_factory=dict)  # counts from drop_bad_rows & co (skipped_bad_examples_<split>, ...)
    data_args: Any = None  # the recipe's DataArguments: --skip_bad_examples and its limits
    measures: list[Measure] = field(default_factory=list)  # each split's facts after its example rows
    first_columns: list[str] = field(default_factory=list)  # the inputs, shown first in the example rows (after labels)
    # How an example row shows a column: column -> (title, value -> text), e.g. a sample count as a duration.
    shown_as: dict[str, tuple[str, Callable[[Any], str]]] = field(default_factory=dict)

    @property
    def skip_bad_examples(self) -> bool:
        return bool(getattr(self.data_args, "skip_bad_examples", False))


def chosen(name: str | Sequence[str], option: str, given: object, candidates: Sequence = ()) -> str:
    """'name (why)' for the columns section: given by an option, or the first default candidate present."""
    shown = name if isinstance(name, str) else ", ".join(name)
    if given:
        return f"{shown} (given by {option})"
    if len(candidates) > 1:
        names = ", ".join(c if isinstance(c, str) else "+".join(c) for c in candidates)
        return f"{shown} (default: the first of {names} present; {option} to change)"
    return f"{shown} ({option}, its default)"


def stop_for_inspection(report: DataReport) -> None:
    """Outside `inspecting()`: nothing. Inside: print the report and end the recipe with InspectionDone."""
    if not _ACTIVE.get():
        return
    text = render(report)  # everything is measured before anything is printed: a bad input prints only its error
    print(text, flush=True)
    raise InspectionDone


# ---------------------------------------------------------------------------------------------- the report


def render(report: DataReport) -> str:
    lines = [f"inspect {report.recipe}: the data as the recipe reads it (nothing trained, no model loaded, "
             "nothing written)", ""]
    lines += _section("columns", [(role, text) for role, text in report.columns.items()])
    spec = report.label_spec
    if spec is not None:
        why = "set by --problem_type" if report.problem_type_given else "inferred from the train labels"
        facts = [("problem type", f"{spec.problem_type} ({why})")]
        if spec.names:
            facts.append(("labels", f"{spec.num_labels}: {_join(spec.names)}"))
        lines += _section("labels", facts)
    lines += _section("splits", [(split, f"{len(ds):>8} rows   {report.sources.get(split, '')}".rstrip())
                                 for split, ds in report.splits.items()])
    for split, dataset in report.splits.items():
        lines.append(f"== {split} ({len(dataset)} rows) " + "=" * max(0, 60 - len(split) - len(str(len(dataset)))))
        if spec is not None:
            lines += _labels(dataset, spec)
        lines += _bad(report, split)
        lines += _examples(dataset, report)
        for measure in report.measures:
            lines += measure(dataset)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(k) for k, _ in rows)
    return [title, *(f"  {k:<{width}}  {v}" for k, v in rows), ""]


def _join(names: Sequence[str], shown: int = 30) -> str:
    text = ", ".join(map(str, names[:shown]))
    return text + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def _cell(value: Any, width: int = CELL) -> str:
    if isinstance(value, dict) and ("path" in value or "bytes" in value):  # an undecoded image
        value = value.get("path") or f"<{len(value.get('bytes') or b'')} bytes>"
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _stats(values: np.ndarray, digits: int = 0) -> str:
    if len(values) == 0:
        return "no values"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    parts = [("min", values.min()), ("p50", p50), ("p95", p95), ("p99", p99), ("max", values.max())]
    return "  ".join(f"{name} {value:>{5 + digits}.{digits}f}" for name, value in parts)


# ---------------------------------------------------------------------------------------------- per split


def _labels(dataset: Dataset, spec: LabelSpec) -> list[str]:
    if "labels" not in dataset.column_names:
        return ["labels: none (predictions only)"]
    if spec.problem_type == REGRESSION:
        values = column_array(dataset, "labels").to_numpy(zero_copy_only=False)
        return [f"label values: {_stats(values, digits=3)}"]
    if spec.problem_type == MULTI:
        values = column_array(dataset, "labels")
        hot = pc.list_flatten(values).to_numpy(zero_copy_only=False).reshape(len(dataset), spec.num_labels)
        counts = hot.sum(0).astype(int)
        total, unit = len(dataset), "rows with the label"
    else:
        counts = np.asarray(list(class_counts(dataset, "labels", spec.names).values()))
        total, unit = int(counts.sum()), "rows"
    width = max(len(str(n)) for n in spec.names)
    out = [f"label counts ({unit})"]
    for name, n in zip(spec.names, counts):
        out.append(f"  {name:<{width}}  {int(n):>7}  {n / max(total, 1):6.1%}")
    if spec.problem_type == MULTI:
        out.append(f"  {'(none)':<{width}}  {int((hot.sum(1) == 0).sum()):>7}  rows with no label")
    return out


def _bad(report: DataReport, split: str) -> list[str]:
    rows = report.bad_rows.get(split) or []
    counts = {key[: -len(split) - 1]: n for key, n in report.skipped.items() if key.endswith(f"_{split}") and n}
    bad = len(rows) or counts.pop("skipped_bad_examples", 0)
    counts.pop("skipped_bad_examples", None)  # other counts (clips out of the duration range, ...) follow
    if bad:
        what = "skipped (--skip_bad_examples)" if report.skip_bad_examples else "found"
        out = [f"bad rows: {bad} {what}"]
        out += [f"  {row}" for row in rows[:BAD_SHOWN]]
        if len(rows) > BAD_SHOWN:
            out.append(f"  ... and {len(rows) - BAD_SHOWN} more")
    else:
        out = ["bad rows: none"]
    out += [f"{key.replace('_', ' ')}: {n}" for key, n in counts.items()]
    return out


HIDDEN = {"speech", "problem", "channels"}  # decoded audio and its bookkeeping


def _examples(dataset: Dataset, report: DataReport) -> list[str]:
    spec = report.label_spec
    # The columns the recipe uses first (labels, then inputs), then whatever else the rows hold.
    rank = {name: i for i, name in enumerate(["labels", *report.first_columns])}
    shown = sorted((c for c in dataset.column_names if c not in HIDDEN), key=lambda c: rank.get(c, len(rank)))
    if not len(dataset) or not shown:
        return []
    # Spread over the split: files are often sorted (by class folder, by label), so the first rows look alike.
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(EXAMPLES, len(dataset))).round().astype(int))
    rows = dataset.select_columns(shown).select(picks)
    names = [report.shown_as[c][0] if c in report.shown_as else c for c in shown]
    width = max(len(n) for n in names)
    out = ["examples"]
    for i, row in zip(picks, rows):
        for j, (column, name) in enumerate(zip(shown, names)):
            value = row[column]
            if column == "labels" and spec is not None:
                value = _label_text(value, spec)
            elif column in report.shown_as:
                value = report.shown_as[column][1](value)
            out.append(f"  {f'#{i + 1}' if j == 0 else '':<7}{name:<{width}}  {_cell(value)}")
    return out


def _label_text(value: Any, spec: LabelSpec) -> str:
    if spec.problem_type == SINGLE and spec.names:
        return spec.names[int(value)]
    if spec.problem_type == MULTI and spec.names:
        return "; ".join(n for n, v in zip(spec.names, value) if v) or "(none)"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------- text


@dataclass
class TextSide:
    """Text columns the recipe tokenizes together (one, or a pair), and the limit it cuts them at."""

    columns: list[str]
    limit: int | None
    option: str  # the option that sets the limit, e.g. "--max_seq_length"
    prefix: str = ""  # prepended to each text before tokenizing (a T5 task prefix)
    target: bool = False  # tokenized as generation targets (tokenizer(text_target=...))


class TokenLengths:
    """Lengths in tokens of each side's texts, untruncated, against its limit, under the run's tokenizer
    (--tokenizer_name or --model_name_or_path of `model_args`: the tokenizer files only, never the weights)."""

    def __init__(self, model_args: Any, sides: Sequence[TextSide]):
        self.model_args, self.sides = model_args, list(sides)
        self.name = getattr(model_args, "tokenizer_name", None) or getattr(model_args, "model_name_or_path", None)

    @functools.cached_property
    def tokenizer(self):
        if not self.name:
            return None
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # "sequence longer than the model's maximum" is what we measure
        try:
            return load_processor(AutoTokenizer, self.model_args)
        finally:
            transformers.logging.set_verbosity(verbosity)

    def __call__(self, dataset: Dataset) -> list[str]:
        if self.tokenizer is None:
            return ["token lengths: no --model_name_or_path or --tokenizer_name given, so no tokenizer to count with"]
        if not len(dataset):
            return []
        out = [f"token lengths (tokenizer {self.name}, special tokens included, untruncated)"]
        for side in self.sides:
            if not side.columns or any(c not in dataset.column_names for c in side.columns):
                continue
            lengths = _token_counts(self.tokenizer, [_text(dataset, c, side.prefix) for c in side.columns], side.target)
            what = " + ".join(side.columns) + (" (as a pair)" if len(side.columns) > 1 else "")
            out.append(f"  {what}: {_stats(lengths)}")
            if side.limit:
                over = int((lengths > side.limit).sum())
                out.append(f"  {side.option} {side.limit} would truncate {over / len(lengths):.1%} ({over} of "
                           f"{len(lengths)})")
        return out


def _token_counts(tokenizer, texts: list[list[str]], target: bool = False) -> np.ndarray:
    """Each text's (or pair's) length in tokens, special tokens included, untruncated."""

    backend = getattr(tokenizer, "backend_tokenizer", None)
    # The Rust tokenizer straight away (no offsets, no Python encodings): the same ids as tokenizer(...) and
    # faster. Targets go through tokenizer(text_target=...), which may switch vocabularies.
    fast = not target and backend is not None and hasattr(backend, "encode_batch_fast")
    if fast:  # a tokenizer.json may carry truncation (sentence-transformers' do): off, as truncation=False does
        backend.no_truncation()
        backend.no_padding()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "longer than the model's maximum" is what is measured here
    lengths: list[int] = []
    try:
        for start in range(0, len(texts[0]), TOKENIZE_BATCH):
            batch = [column[start: start + TOKENIZE_BATCH] for column in texts]
            if fast:
                inputs = list(zip(*batch)) if len(batch) > 1 else batch[0]
                lengths += [len(encoding.ids) for encoding in backend.encode_batch_fast(inputs)]
                continue
            encoded = tokenizer(text_target=batch[0]) if target else tokenizer(*batch, truncation=False)
            lengths += [len(ids) for ids in encoded["input_ids"]]
    finally:
        transformers.logging.set_verbosity(verbosity)
    return np.asarray(lengths)


def _text(dataset: Dataset, column: str, prefix: str = "") -> list[str]:
    """A text column as the strings the recipe tokenizes: missing values empty, the prefix prepended."""
    values = pc.fill_null(column_array(dataset, column), "")
    if prefix:
        values = pc.binary_join_element_wise(prefix, values, "")
    return values.to_pylist()


def char_lengths(columns: Sequence[str]) -> Measure:
    """Lengths in characters of text columns."""

    def measure(dataset: Dataset) -> list[str]:
        out = ["lengths in characters"]
        for column in columns:
            if column in dataset.column_names and len(dataset):
                lengths = pc.utf8_length(pc.fill_null(column_array(dataset, column), ""))
                out.append(f"  {column}: {_stats(lengths.to_numpy(zero_copy_only=False))}")
        return out

    return measure


# ---------------------------------------------------------------------------------------------- images


def image_sizes(column: str) -> Measure:
    """Widths and heights of the (undecoded) image column, from the file headers (evenly spaced, up to
    SIZE_IMAGES a split)."""
    return functools.partial(_image_sizes, column=column)


def _image_sizes(dataset: Dataset, column: str) -> list[str]:
    from PIL import Image  # the vision extra: only image data needs it

    n = len(dataset)
    if not n:
        return []
    rows = np.unique(np.linspace(0, n - 1, min(n, SIZE_IMAGES)).astype(int))
    values = column_array(dataset.select(rows), column).to_pylist()
    sizes, unreadable = [], 0
    for value in values:
        data = value.get("bytes") if isinstance(value, dict) else None
        path = value.get("path") if isinstance(value, dict) else value
        try:
            with Image.open(io.BytesIO(data) if data else path) as image:  # reads the header only
                sizes.append(image.size)
        except Exception:  # noqa: BLE001 - the bad-file check above names such files
            unreadable += 1
    sizes = np.asarray(sizes).reshape(-1, 2)
    sampled = f", {len(rows)} of {n} images, evenly spaced" if len(rows) < n else ""
    out = [f"image sizes in pixels (from the file headers{sampled})",
           f"  width : {_stats(sizes[:, 0])}", f"  height: {_stats(sizes[:, 1])}"]
    if unreadable:
        out.append(f"  {unreadable} unreadable")
    return out


# ---------------------------------------------------------------------------------------------- audio


def audio_files(sampling_rate: int | None) -> Measure:
    """Durations and native sample rates of decoded audio (common.training.speech's `audio_file` and
    `num_samples` columns), decoded at `sampling_rate` for the model."""
    return functools.partial(_audio, sampling_rate=sampling_rate)


def clip_durations(sampling_rate: int | None) -> dict[str, tuple[str, Callable[[Any], str]]]:
    """DataReport.shown_as for decoded audio: a clip's sample count shown as its duration."""
    return {"num_samples": ("duration", lambda n: f"{n / sampling_rate:.2f} s")} if sampling_rate else {}


def _audio(dataset: Dataset, sampling_rate: int | None) -> list[str]:

    out = []
    if "num_samples" in dataset.column_names and sampling_rate:
        samples = column_array(dataset, "num_samples").to_numpy(zero_copy_only=False)
        durations = samples.astype(np.float64) / sampling_rate
        out.append(f"durations in seconds: {_stats(durations, digits=2)}  total {durations.sum() / 3600:.2f} h")
    if FILE in dataset.column_names and len(dataset):
        files = column_array(dataset.select(range(min(RATE_FILES, len(dataset)))), FILE).to_pylist()
        rates = native_rates(files)
        read = f"first {len(files)} of {len(dataset)} files" if len(files) < len(dataset) else f"{len(files)} files"
        shown = ", ".join(f"{rate} Hz: {n}" if isinstance(rate, int) else f"{rate}: {n}" for rate, n in rates.items())
        target = f"; decoded at {sampling_rate} Hz for the model" if sampling_rate else ""
        out.append(f"native sample rates ({read}): {shown}{target}")
    return out


def native_rates(files: Sequence[str]) -> dict[int | str, int]:
    """Files per native sample rate, from their headers (soundfile); files it cannot read are counted apart."""
    import soundfile  # the audio extra: only audio data needs it

    counts: dict[int | str, int] = {}
    for path in files:
        try:
            key: int | str = int(soundfile.info(path).samplerate) if os.path.isfile(path) else "not a local file"
        except Exception:  # noqa: BLE001 - a format libsndfile cannot read (e.g. m4a); FFmpeg decoded it
            key = "header unreadable by soundfile"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (isinstance(kv[0], str), -kv[1])))
