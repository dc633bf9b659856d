"""Which parameters train: freezing strategies, gradual unfreezing, layer-wise LR decay and the parameter table.

The layout of a model is read from its structure, not from a table of model types:

- the **backbone** is the base model (``model.base_model_prefix``); the **head** is everything outside it
  (for a model that is its own base, such as T5, the output embeddings);
- the **blocks** are the outermost ``nn.ModuleList`` s of parameterised modules inside the backbone
  (``encoder.layer``, ``layers``, ``encoder.block``, ``encoder.stages``, ...). Several lists (an encoder and a
  decoder) are parallel stacks: ``bottom:N`` and the depth count act on each. The CNN front end of
  wav2vec2-like models (``feature_extractor``) is not a stack; it belongs to the embeddings;
- the **embeddings** are the backbone parameters registered before a stack's first block, the **top** (final
  norm, pooler) those registered after its last block. A parameter outside the stacks is placed by the stack
  that shares the longest module path with it, so ``decoder.embed_tokens`` goes with the decoder.

Depth counts from the head: head 0, top block 1 (with the top), ..., embeddings deepest. Layer-wise LR decay
gives a group ``lr * decay**depth``; gradual unfreezing unfreezes one depth at a time from the top down.
Tied weights (shared embeddings and LM head) count once, in the group of their first name.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from common.core.config import world_size
from common.core.errors import RecipeInputError, nearest

logger = logging.getLogger(__name__)

UNFREEZE_UNDER_DDP = (
    "--unfreeze_schedule needs a single process, but {processes} are running: DistributedDataParallel "
    "builds its gradient reducer when it wraps the model, from the parameters that require grad at that "
    "moment, so parameters unfrozen later would never be all-reduced and the replicas would drift apart. "
    "Run on one process (python recipes/...), or keep several processes and use --freeze bottom:N and/or "
    "--layer_lr_decay instead."
)


@dataclass
class FreezingArguments:
    """Which parameters train, and at which learning rate."""

    freeze: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "What to freeze: none | backbone | embeddings | bottom:N | encoder | decoder | feature_encoder, "
            "or regex patterns on parameter names."
        },
    )
    unfreeze_patterns: list[str] = field(
        default_factory=list, metadata={"help": "Regex patterns of parameters kept trainable despite --freeze."}
    )
    train_norm_layers: bool = field(
        default=False, metadata={"help": "Keep LayerNorm/BatchNorm trainable inside frozen parts."}
    )
    unfreeze_schedule: str | None = field(
        default=None,
        metadata={
            "help": "Gradual unfreezing from the top: 'epoch' unfreezes one block group per epoch, "
            "or a comma list of epochs, e.g. '1,2,3'. Starts from --freeze backbone unless --freeze says otherwise."
        },
    )
    layer_lr_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise LR decay: block at depth d from the head gets lr * decay**d."}
    )

    def check(self) -> None:
        # Checks that need no model run at parse time, so a typo fails in seconds, not after tokenizing.
        freeze_strategies(self)
        decay = self.layer_lr_decay
        if decay is not None and not 0.0 < decay <= 1.0:
            raise RecipeInputError(f"--layer_lr_decay {decay} must be in (0, 1], e.g. 0.8.")
        if self.unfreeze_schedule:
            parse_schedule(self.unfreeze_schedule)

    @staticmethod
    def policies(options: dict[str, Any]) -> None:
        """Refuse gradual unfreezing under several processes before anything loads.

        The rest of the toolkit copes with several processes: early stopping decides on gathered eval
        metrics, so every process stops at the same step; CV runs the folds one after another with every
        process on each fold; HPO lets rank 0 drive optuna while the others follow its trials; the feature
        cache is written by the main process and read by the others.
        """
        processes = world_size()
        if processes > 1 and options.get("unfreeze_schedule"):
            raise RecipeInputError(UNFREEZE_UNDER_DDP.format(processes=processes))

KEYWORDS = ("none", "backbone", "embeddings", "encoder", "decoder", "feature_encoder")
FEATURE_ENCODER = "feature_extractor"  # transformers' attribute name for the CNN front end of wav2vec2-like models
FROZEN_ATTR = "_finetune_frozen"  # names of the parameters `apply_freezing` froze (gradual unfreezing thaws these)


@dataclass
class Layout:
    """Where each parameter of a model sits: its group label and its depth from the head."""

    model_name: str
    group: dict[str, str] = field(default_factory=dict)  # parameter name -> "embeddings" | "block 3" | "top" | "head"
    depth: dict[str, int] = field(default_factory=dict)
    stacks: dict[str, int] = field(default_factory=dict)  # stack path -> number of blocks
    block_index: dict[str, int] = field(default_factory=dict)  # parameter name -> index of its block in its stack
    feature_encoder: str | None = None  # module path of the CNN front end, when there is one

    def names(self, *groups: str) -> set[str]:
        return {name for name, label in self.group.items() if label in groups}


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (parameter names then match the plain model)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _block_lists(module: nn.Module, path: str, skip: tuple[str, ...] = ()) -> list[tuple[str, nn.ModuleList]]:
    """Outermost ModuleLists whose items hold parameters, outside the audio feature encoder and `skip`."""
    found = []
    for name, child in module.named_children():
        child_path = f"{path}{name}"
        if name == FEATURE_ENCODER or name in skip:
            continue
        if isinstance(child, nn.ModuleList) and len(child) and all(any(True for _ in m.parameters()) for m in child):
            found.append((child_path, child))
        else:
            found += _block_lists(child, child_path + ".")
    return found


def _stack_label(path: str, base_path: str, stacks: int) -> str:
    """'' for a single stack, else the stack's parent module ('encoder ', 'decoder ')."""
    if stacks == 1:
        return ""
    return path[len(base_path) :].rsplit(".", 1)[0] + " "


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def read_layout(model: nn.Module) -> Layout:
    """Group every parameter of a transformers model by embeddings / block i / top / head; see the module doc."""
    model = unwrap(model)
    cls = type(model).__name__
    prefix = getattr(model, "base_model_prefix", None)
    if not isinstance(model, PreTrainedModel) or prefix is None:
        raise RecipeInputError(
            f"cannot read the layout of {cls}: it is not a transformers PreTrainedModel with a base_model_prefix. "
            "Freeze it with regex patterns on parameter names instead, e.g. --freeze '^encoder\\.'."
        )
    base = getattr(model, prefix, None) if prefix else None
    base_path = f"{prefix}." if isinstance(base, nn.Module) else ""
    if not base_path:
        base = model
        out = model.get_output_embeddings()
        heads = [name for name, child in model.named_children() if child is out and out is not None]
    else:
        heads = [name for name, child in model.named_children() if child is not base]
    lists = _block_lists(base, base_path, skip=() if base_path else tuple(heads))
    if not lists:
        raise RecipeInputError(
            f"cannot read the layout of {cls}: found no list of blocks (an nn.ModuleList of layers) under "
            f"'{prefix or cls}'. Freeze it with regex patterns on parameter names instead, e.g. --freeze "
            f"'^{re.escape(base_path)}' (see the parameter names with model.named_parameters())."
        )

    layout = Layout(cls, stacks={path: len(blocks) for path, blocks in lists})
    if base_path and FEATURE_ENCODER in dict(base.named_children()):
        layout.feature_encoder = base_path + FEATURE_ENCODER
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}  # registration order
    first = dict.fromkeys(layout.stacks, len(order))  # index of each stack's first parameter
    for name, i in order.items():
        for path, size in layout.stacks.items():
            if name.startswith(path + "."):
                index = int(name[len(path) + 1 :].split(".", 1)[0])
                layout.block_index[name] = index
                layout.depth[name] = size - index
                first[path] = min(first[path], i)
                layout.group[name] = f"{_stack_label(path, base_path, len(layout.stacks))}block {index}"
    deepest = max(layout.stacks.values()) + 1
    for name, i in order.items():
        if name in layout.group:
            continue
        if any(name == h or name.startswith(h + ".") for h in heads) or (base_path and "." not in name):
            layout.group[name], layout.depth[name] = "head", 0
            continue
        parts = name.split(".")
        stack = max(layout.stacks, key=lambda path: _common_prefix(parts, path.split(".")))
        layout.group[name], layout.depth[name] = ("embeddings", deepest) if i < first[stack] else ("top", 1)
    return layout


