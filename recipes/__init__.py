"""The recipes and their configs: one script per task, configs beside them in configs/<recipe>/."""

from __future__ import annotations

from pathlib import Path

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
}


def available() -> dict[str, list[Path]]:
    """Recipes whose script exists, each with its configs."""
    return {
        name: sorted((CONFIGS_DIR / name).glob("*.yaml"))
        for name in RECIPES
        if (RECIPES_DIR / f"{name}.py").exists()
    }
