"""Fine-tuning a pretrained checkpoint versus training the same architecture from scratch.

    finetune-recipes compare sentiment --train_file ../shared/data/sst2/train.tsv \\
        --validation_file ../shared/data/sst2/dev.tsv --max_train_samples 1000 --output_dir outputs/compare

runs the recipe twice with the same arguments (same data, seed, epochs and learning rate), once as
given and once with --from_scratch, into `<output_dir>/pretrained` and `<output_dir>/from_scratch`, then
writes `comparison.json`, `comparison.md` (one table) and `comparison.png` (the main metric, and the
validation curve per epoch when the runs evaluated every epoch) into `<output_dir>`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import PartialState

from common.core.config import read_yaml
from common.core.errors import RecipeInputError
from common.training.html_report import REPORT_FILE, write_html_report
from common.training.reporting import plt, write_json

logger = logging.getLogger(__name__)

RUNS = {"pretrained": [], "from_scratch": ["--from_scratch"]}
SKIPPED_SUFFIXES = ("_per_second", "_samples", "_time")
# Rows of the markdown table, when present ({m}: the main metric); comparison.json keeps every metric.
TABLE_ROWS = ("eval_{m}", "cv_heldout_{m}_mean", "cv_heldout_{m}_std", "test_{m}", "before_{m}", "eval_loss",
              "train_loss", "train_runtime")


def _output_dir(recipe: str, args: list[str]) -> Path:
    """--output_dir from the command line, else from the --config file, else outputs/compare-<recipe>."""
    values: dict[str, Any] = {}
    for i, token in enumerate(args):
        for key in ("--config", "--output_dir"):
            if token == key and i + 1 < len(args):
                values[key] = args[i + 1]
            elif token.startswith(f"{key}="):
                values[key] = token.split("=", 1)[1]
    if "--output_dir" in values:
        return Path(values["--output_dir"])
    if "--config" in values and read_yaml(values["--config"]).get("output_dir"):
        return Path(read_yaml(values["--config"])["output_dir"])
    return Path("outputs") / f"compare-{Path(recipe).stem}"


def compare(main: Callable[[list[str]], dict], args: list[str], recipe: str | None = None) -> dict[str, Any]:
    """Run a recipe's `main` pretrained and from scratch on the same arguments; write the table and the plot.
    `recipe` names the default output dir, outputs/compare-<recipe> (default: main's module)."""
    recipe = recipe or main.__module__.rpartition(".")[2]
    if any(token.split("=")[0] == "--from_scratch" for token in args):
        raise RecipeInputError("compare runs both variants itself: drop --from_scratch from its arguments.")
    base = _output_dir(recipe, args)
    results = {}
    for name, extra in RUNS.items():
        logger.info("compare: %s run into %s", name, base / name)
        results[name] = main([*args, "--output_dir", str(base / name), *extra])
    if not PartialState().is_main_process:
        return results
    main_metric = results["pretrained"].get("main_metric", "accuracy")
    table = {
        name: {k: float(v) for k, v in run.items()
               if isinstance(v, (int, float)) and not k.endswith(SKIPPED_SUFFIXES) and k != "epoch"}
        for name, run in results.items()
    }
    key = next((k for k in (f"eval_{main_metric}", f"cv_heldout_{main_metric}_mean", f"test_{main_metric}")
                if k in table["pretrained"]), None)
    summary = {"main_metric": main_metric, "metric_key": key, "runs": table,
               "output_dirs": {name: str(base / name) for name in RUNS}}
    write_json(base / "comparison.json", summary)
    write_markdown(table, [row.format(m=main_metric) for row in TABLE_ROWS], key, base / "comparison.md")
    plot_comparison(table, key, {name: base / name for name in RUNS}, main_metric, base / "comparison.png")
    if key:
        logger.info("compare %s: pretrained %.4f, from scratch %.4f", key, table["pretrained"][key],
                    table["from_scratch"][key])
    write_html_report(base, title=f"{recipe.replace('_', ' ')}: pretrained against from scratch")
    logger.info("comparison written to %s; open %s", base, base / REPORT_FILE)
    return summary


def write_markdown(table: dict[str, dict[str, float]], rows: list[str], key: str | None, path: Path) -> None:
    names = list(table)
    metrics = [row for row in rows if any(row in table[n] for n in names)]
    lines = [f"| metric | {' | '.join(n.replace('_', ' ') for n in names)} |", f"|---|{'---:|' * len(names)}"]
    for metric in metrics:
        cells = [f"{table[n][metric]:.4f}" if metric in table[n] else "" for n in names]
        lines.append(f"| {'**' + metric + '**' if metric == key else metric} | {' | '.join(cells)} |")
    path.write_text("\n".join(lines) + "\n")


def _eval_curve(run_dir: Path, metric: str) -> dict[float, float]:
    """Validation metric per epoch from the run's trainer_state.json (empty when it never evaluated)."""
    state = run_dir / "trainer_state.json"
    if not state.is_file():
        return {}
    history = json.loads(state.read_text()).get("log_history", [])
    return {e["epoch"]: e[f"eval_{metric}"] for e in history if f"eval_{metric}" in e and "epoch" in e}


def plot_comparison(table: dict[str, dict[str, float]], key: str | None, run_dirs: dict[str, Path], metric: str,
                    path: Path) -> None:
    curves = {name: _eval_curve(d, metric) for name, d in run_dirs.items()}
    panels = int(key is not None) + int(any(curves.values()))
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.5 * max(panels, 1), 4), squeeze=False)
    axes = list(axes[0])
    if key is not None:
        ax = axes.pop(0)
        names = list(table)
        ax.bar([n.replace("_", " ") for n in names], [table[n].get(key, float("nan")) for n in names],
               color=["tab:blue", "tab:orange"][: len(names)])
        ax.set_ylabel(key)
        ax.set_title(f"Pretrained versus from scratch: {key}")
    if any(curves.values()):
        ax = axes.pop(0)
        for name, curve in curves.items():
            if curve:
                ax.plot(list(curve), list(curve.values()), "o-", label=name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"eval {metric}")
        ax.set_title("Validation curve per epoch")
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