def _select(layout: Layout, model: nn.Module, entry: str) -> set[str]:
    """Parameter names one --freeze entry names."""
    if entry == "backbone":
        return set(layout.group) - layout.names("head")
    if entry == "embeddings":
        return layout.names("embeddings")
    if entry.startswith("bottom:"):
        count = entry.split(":", 1)[1]
        if not count.isdigit():
            raise RecipeInputError(f"--freeze {entry}: give a number of blocks, e.g. bottom:4.")
        n = int(count)
        if n > max(layout.stacks.values()):
            raise RecipeInputError(
                f"--freeze {entry}: {layout.model_name} has {max(layout.stacks.values())} blocks per stack; "
                "use --freeze backbone to freeze them all."
            )
        return layout.names("embeddings") | {name for name, i in layout.block_index.items() if i < n}
    if entry == "feature_encoder":
        if layout.feature_encoder is None:
            raise RecipeInputError(
                f"--freeze feature_encoder: {layout.model_name} has no feature encoder (the CNN front end of "
                "wav2vec2-like speech models). Use embeddings, bottom:N or backbone."
            )
        return {name for name in layout.group if name.startswith(layout.feature_encoder + ".")}
    # encoder / decoder
    if not getattr(model.config, "is_encoder_decoder", False):
        raise RecipeInputError(
            f"--freeze {entry} applies to encoder-decoder models (T5, Marian, Whisper, ...); {layout.model_name} "
            "is not one. Use backbone, embeddings or bottom:N."
        )
    stack = model.get_encoder() if entry == "encoder" else model.get_decoder()
    ids = {id(p) for p in stack.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def _matching(model: nn.Module, pattern: str, option: str) -> set[str]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise RecipeInputError(f"{option} '{pattern}' is not a valid regular expression: {err}.") from None
    names = {name for name, _ in model.named_parameters() if regex.search(name)}
    if not names:
        examples = ", ".join(name for name, _ in list(model.named_parameters())[:3])
        hint = nearest(pattern, KEYWORDS) if option == "--freeze" else ""
        raise RecipeInputError(
            f"{option} '{pattern}' matches no parameter name of {type(model).__name__}{hint}. Names look like: "
            f"{examples}, ... Keywords: {', '.join(KEYWORDS)}, bottom:N."
        )
    return names


def _norm_parameters(model: nn.Module) -> set[str]:
    """Parameters of normalisation layers: LayerNorm, GroupNorm, BatchNorm and the models' own *Norm classes."""
    names = set()
    for path, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or (
            "norm" in type(module).__name__.lower() and not any(True for _ in module.children())
        )
        if is_norm:
            names |= {f"{path}.{name}" if path else name for name, _ in module.named_parameters(recurse=False)}
    return names


def _keep_frozen_batchnorm_in_eval(module: nn.Module, args) -> None:
    # Trainer calls model.train() every step; a BatchNorm whose weights are frozen must still not move its
    # running statistics (transformers #24479), so it is switched back to eval right before each forward.
    if module.training and not any(p.requires_grad for p in module.parameters(recurse=False)):
        module.train(False)


def freeze_strategies(finetune_args: FreezingArguments) -> list[str]:
    """The --freeze entries in effect: gradual unfreezing starts from the backbone unless told otherwise."""
    entries = [entry for entry in finetune_args.freeze if entry != "none"]
    if "none" in finetune_args.freeze and entries:
        raise RecipeInputError(f"--freeze none cannot be combined with {' '.join(entries)}.")
    if finetune_args.unfreeze_schedule and not entries:
        entries = ["backbone"]
    return entries


def apply_freezing(model: nn.Module, finetune_args: FreezingArguments) -> list[str]:
    """Apply --freeze, --unfreeze_patterns and --train_norm_layers; return the names frozen here.

    The option values were checked when FreezingArguments was built."""
    entries = freeze_strategies(finetune_args)
    if not entries:
        if finetune_args.unfreeze_patterns or finetune_args.train_norm_layers:
            logger.warning("--unfreeze_patterns/--train_norm_layers have no effect without --freeze")
        return []
    layout = None
    frozen: set[str] = set()
    for entry in entries:
        if entry in KEYWORDS or entry.startswith("bottom:"):
            layout = layout or read_layout(model)
            frozen |= _select(layout, model, entry)
        else:
            frozen |= _matching(model, entry, "--freeze")
    for pattern in finetune_args.unfreeze_patterns:
        frozen -= _matching(model, pattern, "--unfreeze_patterns")
    if finetune_args.train_norm_layers:
        frozen -= _norm_parameters(model)

    newly = [name for name, p in model.named_parameters() if name in frozen and p.requires_grad]
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise RecipeInputError(
            f"--freeze {' '.join(entries)} leaves no trainable parameter in {type(model).__name__} (is the head tied to "
            "the embeddings, or absent?). Freeze less, or add --unfreeze_patterns."
        )
    setattr(model, FROZEN_ATTR, tuple(newly))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not hasattr(module, "_frozen_eval_hook"):
            module._frozen_eval_hook = module.register_forward_pre_hook(_keep_frozen_batchnorm_in_eval)
    if layout and layout.feature_encoder and hasattr(model, "freeze_feature_encoder"):
        encoder = [name for name in layout.group if name.startswith(layout.feature_encoder + ".")]
        if all(name in frozen for name in encoder):
            model.freeze_feature_encoder()  # also stops gradients flowing into the CNN's input
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for name, p in model.named_parameters() if name in frozen)
    logger.info("--freeze %s: froze %s of %s parameters", " ".join(entries), f"{count:,}", f"{total:,}")
    return newly


