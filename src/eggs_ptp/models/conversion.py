"""How ``save_pretrained`` names and splits a model's parameters in a checkpoint, read from
transformers' own weight conversions rather than a per-family table.

transformers 5.x loads many checkpoints through conversions: Mixtral's router
``block_sparse_moe.gate`` becomes ``mlp.gate``, and per-expert tensors
(``block_sparse_moe.experts.E.w1.weight`` ...) are stacked and concatenated into one fused
``mlp.experts.gate_up_proj``. ``save_pretrained`` runs them backwards
(``revert_weight_conversion``). Running that on a meta tensor names where a parameter is
stored; running it on a probe that numbers a fused parameter's rows, with one input column so it
stays small, says which stored tensor holds which expert's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.core_model_loading import revert_weight_conversion


class ConversionError(ValueError):
    """A checkpoint does not hold a parameter where transformers' conversion says it should."""


def stored_names(model: nn.Module, name: str) -> list[str]:
    """The checkpoint keys ``save_pretrained`` writes model parameter ``name`` under (one, unless it
    is split); ``model`` may be on the meta device."""
    try:
        tensor = model.get_parameter(name)
    except AttributeError:
        tensor = model.get_buffer(name)
    return list(revert_weight_conversion(model, {name: torch.empty_like(tensor, device="meta")}))


@dataclass(frozen=True)
class StoredPiece:
    """A checkpoint tensor holding rows of a fused expert parameter, as ``save_pretrained`` writes it."""

    key: str
    shape: tuple[int, ...]  # as stored
    input_dim: int  # the stored dimension that runs along the experts' inputs
    rows: torch.Tensor  # per stored row (input dimension last, the others flattened): expert * out + row


def fused_parameter(model: nn.Module, parameter: str) -> tuple[nn.Module, torch.Tensor]:
    """The experts module owning ``parameter`` (a full name) and the parameter itself."""
    owner, _, leaf = parameter.rpartition(".")
    module = model.get_submodule(owner)
    return module, getattr(module, leaf)


def is_fused_expert(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is a 3-D parameter of an experts module in transformers' declared layout."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    tensor = getattr(module, leaf, None)
    return getattr(module, "is_transposed", None) is not None and isinstance(tensor, torch.Tensor) and tensor.dim() == 3


def matrices_shape(model: nn.Module, parameter: str) -> tuple[int, int, int]:
    """(experts, out, in) of fused expert ``parameter``."""
    module, fused = fused_parameter(model, parameter)
    experts, rows, columns = fused.shape
    return (experts, columns, rows) if module.is_transposed else (experts, rows, columns)


def swap_layout(model: nn.Module, parameter: str, tensor: torch.Tensor) -> torch.Tensor:
    """A fused expert parameter's own layout to its (experts, out, in) matrices, or back: experts
    stored (experts, in, out) swap their last two dimensions, so applying it twice is the identity."""
    module, _ = fused_parameter(model, parameter)
    return tensor.transpose(1, 2) if module.is_transposed else tensor


def stored_pieces(
    model: nn.Module, parameter: str, stored_shapes: Mapping[str, Sequence[int]], key_for: Callable[[str], str | None]
) -> list[StoredPiece]:
    """Where a checkpoint keeps the rows of fused expert ``parameter``: transformers' own conversion
    (``revert_weight_conversion``, which ``save_pretrained`` runs) applied to a probe that numbers
    the rows and holds one input column, so it is small for any model. ``model`` may be on the meta
    device; ``key_for`` maps a model-side name to the checkpoint's key (None when absent)."""
    module, fused = fused_parameter(model, parameter)
    experts, rows, columns = fused.shape
    outputs = columns if module.is_transposed else rows
    numbered = torch.arange(experts * outputs)
    probe = numbered.reshape(experts, 1, outputs) if module.is_transposed else numbered.reshape(experts, outputs, 1)
    pieces = []
    for name, piece in revert_weight_conversion(model, {parameter: probe}).items():
        key = key_for(name)
        if key is None:
            raise ConversionError(f"the checkpoint has no tensor {name}, where transformers stores rows of {parameter}")
        shape = tuple(stored_shapes[key])
        inputs = [d for d, (size, full) in enumerate(zip(piece.shape, shape)) if size == 1 and full != 1]
        if len(shape) != piece.dim() or len(inputs) != 1:
            raise ConversionError(f"{key} of shape {list(shape)} does not hold rows of {parameter} as expected")
        pieces.append(StoredPiece(key, shape, inputs[0], piece.movedim(inputs[0], -1).reshape(-1)))
    return pieces


def gather_fused(
    pieces: Sequence[StoredPiece], read: Callable[[str], torch.Tensor], shape: Sequence[int]
) -> torch.Tensor:
    """The (experts, out, in) matrices of a fused parameter from its stored pieces, one read each."""
    experts, outputs, inputs = shape
    fused: torch.Tensor | None = None
    for piece in pieces:
        stored = read(piece.key)
        if fused is None:
            fused = torch.zeros(experts * outputs, inputs, dtype=stored.dtype)
        fused[piece.rows] = stored.movedim(piece.input_dim, -1).reshape(-1, inputs)
    return fused.reshape(experts, outputs, inputs)


def scatter_fused(matrices: torch.Tensor, pieces: Sequence[StoredPiece]) -> dict[str, torch.Tensor]:
    """The stored tensors of (experts, out, in) ``matrices``, in the checkpoint's layout: ``gather_fused`` inverted."""
    rows = matrices.reshape(-1, matrices.shape[-1])
    stored = {}
    for piece in pieces:
        kept = [size for d, size in enumerate(piece.shape) if d != piece.input_dim]
        stored[piece.key] = rows[piece.rows].reshape(*kept, -1).movedim(-1, piece.input_dim).contiguous()
    return stored


__all__ = [
    "ConversionError",
    "StoredPiece",
    "fused_parameter",
    "gather_fused",
    "is_fused_expert",
    "matrices_shape",
    "scatter_fused",
    "stored_names",
    "stored_pieces",
    "swap_layout",
]
