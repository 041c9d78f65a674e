"""The CUDA path for 2:4 layers: PyTorch's semi-structured sparse matmul (a prototype API).

``torch.sparse.to_sparse_semi_structured`` is all that is left of 2:4 acceleration in the PyTorch
stack: CUDA only, fp16/bf16 (and int8), forward ``linear`` only, and each weight dimension must be a
multiple of the backend's minimum tile (cuSPARSELt 16 x 16, CUTLASS 32 x 64 for 16-bit types).
The weight is padded with zero rows and columns up to that tile (zeros keep every group 2:4), the
input with zero columns, and the output is cut back. Published numbers put it 1.1-1.4x faster
than dense only for compute-bound shapes, and slower for a few tokens (the input is padded to 8
rows), so :class:`eggs_ptp.kernels.SparseNMLinear` only uses it from :data:`SPARSE_FROM_TOKENS`
tokens on; ``benchmarks/gpu_check.sh`` measures where it actually starts to pay on a given GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # only torch at run time, so benchmarks/gpu_check.py can load this file alone
    from eggs_ptp.pattern import Pattern

# Tokens per call from which the semi-structured matmul replaces dense F.linear on CUDA. Not
# measured here (no GPU on the development machine); set from PyTorch's published results, where
# 2:4 wins only on compute-bound products. Run benchmarks/gpu_check.sh and override per module
# (SparseNMLinear.sparse_from_tokens) with the crossover it prints.
SPARSE_FROM_TOKENS = 128
DTYPES = (torch.float16, torch.bfloat16)


def semi_structured_available() -> bool:
    return torch.cuda.is_available() and hasattr(torch.sparse, "to_sparse_semi_structured")


def supports(pattern: Pattern, dtype: torch.dtype) -> bool:
    """Whether a layer of this pattern and dtype can use the semi-structured path at all."""
    return (pattern.n, pattern.m) == (2, 4) and dtype in DTYPES and semi_structured_available()


def _backend() -> type:
    """cuSPARSELt where this torch build has it, else CUTLASS, chosen per call instead of through
    the process-wide ``SparseSemiStructuredTensor._FORCE_CUTLASS`` switch."""
    if torch.backends.cusparselt.is_available():
        return torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    return torch.sparse.SparseSemiStructuredTensorCUTLASS


class SemiStructuredWeight:
    """A dense 2:4 (out, in) CUDA weight, padded to the backend's tile and compressed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if not weight.is_cuda or weight.dtype not in DTYPES:
            raise ValueError(
                f"semi-structured sparsity needs a CUDA fp16/bf16 weight, got {weight.device} {weight.dtype}"
            )
        backend = _backend()
        tile = backend._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
        self.out_features, self.in_features = weight.shape
        self.pad_rows, self.pad_cols = (
            -self.out_features % tile.sparse_min_rows,
            -self.in_features % tile.sparse_min_cols,
        )
        self.weight = backend.from_dense(F.pad(weight, (0, self.pad_cols, 0, self.pad_rows)).contiguous())
        self.bias = None if bias is None else F.pad(bias, (0, self.pad_rows))

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + bias`` for x (..., in)."""
        flat = x.reshape(-1, self.in_features).contiguous()
        if self.pad_cols:
            flat = F.pad(flat, (0, self.pad_cols))
        out = F.linear(flat, self.weight, self.bias)[:, : self.out_features]
        return out.reshape(*x.shape[:-1], self.out_features)


__all__ = ["DTYPES", "SPARSE_FROM_TOKENS", "SemiStructuredWeight", "semi_structured_available", "supports"]
