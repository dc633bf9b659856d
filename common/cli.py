"""`finetune-recipes`: list recipes and configs, copy one out to adapt it, run one.

    finetune-recipes list
    finetune-recipes cp sentiment my_sentiment.py
    finetune-recipes cp sentiment/sst2_minilm my_config.yaml
    finetune-recipes run sentiment --config my_config.yaml
    finetune-recipes inspect sentiment --config my_config.yaml
    finetune-recipes predict outputs/sentiment-demo --input reviews.csv --output predictions.csv
    finetune-recipes label-issues outputs/my-cv
    finetune-recipes export outputs/sentiment-demo --format onnx --quantize int8
    finetune-recipes predict outputs/sentiment-demo --runtime onnx --input reviews.csv --output predictions.csv
    finetune-recipes hpo-summary --hpo_storage sqlite:///study.db --hpo_study_name my-search
    finetune-recipes cv-merge outputs/my-cv --ensemble soft_vote
"""

from __future__ import annotations

import argparse
import importlib
import logging
import runpy
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from common.core.errors import RecipeInputError, nearest, run_main
from recipes import CONFIGS_DIR, RECIPES, RECIPES_DIR, available, predict

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def config_names() -> dict[str, Path]:
    """'recipe/config' -> path, for every shipped config."""
    return {f"{recipe}/{path.stem}": path for recipe, paths in available().items() for path in paths}


def find(name: str) -> Path:
    """A recipe script or config by its registry name ('sentiment', 'sentiment/sst2_minilm' or 'sst2_minilm')."""
    recipes = available()
    if name in recipes:
        return RECIPES_DIR / f"{name}.py"
    configs = config_names()
    if name in configs:
        return configs[name]
    by_stem = [path for key, path in configs.items() if key.split("/")[1] == name]
    if len(by_stem) == 1:
        return by_stem[0]
    if len(by_stem) > 1:
        raise RecipeInputError(f"'{name}' names several configs: {', '.join(str(p.relative_to(CONFIGS_DIR)) for p in by_stem)}.")
    raise RecipeInputError(f"no recipe or config named '{name}'{nearest(name, [*recipes, *configs])}. See `finetune-recipes list`.")


def cmd_list(_: argparse.Namespace) -> None:
    for recipe, configs in available().items():
        print(f"{recipe:<22} {RECIPES[recipe]}")
        for path in configs:
            print(f"  {recipe}/{path.stem}")


def cmd_cp(args: argparse.Namespace) -> None:
    src = find(args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists():
        raise RecipeInputError(f"{dest} already exists; choose another destination (cp never overwrites).")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    print(f"copied {src.relative_to(RECIPES_DIR.parent)} to {dest}")


def _check_recipe(recipe: str) -> None:
    if not recipe.endswith(".py") and recipe not in available():
        raise RecipeInputError(
            f"no recipe named '{recipe}'{nearest(recipe, available())}. See `finetune-recipes list`.")


def _start(recipe: str, argv: list[str]) -> None:
    """Run a recipe: a copied .py as a script, else the bundled module's main."""
    if recipe.endswith(".py"):
        sys.argv = [recipe, *argv]
        runpy.run_path(recipe, run_name="__main__")
    else:
        importlib.import_module(f"recipes.{recipe}").main(argv)


def cmd_run(args: argparse.Namespace) -> None:
    _check_recipe(args.recipe)
    _start(args.recipe, args.args)


def cmd_inspect(args: argparse.Namespace) -> None:
    """Run the recipe up to its prepared data, print the report, stop: no model loaded, nothing trained."""
    # Imported here: `list` and `cp` then start without loading torch.
    from common.training.inspection import InspectionDone, inspecting

    if args.recipe.endswith(".py"):
        script = Path(args.recipe)
        if not script.is_file():
            raise RecipeInputError(f"{args.recipe} does not exist.")
        if "stop_for_inspection" not in script.read_text(encoding="utf-8"):
            raise RecipeInputError(f"{args.recipe} never calls common.training.inspection.stop_for_inspection, so inspect "
                                   "cannot stop it before training. Copy the recipe again, or add the call.")
    _check_recipe(args.recipe)
    # The report goes to stdout; the recipe's log to stderr (setup_run's basicConfig is then a no-op).
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr)
    with inspecting():  # setup_run then leaves the output dir alone: nothing is written, nothing resumed
        try:
            _start(args.recipe, args.args)
        except InspectionDone:
            return
    raise RecipeInputError(f"{args.recipe} finished without reaching stop_for_inspection.")


def recipe_main(recipe: str) -> Callable[[list[str]], dict]:
    """The `main` of a recipe: a bundled one by name, or a copied .py."""
    _check_recipe(recipe)
    if recipe.endswith(".py"):
        if not Path(recipe).is_file():
            raise RecipeInputError(f"recipe script {recipe} does not exist.")
        return runpy.run_path(recipe)["main"]
    return importlib.import_module(f"recipes.{recipe}").main


def cmd_compare(args: argparse.Namespace) -> None:
    # Imported here, as inspect's machinery is: `list` and `cp` then start without loading torch.
    from common.strategies.comparison import compare

    compare(recipe_main(args.recipe), args.args, Path(args.recipe).stem)


