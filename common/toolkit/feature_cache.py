"""Frozen-backbone feature cache (``--freeze backbone --cache_features``).

The backbone runs once per split, in eval mode; the tensor the head module receives (BERT: the pooled
output, ViT: the normed [CLS] vector, ConvNeXt: the pooled feature map) is captured by a forward pre-hook
and stored as a `datasets` Arrow dataset under ``<output_dir>/feature_cache/``. Training and prediction then
run the head alone on those features, so every epoch after the cache is built costs a few matrix products.

- Exactness: in eval mode the head computes on the stored tensor exactly what it would inside the full model,
  so predictions match the uncached path (checked on the first batch, and in the tests, to 1e-5).
- Dropout: the features come from the backbone in eval mode, so dropout *inside* the backbone is off; that is
  what makes them reusable. Dropout the model applies between the backbone and the head (BERT's ``dropout``
  before ``classifier``) still runs on the cached features in training, with the same module.
- Scope: a head that is one module fed one fixed-size tensor per example, with a classification or regression
  loss. Other layouts (a projector plus pooling code before the classifier, a head reading the token
  sequence) fail with a RecipeInputError naming what was found.
- Validity: a cache is keyed by a digest of the backbone weights and the dataset fingerprint; a fresh model
  whose backbone differs from the cached one is refused. The main process of each node writes the cache
  (the others wait, then read it); nodes that share a filesystem keep the first copy written.
- Saving: the head module is shared with the full model, which is what gets saved, so the output directory
  loads with ``pipeline()`` like any other run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import datasets
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, TrainingArguments, default_data_collator, set_seed
from transformers.loss.loss_utils import LOSS_MAPPING, ForSequenceClassificationLoss
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import find_labels

from common.core.errors import RecipeInputError

logger = logging.getLogger(__name__)

CACHE_DIR = "feature_cache"


@dataclass
class FeatureCacheArguments:
    cache_features: bool = field(
        default=False,
        metadata={"help": "With --freeze backbone: run the backbone once, cache pooled features, train the head only."},
    )

    def check(self) -> None:
        # The cache needs the rest of the toolkit to leave the backbone and the inputs alone; `self` is the
        # composed fine-tuning arguments, so the other groups' options are read by name.
        if not self.cache_features:
            return
        others = [f"--{name}" for name in ("unfreeze_schedule", "unfreeze_patterns", "train_norm_layers",
                                           "layer_lr_decay", "peft", "ensemble") if getattr(self, name, None)]
        freeze = getattr(self, "freeze", ["backbone"])
        if freeze != ["backbone"] or others:
            raise RecipeInputError(
                "--cache_features needs --freeze backbone alone: the cached features are only valid while every "
                "backbone weight stays fixed and the inputs never change, and ensemble members read the raw inputs "
                f"(got --freeze {' '.join(freeze)}{' with ' + ', '.join(others) if others else ''})."
            )


class CachedHeadModel(nn.Module):
    """The task head, trained and evaluated on cached features; `full_model` shares the head and is saved."""

    main_input_name = "features"
    # Read by common.training.trainer.choose_find_unused_parameters.
    every_parameter_used = "--cache_features trains the head alone, every weight of it in every step"

    def __init__(self, model: PreTrainedModel, head: str, dropouts: list[str]):
        super().__init__()
        self.head = getattr(model, head)
        self.dropouts = nn.ModuleList(getattr(model, name) for name in dropouts)
        self.config = model.config
        self._full = [model]  # kept outside the module tree: only the head trains and is checkpointed

    @property
    def full_model(self) -> PreTrainedModel:
        return self._full[0]

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = features.to(next(self.head.parameters()).dtype)
        for dropout in self.dropouts:
            hidden = dropout(hidden)
        logits = self.head(hidden)
        loss = None if labels is None else self.full_model.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def find_head(model: PreTrainedModel) -> str:
    """The name of the one parameterised module outside the backbone, or a RecipeInputError."""
    cls = type(model).__name__
    base = model.base_model
    if base is model:
        raise RecipeInputError(f"--cache_features: {cls} has no task head separate from its backbone.")
    heads = [name for name, child in model.named_children() if child is not base and any(True for _ in child.parameters())]
    direct = [name for name, _ in model.named_parameters(recurse=False)]
    if len(heads) != 1 or direct:
        raise RecipeInputError(
            f"--cache_features needs a head that is a single module; {cls} has {', '.join(heads + direct)} outside "
            "its backbone, with code between them. Train it with --freeze backbone without --cache_features."
        )
    if LOSS_MAPPING.get(getattr(model, "loss_type", None)) is not ForSequenceClassificationLoss:
        raise RecipeInputError(
            f"--cache_features supports classification and regression heads; {cls} is not one "
            "(train it with --freeze backbone without --cache_features)."
        )
    return heads[0]


def backbone_digest(model: PreTrainedModel, head: str) -> str:
    """A hash of every backbone weight and buffer: a cache is valid only for these exact values."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not name.startswith(head + "."):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _loader(model: PreTrainedModel, dataset: datasets.Dataset, collator, args: TrainingArguments) -> DataLoader:
    """Batches as Trainer's eval loader makes them (same column removal and collator), on one process."""
    if args.remove_unused_columns:
        accepted = set(inspect.signature(model.forward).parameters) | {"label", "label_ids"}
        accepted |= set(args.label_names or find_labels(type(model)))
        dataset = dataset.remove_columns([c for c in dataset.column_names if c not in accepted])
    return DataLoader(dataset, batch_size=args.per_device_eval_batch_size, collate_fn=collator or default_data_collator)


