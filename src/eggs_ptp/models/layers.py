"""Finding decoder blocks and their prunable layers without a per-family table.

Blocks are the model's largest ``nn.ModuleList`` of the class named in ``_no_split_modules`` (what
transformers itself uses to keep a block on one device), else its largest list of same-class
modules. Linear layers are ``nn.Linear`` and GPT-2's ``Conv1D``; the latter stores its weight as
(in, out), so every consumer sees an (out, in) view through :class:`PrunableLinear`. The experts of
a mixture-of-experts block are one :class:`~eggs_ptp.models.experts.ExpertMatrix` per expert and
matrix, with the same interface. Routers and scalar gates stay dense: their outputs are scores
(which experts a token visits, how much of a shared expert it takes), and a pruned score
re-routes tokens rather than perturbing an activation.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from eggs_ptp.models.experts import ROUTED, ROUTER, ExpertGroup, ExpertMatrix, KeptDense, find_expert_groups


class BlockDiscoveryError(ValueError):
    """No decoder blocks could be found in the model."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the qualified name and the ModuleList holding the decoder blocks, in order."""
    block_classes = set(getattr(model, "_no_split_modules", None) or ())
    candidates: list[tuple[int, int, str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child).__name__ for child in module}
        if len(classes) != 1:
            continue
        declared = int(bool(classes & block_classes))
        candidates.append((declared, len(module), name, module))
    if not candidates:
        raise BlockDiscoveryError(
            f"{type(model).__name__} has no list of decoder blocks; only decoder-only "
            "transformers models with a ModuleList of layers are supported"
        )
    _, _, name, blocks = max(candidates, key=lambda c: (c[0], c[1]))
    return name, blocks


@dataclass
class PrunableLinear:
    """A linear layer seen as an (out, in) weight, whatever its storage orientation."""

    name: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return isinstance(self.module, Conv1D)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as (out, in); a view, so writes go to the module."""
        w = self.module.weight.data
        return w.T if self.transposed else w

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)

    def set_weight(self, weight: torch.Tensor) -> None:
        """Write an (out, in) weight back in the module's own layout and dtype."""
        target = self.module.weight.data
        target.copy_(weight.T if self.transposed else weight)

    def observe_inputs(self, observer: Callable[[torch.Tensor], None]) -> torch.utils.hooks.RemovableHandle:
        """Call ``observer(x)`` with the layer's input in every forward."""
        return self.module.register_forward_hook(lambda module, inputs, output: observer(inputs[0]))

    def observe_outputs(
        self, observer: Callable[[torch.Tensor, torch.Tensor], None]
    ) -> torch.utils.hooks.RemovableHandle:
        """Call ``observer(x, y)`` with the layer's input and output (bias included) in every forward."""
        return self.module.register_forward_hook(lambda module, inputs, output: observer(inputs[0], output))


Prunable = PrunableLinear | ExpertMatrix


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _selected(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Whether the include/exclude globs let ``name`` be pruned; exclude wins."""
    return (not include or _matches(name, include)) and not _matches(name, exclude)


def find_linears(
    block: nn.Module,
    prefix: str,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> list[PrunableLinear]:
    """Linear layers inside ``block`` whose full name passes the include/exclude globs."""
    return [
        PrunableLinear(f"{prefix}.{local}", module)
        for local, module in block.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and _selected(f"{prefix}.{local}", include, exclude)
    ]


@dataclass
class BlockLayers:
    """A block's prunable layers in module order, and the weights it leaves dense by rule."""

    prunable: list[Prunable] = field(default_factory=list)
    dense: list[KeptDense] = field(default_factory=list)
    groups: list[ExpertGroup] = field(default_factory=list)


def find_layers(
    block: nn.Module,
    prefix: str,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    experts: str = ROUTED,
) -> BlockLayers:
    """Linear layers and expert matrices inside ``block`` whose full name passes the globs, with
    routers and scalar gates set aside; ``experts`` is how expert matrices are calibrated."""
    groups, unread = find_expert_groups(block, prefix, experts, lambda name: _matches(f"{name}.", exclude))
    found = BlockLayers(dense=list(unread), groups=groups)
    routers = {group.router for group in groups}
    left_dense = {kept.name for kept in unread}  # with the router of experts left dense
    for name, module in block.named_modules(prefix=prefix):
        if name in routers and not isinstance(module, (nn.Linear, Conv1D)):
            found.dense.append(KeptDense(name, tuple(module.weight.shape), ROUTER))
    for layer in find_linears(block, prefix, include, exclude):
        if layer.name in routers:
            found.dense.append(KeptDense(layer.name, tuple(layer.weight.shape), ROUTER))
        elif layer.weight.shape[0] == 1:
            found.dense.append(KeptDense(layer.name, tuple(layer.weight.shape), "gate: one score per token"))
        elif layer.name not in left_dense:
            found.prunable.append(layer)
    for group in groups:
        found.prunable.extend(matrix for matrix in group.matrices() if _selected(matrix.name, include, exclude))
    return found


_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
_UNBOUNDED_TOKENIZER = 10**7  # tokenizers with no declared limit report ~1e30


def context_length(model: nn.Module, tokenizer: object | None = None) -> int | None:
    """The longest input the model declares it takes, or None when it declares nothing."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = [getattr(text_config, f) for f in _CONTEXT_FIELDS if isinstance(getattr(text_config, f, None), int)]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _UNBOUNDED_TOKENIZER:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


__all__ = [
    "BlockDiscoveryError",
    "BlockLayers",
    "Prunable",
    "PrunableLinear",
    "context_length",
    "find_blocks",
    "find_layers",
    "find_linears",
]
