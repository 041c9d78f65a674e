"""Calibration statistics of one linear layer's inputs: sums over tokens, accumulated in fp64.

Scores read the per-channel squared norms; SparseGPT reads the Hessian ``X^T X``. Both are sums
over calibration tokens, which is what lets later stages all-reduce them across processes.

Why fp64: the fp32 rounding of a sum depends on the order of its terms. One process adds windows
0, 1, 2, ... in turn; two processes add the even and the odd windows apart and then each other.
Summed in fp32 that moved the channel norms by an ulp, enough to change 4,370 EGGS 2:4 mask
entries of the default model from block 24 on between 1 and 2 processes (16 x 256 calibration
tokens; ``benchmarks/results/determinism.md``). Summed in fp64 and rounded to fp32 once, when
first read, a change of order moves the sum by about 1e-16 relative, which changes the rounded
fp32 value only when the sum lies that close to an fp32 rounding boundary (about once in 10^8
entries): the readers see the same fp32 values however the windows are split over processes, in
the dtype they always had.

What each window adds stays fp32, as before: a window's squares summed over its tokens and its
``X^T X`` product. They depend only on the window, so any split of the windows over processes
leaves them unchanged, and not on the thread count: torch reduces each column of a CPU sum in one
thread, and MKL's fp32 GEMM gave the same bits at 1 to 16 threads for products of 12 rows or more
(full products at widths 32 to 14336, and the row slices used here), though not for some of 5 to
11 rows. Wide layers add the product in equal row slices of at most ``_PRODUCT_ELEMENTS``, so
none is thin and the temporary stays at 16 MB. An fp64 GEMM would not depend even on that, but
costs 1.7-2.5x per window on CPU and runs at 1/32 to 1/64 of fp32 speed on most GPUs, while
SparseGPT's own Cholesky factor (MKL) changes with the thread count anyway.

The cost is the accumulator's memory while a block is calibrated, twice the fp32 one (1.6 GB
instead of 0.8 GB for a 14336-wide Hessian), freed when it is rounded; time and memory are
measured in ``benchmarks/determinism.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Largest fp32 temporary of one window's X^T X, in elements (16 MB): wider layers add it in equal row slices.
_PRODUCT_ELEMENTS = 2**22


@dataclass
class LayerStats:
    """Sums over calibration tokens of one layer's input ``X`` (tokens x in).

    ``sq_norm`` (in,) is ``sum_t X_tj^2`` and ``hessian`` (in, in) is ``X^T X`` (None unless asked
    for), both fp32. Reading one rounds its fp64 sum once and frees it; nothing can be added after.

    With ``with_drift`` each batch comes with the same tokens' inputs inside the dense model,
    ``X_dense``, and ``drift`` (in, in) is ``X^T (X_dense - X)``: how far the dense model's inputs
    lie from the pruned model's, as far as the pruned inputs can see it. The difference is summed,
    not ``X^T X_dense``, so that it is exactly zero where the two streams agree (the first block).
    """

    in_features: int
    with_hessian: bool = False
    tokens: int = 0
    with_drift: bool = False

    def __post_init__(self) -> None:
        square = (self.in_features, self.in_features)
        self._sq_sum: torch.Tensor | None = torch.zeros(self.in_features, dtype=torch.float64)
        self._hessian_sum: torch.Tensor | None = torch.zeros(square, dtype=torch.float64) if self.with_hessian else None
        self._drift_sum: torch.Tensor | None = torch.zeros(square, dtype=torch.float64) if self.with_drift else None
        self._sq_norm: torch.Tensor | None = None
        self._hessian: torch.Tensor | None = None
        self._drift: torch.Tensor | None = None

    def sums(self) -> list[torch.Tensor]:
        """The fp64 accumulators, to be reduced in place across processes before anything reads them."""
        read = (
            self._sq_sum is None
            or (self.with_hessian and self._hessian_sum is None)
            or (self.with_drift and self._drift_sum is None)
        )
        if read:
            raise RuntimeError("these statistics were already read; their sums are rounded to fp32 and gone")
        return [value for value in (self._sq_sum, self._hessian_sum, self._drift_sum) if value is not None]

    def add(self, inputs: torch.Tensor, dense_inputs: torch.Tensor | None = None) -> None:
        """Accumulate a batch of layer inputs of shape (..., in), with the same tokens' inputs in the
        dense model when the statistics track the drift."""
        if self.with_drift != (dense_inputs is not None):
            raise ValueError("drift statistics need the dense inputs beside every batch, and only they take them")
        self.sums()
        x = inputs.reshape(-1, self.in_features).to(device=self._sq_sum.device, dtype=torch.float32)
        self.tokens += x.shape[0]
        self._sq_sum += (x * x).sum(dim=0)
        if self._hessian_sum is not None:
            _add_product(self._hessian_sum, x, x)
        if self._drift_sum is not None:
            dense = dense_inputs.reshape(-1, self.in_features).to(device=x.device, dtype=torch.float32)
            if dense.shape != x.shape:
                raise ValueError(f"dense inputs of shape {tuple(dense.shape)} do not pair with {tuple(x.shape)}")
            _add_product(self._drift_sum, x, dense - x)

    def to(self, device: torch.device | str) -> "LayerStats":
        for name in ("_sq_sum", "_hessian_sum", "_drift_sum", "_sq_norm", "_hessian", "_drift"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    @property
    def sq_norm(self) -> torch.Tensor:
        if self._sq_norm is None:
            self._sq_norm, self._sq_sum = self._sq_sum.float(), None
        return self._sq_norm

    @sq_norm.setter
    def sq_norm(self, value: torch.Tensor) -> None:
        self._sq_norm, self._sq_sum = value, None

    @property
    def hessian(self) -> torch.Tensor | None:
        if self._hessian is None and self._hessian_sum is not None:
            self._hessian, self._hessian_sum = self._hessian_sum.float(), None
        return self._hessian

    @hessian.setter
    def hessian(self, value: torch.Tensor | None) -> None:
        self._hessian, self._hessian_sum = value, None

    @property
    def drift(self) -> torch.Tensor | None:
        if self._drift is None and self._drift_sum is not None:
            self._drift, self._drift_sum = self._drift_sum.float(), None
        return self._drift

    @drift.setter
    def drift(self, value: torch.Tensor | None) -> None:
        self._drift, self._drift_sum = value, None

    @property
    def channel_norm(self) -> torch.Tensor:
        """``||X_j||``: the L2 norm of each input channel over all calibration tokens."""
        return self.sq_norm.sqrt()


def _add_product(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``total += left^T right`` in equal row slices of at most ``_PRODUCT_ELEMENTS`` (see above)."""
    width = total.shape[0]
    slices = -(-width * width // _PRODUCT_ELEMENTS)
    rows = -(-width // slices)
    for start in range(0, width, rows):
        total[start : start + rows] += left[:, start : start + rows].T @ right


__all__ = ["LayerStats"]
