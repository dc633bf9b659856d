"""Run recipes under `accelerate launch`, recording what each process trains on: per epoch, the train dataset indices
that its data loader, as accelerate prepared and sharded it, fetches.

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml tests/recipes/invariants/record_train_indices.py SPEC

SPEC is a JSON file {"out": folder, "runs": {recipe: [its flags]}}. The recipes run one after the other in the same
processes (imports are paid once); each process writes OUT/<recipe>.<process index>.json:
{"rows": rows of the train dataset, "epochs": {epoch: [[index, ...] for each batch]}}, or {"error": why it failed}.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # this checkout's recipes and common

from transformers import Trainer  # noqa: E402

record: dict = {}


def _recording_train_dataloader(get_train_dataloader):
    """Trainer.get_train_dataloader whose loader notes each batch of indices it fetches from the dataset, under
    the loader's epoch (accelerate's `DataLoaderShard.iteration`, set when Trainer starts each epoch)."""

    def wrapper(self):
        loader = get_train_dataloader(self)
        assert loader.num_workers == 0, "the indices are recorded in this process: run without loader workers"
        dataset, fetch = loader.dataset, loader.dataset.__getitems__

        def getitems(indices):
            record["epochs"][loader.iteration].append([int(i) for i in indices])
            return fetch(indices)

        dataset.__getitems__ = getitems  # the loader's fetcher looks it up on the instance, batch by batch
        record["rows"] = len(dataset)
        return loader

    return wrapper


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    Trainer.get_train_dataloader = _recording_train_dataloader(Trainer.get_train_dataloader)
    process = os.environ["RANK"]  # set by the launcher; asking accelerate first would set up its state too early
    for recipe, argv in spec["runs"].items():
        record.clear()
        record["epochs"] = defaultdict(list)
        try:
            importlib.import_module(f"recipes.{recipe}").main(argv)
        except Exception as err:  # noqa: BLE001 - the test reports it; the next recipe still runs
            record.clear()
            record["error"] = f"{type(err).__name__}: {err}"
        Path(spec["out"], f"{recipe}.{process}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
