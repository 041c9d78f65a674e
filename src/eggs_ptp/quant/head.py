"""The output head on a grid (``--quantize-head``): the one dense layer a quantized run also rounds.

Every decode step reads the whole (vocab, hidden) head: on SmolLM2-135M a fifth of the weights and,
once the pruned layers are 2:4 + int8, most of the bytes a token reads. The head is not pruned; its
weight is rounded to nearest on :data:`HEAD_SCHEME`, int8 per output channel, whatever the pruned
layers' scheme: on SmolLM2-135M that cost +0.2% perplexity dense, where int4 in groups of 128 cost
+28% (benchmarks/results/head_quality.md). A head tied to the input embedding shares its matrix,
so the embedding gets the same grid values: one (vocab, hidden) table, held once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eggs_ptp.quant.grid import Grid, QuantScheme

HEAD_SCHEME = QuantScheme(8)


@dataclass(frozen=True)
class HeadRecord:
    """Args:
    name: the head module's name (``lm_head``).
    shape: (vocab, hidden), the head's (out, in).
    tied: the input embedding's module name when it shares the head's weight, else None.
    grid: the head's grid.
    """

    name: str
    shape: tuple[int, int]
    tied: str | None
    grid: Grid

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "tied": self.tied,
            "quantization": self.grid.scheme.to_dict(),
        }


def head_scheme(record: dict[str, Any]) -> QuantScheme:
    """The scheme a rounded head's record (:meth:`HeadRecord.to_dict`) names."""
    if not isinstance(record.get("quantization"), dict):
        raise ValueError(f"{record.get('name')}: the record of the rounded head names no quantization scheme")
    return QuantScheme.from_dict(record["quantization"])


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def quantize_head(model: nn.Module, scheme: QuantScheme = HEAD_SCHEME) -> HeadRecord:
    """Round ``model``'s output head (a transformers causal LM's ``get_output_embeddings()``) to
    ``scheme`` in place, and say where it lives; ValueError for a model without a linear head, or a
    head holding NaN/Inf."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"--quantize-head rounds a linear output head; {type(model).__name__} has "
            f"{type(head).__name__ if head is not None else 'none'}: drop --quantize-head"
        )
    name, weight = _module_name(model, head), head.weight
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name}: its weight holds NaN or Inf; fix the checkpoint before quantizing its head")
    embedding = model.get_input_embeddings()
    tied = _module_name(model, embedding) if getattr(embedding, "weight", None) is weight else None
    with torch.no_grad():
        grid = scheme.fit(weight, torch.ones_like(weight, dtype=torch.bool))
        weight.copy_(grid.round(weight).to(weight.dtype))
    return HeadRecord(name, (weight.shape[0], weight.shape[1]), tied, grid)


__all__ = ["HEAD_SCHEME", "HeadRecord", "head_scheme", "quantize_head"]
