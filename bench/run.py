"""The benchmark harness: every recipe on its real data set ($FINETUNE_DATA), against the machine's own matmul rate.

    make bench                                  # = python bench/run.py: everything, writes bench/RESULTS.md
    python bench/run.py --quick                 # one run each, tiny budgets: a smoke test of the harness
    python bench/run.py --only padding,cache    # some parts (writes bench/runs/harness/RESULTS-partial.md)
    python bench/run.py --dry_run               # print the recipe commands and stop

Parts (--only): matmul (always runs: every MFU is taken against the rate measured in the same run), recipes
(the table: every recipe on its data), padding (the SST-2 padding arms alone), cache (--cache_features),
profile (torch.profiler on a MiniLM step, the dropout comparison, the --dropout 0 arm).

Every recipe runs as a subprocess through its own command line, wrapped by the probe in bench/recipe_timing.py,
which times training, epochs and evaluations from inside and counts what the training batches hold (real and
padded tokens, images, seconds of audio). Peak RSS is the child's ru_maxrss (os.wait4). Runs and logs stay in
bench/runs/harness/.

This file is the entry point; bench/harness.py holds what the parts share, bench/parts/ one module per part.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

from harness import (
    FULL,
    PARTS,
    QUICK,
    RESULTS,
    ROOT,
    WORK,
    Context,
    commands_section,
    header,
    matmul_rate,
    now_str,
    ok,
    run_row,
    targets_section,
)
from parts.cache import cache_rows, cache_section
from parts.padding import padding_rows, padding_section
from parts.profile import PROFILE_JSON, dropout_steps, efficiency_rows, efficiency_section, eval_padding
from parts.recipes import build_models, recipe_rows, recipes_section


def standalone_sections(path: Path) -> list[str]:
    """The sections standalone benchmarks wrote into `path` between `<!-- name -->` and `<!-- /name -->` (e.g.
    bench/input_pipeline.py), kept as they are: this harness does not rerun them."""
    text = path.read_text() if path.is_file() else ""
    return [m.group(0) + "\n" for m in re.finditer(r"<!-- (\w+) -->.*?<!-- /\1 -->", text, flags=re.S)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run each, tiny budgets (a smoke test)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of parts: {', '.join(PARTS)}")
    parser.add_argument("--dry_run", action="store_true", help="print the recipe commands, run nothing")
    parser.add_argument("--out", default=None, help="markdown file (default: bench/RESULTS.md for a full run)")
    options = parser.parse_args()
    parts = {p.strip() for p in options.only.split(",") if p.strip()}
    if parts - set(PARTS):
        parser.error(f"unknown part(s) {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    budget = QUICK if options.quick else FULL
    full = not options.quick and parts == set(PARTS)
    if options.out:
        out_file = Path(options.out).resolve()
    else:
        out_file = RESULTS if full else WORK / ("RESULTS-quick.md" if options.quick else "RESULTS-partial.md")

    WORK.mkdir(parents=True, exist_ok=True)
    started, load_start, wall_start = datetime.datetime.now(), os.getloadavg(), time.perf_counter()
    if "recipes" in parts:  # the tiny models only the recipe table trains
        rows = recipe_rows(budget, build_models(options.dry_run, options.quick))
        padding = rows[: len(padding_rows(budget))]
    else:
        rows = padding = padding_rows(budget) if "padding" in parts else []
    caching = cache_rows(budget) if "cache" in parts else []
    extra = efficiency_rows(budget) if "profile" in parts else []

    rates = [] if options.dry_run else [matmul_rate(budget.matmul_size, budget.matmul_repeats)]
    if rates:
        print(f"matmul {budget.matmul_size}²: {rates[0]['median'] / 1e9:.1f} GFLOP/s (median)", flush=True)
    if extra and not options.dry_run:
        PROFILE_JSON.unlink(missing_ok=True)  # a stale profile must not pass for this run's
    everything = [*rows, *caching, *extra]
    for row in everything:
        run_row(row, options.dry_run)
    if options.dry_run:
        return 0
    efficiency = {}
    if "profile" in parts:
        print(f"[{now_str()}] dropout step comparison and dev-set padding ...", flush=True)
        efficiency = {"steps": dropout_steps(budget.ab_steps), "eval_padding": eval_padding()}
    rates.append(matmul_rate(budget.matmul_size, budget.matmul_repeats))
    ctx = Context(options.quick, budget, rates, statistics.median([r["median"] for r in rates]))
    wall = time.perf_counter() - wall_start

    verdicts: list[tuple[str, str, bool]] = []
    lines = [*header(ctx, started, wall, load_start, os.getloadavg()),
             *recipes_section(ctx, rows),
             *padding_section(ctx, padding if "padding" in parts else [], verdicts),
             *cache_section(caching, verdicts),
             *efficiency_section(ctx, rows, extra, efficiency),
             *standalone_sections(out_file),
             *targets_section(verdicts),
             *commands_section(everything)]
    text = "\n".join(lines)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    (WORK / "results.json").write_text(json.dumps({r.key: r.results for r in everything}, indent=1, default=str))
    print("\n" + text)
    print(f"written to {out_file.relative_to(ROOT) if out_file.is_relative_to(ROOT) else out_file}")
    return 1 if any(len(ok(r.results)) < len(r.results) for r in everything) else 0


if __name__ == "__main__":
    sys.exit(main())