def _probe(model: PreTrainedModel, head: str, batch: dict) -> list[str]:
    """Run one batch; check the head gets one tensor and gives the logits; return the dropouts before it."""
    calls: list[tuple[str, tuple, dict]] = []

    def record(name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((name, args, kwargs))

    base = model.base_model
    hooks = [child.register_forward_pre_hook(partial(record, name), with_kwargs=True)
             for name, child in model.named_children() if child is not base]
    try:
        with torch.inference_mode():
            logits = model(**batch).logits
    finally:
        for hook in hooks:
            hook.remove()
    order = [name for name, _, _ in calls]
    if order.count(head) != 1:
        raise RecipeInputError(f"--cache_features: the head '{head}' ran {order.count(head)} times in one forward pass.")
    _, args, kwargs = calls[order.index(head)]
    if len(args) != 1 or kwargs or not torch.is_tensor(args[0]):
        raise RecipeInputError(f"--cache_features: the head '{head}' takes more than one input tensor.")
    dropouts = [name for name in order[: order.index(head)] if isinstance(getattr(model, name), nn.modules.dropout._DropoutNd)]
    with torch.inference_mode():
        replayed = getattr(model, head)(args[0])
    if replayed.shape != logits.shape or not torch.allclose(replayed, logits, atol=1e-5):
        raise RecipeInputError(f"--cache_features: {type(model).__name__} changes the output of '{head}' before "
                               "returning its logits, so the head cannot run alone.")
    return dropouts


def _extract(model: PreTrainedModel, head: str, loader: DataLoader, label_names: list[str], device) -> dict:
    """The head's input (float32, on CPU) and the labels, for every example in loader order."""
    captured: list[torch.Tensor] = []
    hook = getattr(model, head).register_forward_pre_hook(lambda module, args: captured.append(args[0].float().cpu()))
    columns: dict[str, list] = {"features": []}
    try:
        with torch.inference_mode():
            for batch in loader:
                labels = {k: batch.pop(k) for k in label_names if k in batch}
                model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
                features = captured.pop().numpy()
                if columns["features"] and features.shape[1:] != columns["features"][0].shape:
                    raise RecipeInputError(
                        f"--cache_features: the input of '{head}' changes shape between batches "
                        f"({columns['features'][0].shape} then {features.shape[1:]}): this head reads the token "
                        "sequence, not a pooled vector. Use --freeze backbone without --cache_features."
                    )
                columns["features"] += list(features)
                for k, v in labels.items():
                    columns.setdefault(k, []).extend(v.numpy())
    finally:
        hook.remove()
    return columns


def _cached_split(model, head: str, dataset, collator, args: TrainingArguments, key: str, split: str) -> datasets.Dataset:
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        raise RecipeInputError(f"--cache_features needs `datasets.Dataset` splits; the {split} split is a "
                               f"{type(dataset).__name__}.")
    name = hashlib.sha256(f"{key}{fingerprint}{type(collator).__name__}".encode()).hexdigest()[:16]
    path = Path(args.output_dir) / CACHE_DIR / f"{split}-{name}"
    with args.main_process_first(desc=f"feature cache {split}"):
        if path.is_dir():
            logger.info("feature cache %s: reusing %s", split, path)
        else:
            label_names = args.label_names or find_labels(type(model))
            columns = _extract(model, head, _loader(model, dataset, collator, args), label_names, args.device)
            # One main process per node gets here first, so on a filesystem the nodes share two may write at
            # once: each writes its own partial copy, the first rename wins and the later ones drop theirs.
            partial_path = path.with_name(f"{path.name}.partial-{args.process_index}")
            shutil.rmtree(partial_path, ignore_errors=True)
            datasets.Dataset.from_dict(columns).save_to_disk(str(partial_path))
            try:
                partial_path.rename(path)
            except OSError:
                if not path.is_dir():
                    raise
                shutil.rmtree(partial_path, ignore_errors=True)
            logger.info("feature cache %s: %d examples of shape %s written to %s", split,
                        len(columns["features"]), tuple(columns["features"][0].shape), path)
        return datasets.load_from_disk(str(path)).with_format("torch")


def cached_task(task, args: TrainingArguments):
    """The same Task, its model the head alone and its splits the cached features of the frozen backbone."""
    if task.augmentation is not None:
        raise RecipeInputError("--cache_features cannot be combined with data augmentation: the cached features "
                               "would freeze one random augmentation of each example. Drop one of the two.")
    set_seed(args.seed)  # the same state Trainer seeds model_init with, so any fresh weights match too
    model = task.model_init()
    head = find_head(model)
    model.to(args.device).eval()
    first = next(iter(_loader(model, task.train_dataset or task.eval_dataset, task.data_collator, args)))
    label_names = args.label_names or find_labels(type(model))
    dropouts = _probe(model, head, {k: v.to(args.device) for k, v in first.items() if k not in label_names})
    key = backbone_digest(model, head)
    splits = {split: _cached_split(model, head, dataset, task.data_collator, args, key, split)
              for split, dataset in [("train", task.train_dataset), ("eval", task.eval_dataset),
                                     ("test", task.test_dataset)] if dataset is not None}
    del model
    logger.info("training the head '%s' on cached features%s", head,
                f" (with {', '.join(dropouts)} before it)" if dropouts else "")

    def model_init() -> CachedHeadModel:
        fresh = task.model_init()
        if backbone_digest(fresh, head) != key:
            raise RecipeInputError(
                "--cache_features: a freshly loaded model has a different backbone from the cached one (random "
                "weights, e.g. --from_scratch?). The cache holds only for a fixed pretrained backbone."
            )
        return CachedHeadModel(fresh, head, dropouts)

    return dataclasses.replace(task, model_init=model_init, train_dataset=splits.get("train"),
                               eval_dataset=splits.get("eval"), test_dataset=splits.get("test"),
                               data_collator=default_data_collator)


def save_full_model(trainer, output_dir: str | Path) -> None:
    """Save the full model (frozen backbone plus trained head) and its processor, loadable with pipeline()."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.args.should_save:
        model.full_model.save_pretrained(str(output_dir))
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(str(output_dir))