def parameter_table(model: nn.Module) -> list[dict]:
    """Rows {group, depth, parameters, trainable, frozen}, embeddings first and head last."""
    model = unwrap(model)
    try:
        layout = read_layout(model)
        group, depth = layout.group, layout.depth
    except RecipeInputError:
        # An unreadable layout still gets a table, by top-level module.
        group = {name: name.split(".")[0] for name, _ in model.named_parameters()}
        depth = dict.fromkeys(group, 0)
    rows: dict[str, dict] = {}
    for name, p in model.named_parameters():
        row = rows.setdefault(group[name], {"group": group[name], "depth": depth[name], "parameters": 0,
                                            "trainable": 0, "frozen": 0})
        row["parameters"] += p.numel()
        row["trainable" if p.requires_grad else "frozen"] += p.numel()
    return sorted(rows.values(), key=lambda row: (-row["depth"], row["group"] == "top"))


def log_parameter_table(model: nn.Module) -> list[dict]:
    """Log trainable versus frozen parameters by group (embeddings, block i, top, head); return the rows."""
    rows = parameter_table(model)
    width = max(len(row["group"]) for row in rows + [{"group": "total"}])
    lines = [f"{'group':<{width}} {'parameters':>12} {'trainable':>12} {'frozen':>12}"]
    for row in rows + [{"group": "total", **{k: sum(r[k] for r in rows) for k in ("parameters", "trainable", "frozen")}}]:
        lines.append(f"{row['group']:<{width}} {row['parameters']:>12,} {row['trainable']:>12,} {row['frozen']:>12,}")
    logger.info("parameters of %s:\n%s", type(unwrap(model)).__name__, "\n".join(lines))
    return rows


