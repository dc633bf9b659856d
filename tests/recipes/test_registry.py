"""`recipes.RECIPES` is the one list of recipes: every registered recipe has what the CLI, `predict` and the
suites that run over every recipe need, and the README's table is the registry's."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from recipes import RECIPES, available, recipe_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_registered_recipe_has_a_main_a_predictor_and_a_config(recipe):
    """A registered recipe runs (`main`), predicts on new inputs (`predict_file`, which `finetune-recipes predict`
    calls by the name its runs record) and ships at least one config."""
    module = importlib.import_module(f"recipes.{recipe}")
    assert callable(getattr(module, "main", None)), f"recipes/{recipe}.py defines no main(argv)"
    assert callable(getattr(module, "predict_file", None)), f"recipes/{recipe}.py defines no predict_file"
    assert available()[recipe], f"recipes/configs/{recipe}/ holds no config"


def test_the_readme_recipe_table_is_the_registry():
    """The README's recipe table lists the registered recipes, their descriptions and their configs, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = recipe_table()
    assert table in readme, "the README's recipe table is out of date; replace it with:\n" + table
