"""The recipes and their configs: one script per task, configs beside them in configs/<recipe>/.

`RECIPES` is the one list of recipes: the CLI (`finetune-recipes list | cp | run | predict`), the import-linter
contract, the README's recipe table and the test suites that run over every recipe all follow it. Each recipe
module defines `main(argv)` and `predict_file(run, input_path, output)` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from common.core.errors import RecipeInputError, nearest

RECIPES_DIR = Path(__file__).resolve().parent
CONFIGS_DIR = RECIPES_DIR / "configs"

# name -> one-line description; the script is recipes/<name>.py, its configs recipes/configs/<name>/*.yaml.
RECIPES = {
    "text_classification": "single/multi-label classification, regression and sentence pairs",
    "sentiment": "sentiment analysis (text classification with sentiment defaults)",
    "image_classification": "image classification with torchvision augmentation",
    "translation": "seq2seq translation with BLEU and chrF",
    "speech_recognition": "speech recognition, CTC (wav2vec2) or seq2seq (Whisper)",
    "audio_classification": "audio classification (keywords, digits, speakers) with audio augmentation",
    "token_classification": "token classification (named entities): a BIO tag per word, entity-level F1",
    "question_answering": "extractive question answering (SQuAD): the answer's span in the context, exact match and F1",
}


def available() -> dict[str, list[Path]]:
    """Recipes whose script exists, each with its configs."""
    return {
        name: sorted((CONFIGS_DIR / name).glob("*.yaml"))
        for name in RECIPES
        if (RECIPES_DIR / f"{name}.py").exists()
    }


def recipe_table() -> str:
    """The README's table of recipes, as the registry and the shipped configs give it."""
    rows = ["| recipe | task | configs (`recipes/configs/<recipe>/`) |", "|---|---|---|"]
    for name, configs in available().items():
        rows.append(f"| `recipes/{name}.py` | {RECIPES[name]} | {', '.join(f'`{c.stem}`' for c in configs)} |")
    return "\n".join(rows) + "\n"


def predictor(recipe: str) -> Callable:
    """The recipe's `predict_file(run, input_path, output)`, by the name a run recorded in run_config.json."""
    if recipe not in RECIPES:
        raise RecipeInputError(f"this output dir was trained by a recipe named '{recipe}'{nearest(recipe, RECIPES)}, "
                               "which is not one of this project's: predict with that recipe's own code.")
    return importlib.import_module(f"recipes.{recipe}").predict_file


def predict(output_dir: str, input_path: str, output: str, **options) -> int:
    """`finetune-recipes predict`: the recorded recipe's predictions on a file of new inputs (rows written);
    `options` as common.strategies.prediction.predict takes them (skip_bad_examples, batch_size, input_columns,
    runtime, export_dir)."""
    from common.strategies.prediction import predict as predict_with  # torch loads only when predicting

    return predict_with(output_dir, input_path, output, predictor, **options)