def optimizer_param_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: set[str],
    layer_lr_decay: float = 1.0,
) -> list[dict]:
    """One optimizer group per layout group and weight-decay setting, with lr * layer_lr_decay**depth.

    Every parameter is included, frozen ones too, so that gradual unfreezing only toggles requires_grad:
    groups added mid-training would escape the LR scheduler (transformers #20029). Optimizers skip
    parameters without gradients, so frozen ones stay bit-identical. `decay_parameter_names` are names in
    `model` (Trainer.get_decay_parameter_names): biases and norm weights get no weight decay.
    """
    decayed = {id(p) for name, p in model.named_parameters() if name in decay_parameter_names}
    inner = unwrap(model)
    layout = read_layout(inner)
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in inner.named_parameters():
        label, depth, decay = layout.group[name], layout.depth[name], id(p) in decayed
        group = groups.setdefault((label, decay), {
            "params": [], "name": label if decay else f"{label} (no decay)", "depth": depth,
            "lr": learning_rate * layer_lr_decay**depth, "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(p)
    ordered = sorted(groups.values(), key=lambda g: -g["depth"])
    logger.info("optimizer groups: %s", ", ".join(f"{g['name']} lr={g['lr']:.3g}" for g in ordered))
    return ordered


def optimizer_groups(args: FreezingArguments):
    """The trainer's optimizer groups for --layer_lr_decay or --unfreeze_schedule; None: Trainer's own."""
    if not (args.layer_lr_decay or args.unfreeze_schedule):
        return None
    return partial(optimizer_param_groups, layer_lr_decay=args.layer_lr_decay or 1.0)


def parse_schedule(schedule: str) -> str | list[int]:
    """'epoch', or a strictly increasing comma list of epoch counts after which the next group unfreezes."""
    if schedule.strip() == "epoch":
        return "epoch"
    try:
        epochs = [int(part) for part in schedule.split(",")]
    except ValueError:
        epochs = []
    if not epochs or any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
        raise RecipeInputError(
            f"--unfreeze_schedule '{schedule}': give 'epoch' (one more group each epoch) or increasing epoch "
            "counts after which the next group unfreezes, e.g. '1,2,4'."
        )
    return epochs


class GradualUnfreezingCallback(TrainerCallback):
    """ULMFiT-style gradual unfreezing: after each scheduled epoch, the topmost still-frozen depth trains.

    The parameters `apply_freezing` froze are grouped by depth from the head; group k (k = 1, 2, ...) thaws
    when epoch k begins ('epoch'), or after the k-th listed epoch count. Only requires_grad changes: the
    optimizer already holds every parameter (see `optimizer_param_groups`), so the LR schedule covers all.
    """

    def __init__(self, finetune_args: FreezingArguments):
        self.schedule = parse_schedule(finetune_args.unfreeze_schedule or "epoch")
        self.steps: list[list[str]] = []
        self.thawed = 0

    def unfreeze_epoch(self, step: int) -> int | None:
        """The epoch at whose start step `step` (1-based) thaws, or None when the schedule is shorter."""
        if self.schedule == "epoch":
            return step
        return self.schedule[step - 1] if step <= len(self.schedule) else None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.world_size > 1:  # parse_args refuses this already; a Trainer built by hand gets here
            raise RecipeInputError(UNFREEZE_UNDER_DDP.format(processes=args.world_size))
        model = unwrap(model)
        layout = read_layout(model)
        frozen = set(getattr(model, FROZEN_ATTR, ()))
        by_depth: dict[int, list[str]] = defaultdict(list)
        for name, _ in model.named_parameters():
            if name in frozen:
                by_depth[layout.depth[name]].append(name)
        self.steps = [by_depth[depth] for depth in sorted(by_depth)]
        self.groups = {name: layout.group[name] for names in self.steps for name in names}
        within = sum(1 for k in range(1, len(self.steps) + 1) if (self.unfreeze_epoch(k) or math.inf) < args.num_train_epochs)
        if within < len(self.steps):
            logger.warning("--unfreeze_schedule: %d of %d frozen groups thaw within %s epochs",
                           within, len(self.steps), args.num_train_epochs)
        self.thawed = 0
        self._thaw(model, math.floor(state.epoch + 1e-6) if state.epoch else 0)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._thaw(unwrap(model), math.floor(state.epoch + 1e-6) if state.epoch else 0)

    def _thaw(self, model: nn.Module, epoch: int) -> None:
        parameters = dict(model.named_parameters())
        while self.thawed < len(self.steps):
            at = self.unfreeze_epoch(self.thawed + 1)
            if at is None or at > epoch:
                break
            names = self.steps[self.thawed]
            for name in names:
                parameters[name].requires_grad_(True)
            self.thawed += 1
            labels = sorted({self.groups[name] for name in names}, key=lambda g: (len(g), g))
            logger.info("epoch %d: unfroze %s (%s parameters)", epoch, ", ".join(labels),
                        f"{sum(parameters[n].numel() for n in names):,}")
