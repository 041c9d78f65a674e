"""The primitives every block walk shares: how a block is called, loaded, run and measured.

A leaf of :mod:`eggs_ptp.walk`: the capture, the pruning walk, the survey, resume and the
distributed reductions all build on it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import nn

from eggs_ptp.models.layers import Prunable
from eggs_ptp.quant import Grid
from eggs_ptp.walk.activations import ActivationStore


class NonFiniteActivationError(RuntimeError):
    """NaN or Inf appeared in a block's activations or a layer's pruned weights."""


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]  # (out, in)
    transposed: bool  # stored as (in, out), like GPT-2's Conv1D
    kept_fraction: float | None = None
    recon_error: float | None = None
    seconds: float | None = None
    skipped: str | None = None  # why the layer was left dense
    settings: dict[str, Any] | None = None  # choices the method made for this layer alone
    permutation: dict[str, Any] | None = None  # input-channel permutation, or why there was none
    pattern: str | None = None  # the pattern this layer was pruned to (blocks may differ, e.g. OWL)
    expert: dict[str, Any] | None = None  # an expert's matrix: its fused parameter, index and calibration tokens
    grid: Grid | None = field(default=None, repr=False, compare=False)  # tensors: written beside, not in, the record

    def to_dict(self) -> dict[str, Any]:
        record = asdict(replace(self, grid=None))
        del record["grid"]
        return record


@dataclass
class BlockCall:
    """Everything a block is called with apart from its hidden states."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    hidden_in_kwargs: bool = False

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_in_kwargs:
            output = block(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            output = block(hidden, *self.args, **self.kwargs)
        return output[0] if isinstance(output, (tuple, list)) else output

    def to(self, device: torch.device) -> "BlockCall":
        """The same call with every tensor argument on ``device`` (blocks spread over devices)."""
        return BlockCall(_move(self.args, device), _move(self.kwargs, device), self.hidden_in_kwargs)


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_move(item, device) for item in value)
    if isinstance(value, list):
        return [_move(item, device) for item in value]
    if isinstance(value, dict):
        return {key: _move(item, device) for key, item in value.items()}
    return value


def non_finite_kind(tensor: torch.Tensor) -> str | None:
    if bool(torch.isfinite(tensor).all()):
        return None
    return "NaN" if bool(torch.isnan(tensor).any()) else "Inf"


class BlockAccess(Protocol):
    """Brings a block's weights into memory before the walk touches it and drops them after."""

    def load(self, index: int) -> None: ...

    def unload(self, index: int) -> None: ...

    def captured(self) -> None:
        """The block inputs are captured: nothing outside the blocks is needed any more."""


class InMemory:
    """Every block is already in memory."""

    def load(self, index: int) -> None:
        pass

    def unload(self, index: int) -> None:
        pass

    def captured(self) -> None:
        pass


def block_placement(block: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and compute dtype of a block: those of its first floating-point parameter."""
    parameter = next(p for p in block.parameters() if p.is_floating_point())
    return parameter.device, parameter.dtype


def run_block(
    block: nn.Module,
    call: BlockCall,
    hidden: Iterable[torch.Tensor],
    index: int,
    stage: str,
    out: ActivationStore | None = None,
) -> ActivationStore | None:
    """Run ``block`` on each window, one at a time on the block's device and in its dtype, and
    append the outputs to ``out`` when given."""
    device, dtype = block_placement(block)
    call = call.to(device)
    for state in hidden:
        output = call(block, state.to(device=device, dtype=dtype))
        kind = non_finite_kind(output)
        if kind:
            raise NonFiniteActivationError(
                f"{kind} in the activations of block {index} ({type(block).__name__}) during the "
                f"{stage} pass; check this block's weights, or load in float32 if the model is bf16/fp16"
            )
        if out is not None:
            out.append(output)
    return out


class ErrorMeter:
    """Accumulates ``||(W - W')X||^2`` and ``||WX||^2`` from a layer's forward in the pruned block."""

    def __init__(self, layer: Prunable, dense: torch.Tensor) -> None:
        self.dense = dense  # (out, in), in the model's dtype
        self.bias = layer.bias
        self.diff = 0.0
        self.ref = 0.0

    def __call__(self, inputs: torch.Tensor, output: torch.Tensor) -> None:
        x = inputs.reshape(-1, self.dense.shape[1]).float()
        reference = x @ self.dense.float().T  # (tokens, out)
        actual = output.reshape(-1, self.dense.shape[0]).float()
        if self.bias is not None:
            actual = actual - self.bias.float()
        self.diff += float((actual - reference).pow(2).sum())
        self.ref += float(reference.pow(2).sum())

    @property
    def relative_error(self) -> float:
        return (self.diff / self.ref) ** 0.5 if self.ref > 0 else 0.0


__all__ = [
    "BlockAccess",
    "BlockCall",
    "ErrorMeter",
    "InMemory",
    "LayerReport",
    "NonFiniteActivationError",
    "block_placement",
    "non_finite_kind",
    "run_block",
]
