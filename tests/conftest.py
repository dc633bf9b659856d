"""Shared fixtures: offline settings, the test data in tests/data, MiniLM and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """tests/data: small subsets of public data sets, in the repository (README.md there says which and why)."""
    return DATA


@pytest.fixture(scope="session")
def minilm() -> str:
    from common.models.tiny import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def fsdd(test_data) -> Path:
    """The spoken-digit clips and their metadata.csv."""
    return test_data / "fsdd"


@pytest.fixture(scope="session")
def vit(tmp_path_factory) -> str:
    """A tiny random ViT image classifier, saved with its image processor."""
    from common.models.tiny import tiny_vit

    return tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    from common.models.tiny import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def csv_file(tmp_path):
    """Write rows (list of dicts) to a csv in tmp_path and return its path."""
    import pandas as pd

    def write(rows: list[dict], name: str = "data.csv") -> str:
        path = tmp_path / name
        pd.DataFrame(rows).to_csv(path, index=False)
        return str(path)

    return write


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a recipe run as a subprocess: offline, one thread, plus `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def fast_args(output_dir, **extra) -> list[str]:
    """Command-line flags for a quick run: small batches, no checkpoints, quiet."""
    args = {"output_dir": str(output_dir), "num_train_epochs": 1, "per_device_train_batch_size": 8,
            "logging_steps": 1, "disable_tqdm": True, "seed": 0}
    args.update(extra)
    flags: list[str] = []
    for key, value in args.items():
        flags += [f"--{key}"] + ([str(v) for v in value] if isinstance(value, list) else [str(value)])
    return flags


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine extra threads only spin.
    One thread also gives in-process runs the kernels of subprocesses started with OMP_NUM_THREADS=1, so
    their weights compare bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
