"""A packed folder as a model whose pruned layers compute from their compact form.

Inference only: each pruned layer becomes a :class:`~eggs_ptp.kernels.SparseNMLinear` holding its
values and bitmask (a :class:`~eggs_ptp.kernels.linear.QuantSparseNMLinear` holding its integers,
bitmask and grid when the folder is quantized), never a dense copy.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from eggs_ptp.formats.compact import (
    compact_scheme,
    expand_experts,
    layer_dtype,
    model_from_state,
    read_compact_tensors,
    take_grid,
)
from eggs_ptp.kernels.linear import QuantEmbedding, QuantSparseNMLinear, SparseNMLinear
from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import head_scheme


def _install(model: PreTrainedModel, name: str, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put ``module`` at ``name`` and its buffers in ``state`` under their new keys (the same tensors)."""
    model.set_submodule(name, module)
    state.update({f"{name}.{key}": buffer for key, buffer in module.named_buffers()})


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
    scheme = compact_scheme(record)
    for layer in expand_experts(record, pattern, state):
        name, cols = layer["name"], layer["shape"][1]
        bitmask, bias = state.pop(f"{name}.weight.bitmask"), state.get(f"{name}.bias")
        if scheme is None:
            values = state.pop(f"{name}.weight.values")
            if dtype is not None:
                values, bias = values.to(dtype), None if bias is None else bias.to(dtype)
            build = partial(SparseNMLinear, values, bitmask, cols, pattern, bias)
        else:
            qvalues, grid = state.pop(f"{name}.weight.qvalues"), take_grid(layer, scheme, state)
            build = partial(
                QuantSparseNMLinear, qvalues, bitmask, cols, pattern, grid, bias, dtype or layer_dtype(layer)
            )
        try:
            module = build()
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        _install(model, name, module, state)
    if record.get("head") is not None:
        _swap_in_head(model, record["head"], state, dtype)


def _swap_in_head(
    model: PreTrainedModel,
    head: dict[str, Any],
    state: dict[str, torch.Tensor],
    dtype: torch.dtype | None,
) -> None:
    """The quantized output head as a QuantSparseNMLinear that stores every weight; a plain
    ``nn.Embedding`` tied to it becomes a QuantEmbedding reading the same integers, any other
    (one that scales its rows, say) gets the dequantized table."""
    name, tied = head["name"], head.get("tied")
    grid = take_grid(head, head_scheme(head), state)
    module = QuantSparseNMLinear(
        state.pop(f"{name}.weight.qvalues"),
        None,
        head["shape"][1],
        None,
        grid,
        state.pop(f"{name}.bias", None),
        dtype or layer_dtype(head),
    )
    _install(model, name, module, state)
    if tied is None:
        return
    if type(model.get_submodule(tied)) is nn.Embedding:
        model.set_submodule(tied, QuantEmbedding(module))
    else:
        state[f"{tied}.weight"] = module.dense_weight()


def load_sparse(folder: Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A working causal LM (eval mode) from a packed folder, its pruned layers as SparseNMLinear
    (QuantSparseNMLinear for a quantized folder, and for its output head when that was quantized),
    computing in ``dtype`` or the saved one."""
    folder = Path(folder)
    record, pattern, state = read_compact_tensors(folder)
    return model_from_state(folder, state, dtype, lambda model: _swap_in_sparse(model, record, pattern, state, dtype))


__all__ = ["load_sparse"]
