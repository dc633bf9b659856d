"""Sentiment analysis: the text-classification recipe with sentiment defaults and example predictions.

With no arguments it fine-tunes all-MiniLM-L6-v2 on the review sample shipped in recipes/data/sentiment_demo:

    python recipes/sentiment.py
    python recipes/sentiment.py --config recipes/configs/sentiment/sst2_minilm.yaml
    accelerate launch recipes/sentiment.py --config recipes/configs/sentiment/sst2_minilm.yaml
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState
from transformers import pipeline

from common.core.errors import run_main
from recipes import text_classification
from recipes.text_classification import predict_file  # noqa: F401 - its runs predict as text classification's

DEMO_DATA = Path(__file__).resolve().parent / "data" / "sentiment_demo"
# Used only when neither the command line nor --config names data (no train_file, no dataset_name). Validation
# is held out of train (--validation_split): early stopping or HPO must never select on the test file.
SAMPLE_DATA = {
    "train_file": str(DEMO_DATA / "train.csv"),
    "test_file": str(DEMO_DATA / "test.csv"),
}
DEFAULTS = {
    "model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
    "output_dir": "outputs/sentiment-demo",
    "learning_rate": 1e-4,
    "num_train_epochs": 5,
    "per_device_train_batch_size": 16,
    "logging_steps": 5,
}

# Integer sentiment labels are named by their count of classes (SST-2: 2, SST-3: 3, SST-5: 5).
SENTIMENT_NAMES = {
    2: ["negative", "positive"],
    3: ["negative", "neutral", "positive"],
    5: ["very negative", "negative", "neutral", "positive", "very positive"],
}
EXAMPLES = [
    "An absolute delight from start to finish.",
    "The battery died after two days and support never answered.",
    "Not bad at all, I would happily order again.",
    "I wanted to like it, but the plot made no sense.",
]


def print_examples(output_dir: str, texts: list[str] = EXAMPLES) -> None:
    classify = pipeline("text-classification", model=output_dir, device="cpu")
    print("\nExample predictions:")
    for text, prediction in zip(texts, classify(texts)):
        print(f"  {prediction['label']:>13} ({prediction['score']:.2f})  {text}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    results = text_classification.main(argv, DEFAULTS, SENTIMENT_NAMES.get, SAMPLE_DATA)
    output_dir = results.get("output_dir")

    if PartialState().is_main_process and output_dir and (Path(output_dir) / "config.json").exists():
        print_examples(output_dir)
    return results


if __name__ == "__main__":
    run_main(main)
