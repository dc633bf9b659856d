"""Pipeline files that recipes save beside their models, for tasks transformers ships no pipeline for.

A recipe copies its file into each output dir and registers it in the saved config (`custom_pipelines`), so that
`pipeline(task, model=OUTPUT_DIR, trust_remote_code=True)` loads it; each file imports nothing but transformers,
torch and numpy, since it runs from the model dir on its own. Recipes may import these files (the recipes-apart
import contract lets them), and nothing here imports a recipe.
"""
