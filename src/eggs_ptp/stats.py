"""Calibration statistics of one linear layer's inputs, accumulated over tokens in fp32.

Scores read the per-channel squared norms; SparseGPT reads the Hessian ``X^T X``. Both are sums
over calibration tokens, which is what lets later stages all-reduce them across processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerStats:
    """Sums over calibration tokens of one layer's input ``X`` (tokens x in)."""

    in_features: int
    with_hessian: bool = False
    tokens: int = 0
    sq_norm: torch.Tensor = field(init=False)  # (in,) sum_t X_tj^2
    hessian: torch.Tensor | None = field(init=False)  # (in, in) X^T X, only when asked for

    def __post_init__(self) -> None:
        self.sq_norm = torch.zeros(self.in_features, dtype=torch.float32)
        self.hessian = (
            torch.zeros(self.in_features, self.in_features, dtype=torch.float32) if self.with_hessian else None
        )

    def add(self, inputs: torch.Tensor) -> None:
        """Accumulate a batch of layer inputs of shape (..., in)."""
        x = inputs.reshape(-1, self.in_features).to(device=self.sq_norm.device, dtype=torch.float32)
        self.tokens += x.shape[0]
        self.sq_norm += (x * x).sum(dim=0)
        if self.hessian is not None:
            self.hessian.addmm_(x.T, x)

    def to(self, device: torch.device | str) -> "LayerStats":
        self.sq_norm = self.sq_norm.to(device)
        if self.hessian is not None:
            self.hessian = self.hessian.to(device)
        return self

    @property
    def channel_norm(self) -> torch.Tensor:
        """``||X_j||``: the L2 norm of each input channel over all calibration tokens."""
        return self.sq_norm.sqrt()


__all__ = ["LayerStats"]
