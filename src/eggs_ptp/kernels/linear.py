"""``SparseNMLinear``: a linear layer that keeps only the compact N:M form of its weight,
``QuantSparseNMLinear``: the same with its kept values as int8 or int4 integers on a grid (or every
value, for a quantized output head), and ``QuantEmbedding``: an input embedding tied to such a head.

On CPU, calls with at most ``dense_above_tokens`` tokens (decode) run the compiled kernel on the
compact form, which reads about N/M of the dense bytes; larger calls (prefill) rebuild the dense
weight for the call and use ``F.linear``, which wins once the product is compute-bound. Without a
compiler, both rebuild the weight in torch (one warning). On CUDA, 2:4 fp16/bf16 layers use the
semi-structured sparse matmul from ``sparse_from_tokens`` tokens on, and a cached dense copy
below that (see :mod:`eggs_ptp.kernels.gpu`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from eggs_ptp.formats.codec import check_bitmask, check_compact, compress, pack_bits, scatter_stored, unpack_bits
from eggs_ptp.formats.compact import check_qvalues, dequantize_compact, quantize_compact, unpack_qvalues
from eggs_ptp.kernels import gpu
from eggs_ptp.kernels.cpu import DTYPE_CODES, CompactLayer, QuantCompactLayer, library, nm_decompress, nm_qdecompress
from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import SCALE_DTYPE, Grid

# Tokens per call up to which the CPU kernel runs; above it, decompressing the weight for the call
# and running dense F.linear (MKL / oneDNN) is faster. Measured on SmolLM2-135M's layer shapes on
# the 2-core development machine (AMD Zen 5, AVX-512): benchmarks/results/kernel_threshold.md, made by
# benchmarks/kernel_threshold.py. Other dtypes (fp16) have no kernel and always take the dense path.
DENSE_ABOVE_TOKENS = {torch.float32: 32, torch.bfloat16: 16}
# The same for quantized layers, by stored bits and the dtype the layer computes in (same benchmark).
QUANT_DENSE_ABOVE_TOKENS = {
    (8, torch.float32): 16,
    (8, torch.bfloat16): 16,
    (4, torch.float32): 24,
    (4, torch.bfloat16): 16,
}


class SparseNMLinear(nn.Module):
    """``y = x @ W.T + bias`` computed from the compact N:M form of W (out, in).

    Inference only: the kernel has no backward, so a call that needs gradients takes the dense path.
    For integer values on a grid, see :class:`QuantSparseNMLinear`.

    Args:
        values: (out, in * N / M) stored weights, row-major, fp32 or bf16 for the CPU kernel.
        bitmask: (out, ceil(in / 8)) uint8, bit j of byte k set when column 8k + j is stored;
            checked once here to mark exactly N of every M columns.
        in_features: in.
        pattern: the N:M pattern, e.g. ``"2:4"``.
        bias: (out,) or None.
        dense_above_tokens: CPU: tokens per call above which the dense path runs
            [default: :data:`DENSE_ABOVE_TOKENS` for the dtype].
        sparse_from_tokens: CUDA: tokens per call from which 2:4 semi-structured runs
            [default: :data:`eggs_ptp.kernels.gpu.SPARSE_FROM_TOKENS`].
    """

    def __init__(
        self,
        values: torch.Tensor,
        bitmask: torch.Tensor,
        in_features: int,
        pattern: Pattern | str,
        bias: torch.Tensor | None = None,
        dense_above_tokens: int | None = None,
        sparse_from_tokens: int | None = None,
    ) -> None:
        super().__init__()
        pattern = Pattern.parse(pattern) if isinstance(pattern, str) else pattern
        if not values.is_floating_point():
            raise TypeError(f"values must be a floating-point tensor, got {values.dtype}")
        out_features = values.shape[0] if values.dim() == 2 else -1
        check_compact(values, bitmask, (out_features, in_features), pattern)
        if bias is not None and list(bias.shape) != [out_features]:
            raise ValueError(f"bias must have shape [{out_features}], got {list(bias.shape)}")
        self.in_features, self.out_features, self.pattern = in_features, out_features, pattern
        self.dense_above_tokens, self.sparse_from_tokens = dense_above_tokens, sparse_from_tokens
        self.register_buffer("values", values.contiguous())
        self.register_buffer("bitmask", bitmask.contiguous())
        self.register_buffer("bias", None if bias is None else bias.contiguous())
        self._forget()

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, pattern: Pattern | str, bias: torch.Tensor | None = None, **options: Any
    ) -> SparseNMLinear:
        """From a dense-with-zeros (out, in) weight; raises ValueError if it breaks ``pattern``."""
        pattern = Pattern.parse(pattern) if isinstance(pattern, str) else pattern
        values, bitmask = compress(weight.detach(), pattern)
        return cls(values, bitmask, weight.shape[1], pattern, None if bias is None else bias.detach(), **options)

    @classmethod
    def from_linear(cls, module: nn.Module, pattern: Pattern | str, **options: Any) -> SparseNMLinear:
        """From an ``nn.Linear`` or GPT-2 ``Conv1D`` (weight stored (in, out)) pruned to ``pattern``."""
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")
        weight = module.weight.T if isinstance(module, Conv1D) else module.weight
        return cls.from_dense(weight, pattern, module.bias, **options)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the layer computes in outside the kernel, as an ``nn.Linear``'s weight's."""
        return self.values.dtype

    def path(self, tokens: int) -> str:
        """Which computation a call with ``tokens`` tokens takes: "kernel", "dense", "torch"
        (no compiled kernel: the weight is rebuilt in torch) or "semi-structured" (CUDA)."""
        if self.bitmask.is_cuda:
            limit = gpu.SPARSE_FROM_TOKENS if self.sparse_from_tokens is None else self.sparse_from_tokens
            sparse = self.pattern is not None and gpu.supports(self.pattern, self.dtype)
            return "semi-structured" if tokens >= limit and sparse else "dense"
        if not self._has_kernel():
            return "torch"
        return "kernel" if tokens <= self._kernel_limit(self.dtype) else "dense"

    def _kernel_limit(self, dtype: torch.dtype) -> int:
        return DENSE_ABOVE_TOKENS.get(dtype, -1) if self.dense_above_tokens is None else self.dense_above_tokens

    def _has_kernel(self) -> bool:
        """Whether the compiled CPU kernel can compute this layer where it is."""
        return not self.bitmask.is_cuda and self.values.dtype in DTYPE_CODES and library() is not None

    def _kernel_layer(self) -> CompactLayer:
        return CompactLayer(self.values, self.bitmask, self.in_features, self.bias)

    def _rebuild(self) -> torch.Tensor:
        """The (out, in) weight with zeros in :attr:`dtype`, from the buffers."""
        if self._has_kernel():
            return nm_decompress(self.values, self.bitmask, self.in_features)
        return scatter_stored(self.values, unpack_bits(self.bitmask, self.in_features))

    def _forget(self) -> None:
        """Drop what is derived from the buffers; it is rebuilt on the next call."""
        self._prepared = False
        self._layer: CompactLayer | QuantCompactLayer | None = None  # CPU: the kernel's checked arguments
        self._kernel_dtype: torch.dtype | None = None  # CPU: the dtype whose threshold the kernel runs under
        self._dense: torch.Tensor | None = None  # CUDA only: the dense path's weight
        self._semi: gpu.SemiStructuredWeight | None = None  # CUDA only

    def _prepare(self) -> CompactLayer | QuantCompactLayer | None:
        """Check and keep the kernel's arguments once (None where the kernel cannot run)."""
        if self._has_kernel():
            self._layer = self._kernel_layer()
        self._kernel_dtype = self.dtype
        self._prepared = True
        return self._layer

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight with zeros: rebuilt per call on CPU, cached on CUDA."""
        if not self.bitmask.is_cuda:
            return self._rebuild()
        if self._dense is None:
            self._dense = self._rebuild()
        return self._dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features, got shape {list(x.shape)}")
        tokens = x.numel() // self.in_features
        # Decode calls every layer once per token: this branch touches no buffer and no registry.
        layer = self._layer if self._prepared else self._prepare()
        if (
            layer is not None
            and tokens <= self._kernel_limit(self._kernel_dtype)
            and not (torch.is_grad_enabled() and x.requires_grad)
        ):
            out = layer.linear(x)
            return out if out.dtype == x.dtype else out.to(x.dtype)
        if self.path(tokens) == "semi-structured":
            if self._semi is None:
                self._semi = gpu.SemiStructuredWeight(self.dense_weight(), self.bias)
            return self._semi.linear(x)
        return F.linear(x, self.dense_weight(), self.bias)

    _BUFFERS = ("values", "bitmask", "bias")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._BUFFERS:  # a buffer replaced: the prepared pointers are stale
            self.__dict__["_prepared"] = False
        super().__setattr__(name, value)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> SparseNMLinear:
        # .to(), .cuda(), .half() ... move or convert the buffers; everything derived is rebuilt.
        self._forget()
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy / pickle: the prepared kernel arguments hold raw pointers into these buffers.
        return {**super().__getstate__(), "_prepared": False, "_layer": None, "_dense": None, "_semi": None}

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        # load_state_dict(assign=True) replaces the buffers instead of copying into them.
        self._forget()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        pattern = "dense" if self.pattern is None else f"{self.pattern.n}:{self.pattern.m}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, pattern={pattern}, "
            f"bias={self.bias is not None}, dtype={str(self.dtype).removeprefix('torch.')}"
        )


class QuantSparseNMLinear(SparseNMLinear):
    """``y = x @ W.T + bias`` with W's kept values stored as integers q on a grid: ``w = (q - z) * s``
    in fp32 (see :mod:`eggs_ptp.quant.grid`), computed by the CPU kernel from the integers, or from
    the dense weight rebuilt in :attr:`dtype` (bit for bit the weight ``load_compact`` gives).

    A subclass rather than an option of :class:`SparseNMLinear`: its buffers are others (``qvalues``,
    ``scales``, ``zeros`` in place of ``values``), so the float layer's state dict and checks stay as
    they were, while the paths, thresholds, moves and copies are shared, and ``isinstance(m,
    SparseNMLinear)`` still finds every compact layer. A dtype conversion (``.to(torch.bfloat16)``,
    ``.half()``) changes :attr:`dtype` and the bias; the float16 scales keep their bits.

    Args:
        qvalues: the stored integers, row-major: int8 (out, kept) for int8; for int4 uint8
            (out, ceil(kept / 2)), value k of a row in the low nibble of byte k // 2 when k is even,
            the high nibble when odd (the compact format's layout).
        bitmask, in_features, pattern: as for :class:`SparseNMLinear`; ``pattern`` None stores every
            weight (a quantized dense layer, such as an output head): ``bitmask`` is then None, and
            the kernel reads the values in column order.
        grid: the layer's :class:`~eggs_ptp.quant.Grid`: its scheme, float16 scales (out, groups) and
            uint8 zero points (asymmetric) or None.
        bias: (out,) or None, converted to ``dtype``.
        dtype: the floating-point dtype of the dense path and the bias [default: float32].
        dense_above_tokens, sparse_from_tokens: as for :class:`SparseNMLinear`
            [default: :data:`QUANT_DENSE_ABOVE_TOKENS` for the bits and ``dtype``].
    """

    _BUFFERS = ("qvalues", "bitmask", "scales", "zeros", "bias")

    def __init__(
        self,
        qvalues: torch.Tensor,
        bitmask: torch.Tensor | None,
        in_features: int,
        pattern: Pattern | str | None,
        grid: Grid,
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        dense_above_tokens: int | None = None,
        sparse_from_tokens: int | None = None,
    ) -> None:
        nn.Module.__init__(self)  # SparseNMLinear.__init__ checks float values, which this layer has none of
        pattern = Pattern.parse(pattern) if isinstance(pattern, str) else pattern
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        out_features = qvalues.shape[0] if qvalues.dim() == 2 else -1
        if pattern is None:
            if bitmask is not None:
                raise ValueError("a layer that stores every weight (pattern None) takes no bitmask")
            bitmask, kept = pack_bits(torch.ones(max(out_features, 0), in_features, dtype=torch.bool)), in_features
        else:
            check_bitmask(bitmask, (out_features, in_features), pattern)
            kept = in_features // pattern.m * pattern.n
        check_qvalues(qvalues, grid.scheme.bits, (out_features, kept))
        scales = [out_features, grid.scheme.groups(in_features)]
        if grid.cols != in_features or grid.scales.dtype != SCALE_DTYPE or list(grid.scales.shape) != scales:
            raise ValueError(
                f"the grid must have float16 scales {scales} for {in_features} columns, "
                f"got {grid.scales.dtype} {list(grid.scales.shape)} for {grid.cols}"
            )
        if bias is not None and list(bias.shape) != [out_features]:
            raise ValueError(f"bias must have shape [{out_features}], got {list(bias.shape)}")
        self.in_features, self.out_features, self.pattern = in_features, out_features, pattern
        self.scheme, self.bits, self.group_size = grid.scheme, grid.scheme.bits, grid.scheme.group_size
        self.dense_above_tokens, self.sparse_from_tokens = dense_above_tokens, sparse_from_tokens
        self._dtype = dtype
        self.register_buffer("qvalues", qvalues.contiguous())
        self.register_buffer("bitmask", bitmask.contiguous())
        self.register_buffer("scales", grid.scales.contiguous())
        self.register_buffer("zeros", None if grid.zeros is None else grid.zeros.contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(dtype).contiguous())
        self._forget()

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        pattern: Pattern | str | None,
        bias: torch.Tensor | None = None,
        grid: Grid | None = None,
        **options: Any,
    ) -> QuantSparseNMLinear:
        """From a dense-with-zeros (out, in) weight whose kept values lie on ``grid`` (``pattern`` None:
        every weight is kept), computing in the weight's dtype; raises ValueError if it breaks
        ``pattern`` or leaves the grid."""
        if grid is None:
            raise ValueError("a quantized layer needs the grid its weights lie on (grid=...)")
        pattern = Pattern.parse(pattern) if isinstance(pattern, str) else pattern
        qvalues, bitmask = quantize_compact(weight.detach(), pattern, grid)
        bias = None if bias is None else bias.detach()
        return cls(qvalues, bitmask, weight.shape[1], pattern, grid, bias, **{"dtype": weight.dtype, **options})

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def grid(self) -> Grid:
        """The layer's grid, over its current buffers."""
        return Grid(self.scheme, self.scales, self.zeros, self.in_features)

    def _kernel_limit(self, dtype: torch.dtype) -> int:
        if self.dense_above_tokens is not None:
            return self.dense_above_tokens
        return QUANT_DENSE_ABOVE_TOKENS.get((self.bits, dtype), -1)

    def _has_kernel(self) -> bool:
        return not self.bitmask.is_cuda and library() is not None

    def _kernel_layer(self) -> QuantCompactLayer:
        return QuantCompactLayer(
            self.qvalues, self.bits, self.bitmask, self.in_features, self.scales, self.zeros, self.group_size, self.bias
        )

    def _rebuild(self) -> torch.Tensor:
        if self._has_kernel():
            weight = nm_qdecompress(
                self.qvalues, self.bits, self.bitmask, self.in_features, self.scales, self.zeros, self.group_size
            )
        else:
            weight = dequantize_compact(self.qvalues, self.bitmask, self.pattern, self.grid)
        return weight.to(self._dtype)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> QuantSparseNMLinear:
        # The scales ride through as their bits (int16), which a dtype conversion leaves alone and a
        # device move moves; the dtype the layer computes in follows the conversion instead.
        self._buffers["scales"] = self.scales.view(torch.int16)
        try:
            super()._apply(fn, *args, **kwargs)
        finally:
            self._buffers["scales"] = self._buffers["scales"].view(SCALE_DTYPE)
        self._dtype = fn(torch.empty(0, dtype=self._dtype)).dtype
        return self

    def extra_repr(self) -> str:
        group = "row" if self.group_size is None else self.group_size
        symmetric = "symmetric" if self.scheme.symmetric else "asymmetric"
        return f"{super().extra_repr()}, int{self.bits} {symmetric}, group={group}"


class QuantEmbedding(nn.Module):
    """The input embedding of a model whose output head is tied to it and stored quantized: each
    looked-up row is dequantized from the head's integers, bit for bit the row the dense model holds,
    so the table is held once, as integers. The head is referred to, not registered: it stays the
    head's module in the state dict, and moves with it."""

    def __init__(self, head: QuantSparseNMLinear) -> None:
        if head.pattern is not None:
            raise ValueError("a tied embedding reads an output head that stores every weight (pattern None)")
        super().__init__()
        self.__dict__["_head"] = head
        self.num_embeddings, self.embedding_dim, self.padding_idx = head.out_features, head.in_features, None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head, flat = self._head, ids.reshape(-1)
        grid = Grid(head.scheme, head.scales[flat], None if head.zeros is None else head.zeros[flat], head.in_features)
        rows = grid.dequantize(unpack_qvalues(head.qvalues[flat], head.bits, (flat.numel(), head.in_features)))
        return rows.to(head.dtype).reshape(*ids.shape, head.in_features)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows of the quantized output head"


__all__ = ["DENSE_ABOVE_TOKENS", "QUANT_DENSE_ABOVE_TOKENS", "QuantEmbedding", "QuantSparseNMLinear", "SparseNMLinear"]
