"""Finding decoder blocks and their linear layers without a per-family table.

Blocks are the model's largest ``nn.ModuleList`` of the class named in ``_no_split_modules`` (what
transformers itself uses to keep a block on one device), else its largest list of same-class
modules. Linear layers are ``nn.Linear`` and GPT-2's ``Conv1D``; the latter stores its weight as
(in, out), so every consumer sees an (out, in) view through :class:`PrunableLinear`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


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

    def set_weight(self, weight: torch.Tensor) -> None:
        """Write an (out, in) weight back in the module's own layout and dtype."""
        target = self.module.weight.data
        target.copy_(weight.T if self.transposed else weight)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_linears(
    block: nn.Module,
    prefix: str,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> list[PrunableLinear]:
    """Linear layers inside ``block`` whose full name passes the include/exclude globs."""
    found = []
    for local, module in block.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        name = f"{prefix}.{local}"
        if include and not _matches(name, include):
            continue
        if exclude and _matches(name, exclude):
            continue
        found.append(PrunableLinear(name, module))
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


__all__ = ["BlockDiscoveryError", "PrunableLinear", "context_length", "find_blocks", "find_linears"]