def _log_info() -> None:
    """The commands that work on an output dir log what they do, as a run does."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S", level=logging.INFO)


def cmd_predict(args: argparse.Namespace) -> None:
    _log_info()
    predict(args.output_dir, args.input, args.output, skip_bad_examples=args.skip_bad_examples,
            batch_size=args.batch_size, input_columns=args.input_columns, runtime=args.runtime,
            export_dir=args.export_dir)


def cmd_label_issues(args: argparse.Namespace) -> None:
    from common.strategies.label_issues import label_issues_command

    _log_info()
    table = label_issues_command(args.output_dir)
    print(table.head(args.show).to_string(index=False, max_colwidth=80))


def cmd_export(args: argparse.Namespace) -> None:
    from common.strategies.export import export

    _log_info()
    export(args.output_dir, args.format, args.quantize, args.output, args.max_metric_drop, args.batch_size,
           main_of=recipe_main)


def cmd_hpo_summary(args: argparse.Namespace) -> None:
    from common.strategies.hpo import hpo_summary

    hpo_summary(args.hpo_storage, args.hpo_study_name, args.output_dir)


def cmd_cv_merge(args: argparse.Namespace) -> None:
    from common.strategies.cross_validation import merge_folds

    _log_info()
    merge_folds(args.output_dir, args.ensemble)


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")
    return value.lower() in ("true", "1", "yes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="finetune-recipes", description="Fine-tuning recipes on Hugging Face Trainer.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list recipes and their configs").set_defaults(func=cmd_list)
    cp = commands.add_parser("cp", help="copy a recipe or config to adapt it")
    cp.add_argument("name", help="recipe name (e.g. sentiment) or config (e.g. sentiment/sst2_minilm)")
    cp.add_argument("dest", help="destination file or directory")
    cp.set_defaults(func=cmd_cp)
    for name, func, text in (("run", cmd_run, "run a recipe (name or path to a copied .py) with its options"),
                             ("inspect", cmd_inspect, "read a recipe's data as a run would and report on it; trains nothing"),
                             ("compare", cmd_compare, "fine-tune versus from scratch on the same data and budget")):
        sub = commands.add_parser(name, help=text, add_help=False)
        sub.add_argument("recipe")
        sub.add_argument("args", nargs=argparse.REMAINDER)
        sub.set_defaults(func=func)
    predict = commands.add_parser("predict", help="predict on new inputs with a trained output dir (model or ensemble)")
    predict.add_argument("output_dir", help="output dir of a run: its model, or its ensemble.json")
    predict.add_argument("--input", required=True,
                         help="new inputs as the run's recipe reads them (its README section): e.g. a csv/tsv/jsonl/"
                              "parquet table of texts, a folder of images or audio, a text file of source sentences")
    predict.add_argument("--output", required=True, help="predictions file to write (never overwritten)")
    predict.add_argument("--input_columns", nargs="+", default=None,
                         help="the input's column(s) holding what the model was trained on (default: the run's)")
    predict.add_argument("--skip_bad_examples", type=_flag, default=None,
                         help="skip unreadable inputs instead of failing (default: the run's setting)")
    predict.add_argument("--batch_size", type=int, default=32)
    predict.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                         help="torch: the PyTorch model; onnx: the model `finetune-recipes export` wrote (ONNX Runtime, "
                              "or CTranslate2 for translation), read with the same preprocessing")
    predict.add_argument("--export_dir", default=None,
                         help="with --runtime onnx: the export to use (default: the one export under OUTPUT_DIR, "
                              "onnx/ or onnx-int8/)")
    predict.set_defaults(func=cmd_predict)
    issues = commands.add_parser("label-issues", help="rank the train rows whose label is most likely wrong, from a "
                                 "--cv_folds run's out-of-fold predictions (cleanlab)")
    issues.add_argument("output_dir", help="output dir of a --cv_folds K run (its oof_predictions.parquet)")
    issues.add_argument("--show", type=int, default=20, help="rows to print (label_issues.csv has every flagged row)")
    issues.set_defaults(func=cmd_label_issues)
    export = commands.add_parser("export", help="export a run's model to ONNX (int8 optional), checked against PyTorch")
    export.add_argument("output_dir", help="output dir of a run (its run_config.json and model)")
    export.add_argument("--format", default="onnx", choices=("onnx",),
                        help="onnx: ONNX Runtime for encoders; translation models go to CTranslate2")
    export.add_argument("--quantize", default=None, choices=("int8",), help="dynamic int8 quantization of the weights")
    export.add_argument("--output", default=None,
                        help="export dir to write (default: OUTPUT_DIR/onnx, or OUTPUT_DIR/onnx-int8); never overwritten")
    export.add_argument("--max_metric_drop", type=float, default=None,
                        help="refuse the export (exit 2) when the validation metric drops by more than this many "
                             "points (default: 1 for int8, 0.1 for fp32)")
    export.add_argument("--batch_size", type=int, default=32, help="batch size of the parity check's predictions")
    export.set_defaults(func=cmd_export)
    summary = commands.add_parser("hpo-summary", help="report a shared hyperparameter study and how to retrain its best")
    summary.add_argument("--hpo_storage", required=True, help="the workers' --hpo_storage (URL or journal file)")
    summary.add_argument("--hpo_study_name", required=True, help="the workers' study name")
    summary.add_argument("--output_dir", default=None, help="where hpo_results.csv and hpo.png go (default: the workers')")
    summary.set_defaults(func=cmd_hpo_summary)
    merge = commands.add_parser("cv-merge", help="combine the fold jobs of --cv_folds K --cv_fold_index i")
    merge.add_argument("output_dir", help="the fold jobs' --output_dir (holding fold_0 ... fold_K-1)")
    merge.add_argument("--ensemble", default=None, help="also ensemble the fold models: soft_vote | hard_vote | stack")
    merge.set_defaults(func=cmd_cv_merge)
    args = parser.parse_args(argv)
    run_main(lambda _: args.func(args))  # the same one-line errors and exit codes as a recipe run as a script


if __name__ == "__main__":
    main()
