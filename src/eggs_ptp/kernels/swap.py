"""A packed folder as a model whose pruned layers compute from their compact form.

Inference only: each pruned layer becomes a :class:`~eggs_ptp.kernels.SparseNMLinear` holding its
values and bitmask, never a dense copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from eggs_ptp.formats.compact import expand_experts, model_from_state, read_compact_tensors
from eggs_ptp.kernels.linear import SparseNMLinear
from eggs_ptp.pattern import Pattern


def _swap_in_sparse(
    model: PreTrainedModel,
    record: dict[str, Any],
    pattern: Pattern,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype | None,
) -> None:
    """Replace each packed linear layer of ``model`` by a SparseNMLinear holding its compact tensors, and
    rename their keys in ``state`` to the new module's buffers (same tensors, so loading copies nothing).
    Packed experts are rebuilt dense with zeros: transformers computes them from the fused tensor."""
    for layer in expand_experts(record, pattern, state):
        name = layer["name"]
        values, bitmask = state.pop(f"{name}.weight.values"), state.pop(f"{name}.weight.bitmask")
        bias = state.get(f"{name}.bias")
        if dtype is not None:
            values, bias = values.to(dtype), None if bias is None else bias.to(dtype)
        try:
            module = SparseNMLinear(values, bitmask, layer["shape"][1], pattern, bias)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        model.set_submodule(name, module)
        state[f"{name}.values"], state[f"{name}.bitmask"] = module.values, module.bitmask
        if bias is not None:
            state[f"{name}.bias"] = module.bias


def load_sparse(folder: Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A working causal LM (eval mode) from a packed folder, its pruned layers as SparseNMLinear."""
    folder = Path(folder)
    record, pattern, state = read_compact_tensors(folder)
    return model_from_state(folder, state, dtype, lambda model: _swap_in_sparse(model, record, pattern, state, dtype))


__all__ = ["load_sparse"]
