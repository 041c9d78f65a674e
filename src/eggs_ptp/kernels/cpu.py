"""Call the compiled N:M kernel on torch tensors through ctypes, or say that it is unavailable.

The library is loaded once per process (built first if needed, see :mod:`eggs_ptp.kernels.build`).
When it cannot be built, :func:`library` warns once, in one line, and returns None; callers then use
the pure-torch path. Pointers are passed straight from the tensors, so no copies are made beyond the
fp32 input the kernel reads.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from typing import Any

import torch

from eggs_ptp.kernels.build import KernelBuildError, build

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
ISAS = {"auto": 0, "generic": 1, "avx2": 2, "avx512": 3}
_ISA_NAMES = {code: name for name, code in ISAS.items()}
_ERRORS = {
    -1: "this CPU cannot run the requested code path",
    -2: "unsupported weight dtype",
    -3: "a row of the bitmask does not mark exactly as many columns as it has stored values",
}

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (after one warning) when it cannot be built."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (KernelBuildError, OSError) as error:
        warnings.warn(
            f"eggs-ptp: CPU sparse kernel unavailable ({error}); using the slower pure-torch path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    lib.eggs_nm_linear.argtypes = [_P, _I64, _P, _INT, _P, _I64, _I64, _I64, _P, _P, _INT, _INT]
    lib.eggs_nm_decompress.argtypes = [_P, _INT, _P, _I64, _I64, _I64, _P, _INT, _INT]
    lib.eggs_nm_isa.argtypes = [_INT]
    return lib


def kernel_info() -> dict[str, Any]:
    """Whether the kernel is loaded, the code path it runs here (auto), and which paths this CPU has."""
    lib = library()
    if lib is None:
        return {"available": False, "isa": "torch", "openmp": False, "isas": []}
    isas = [name for name, code in ISAS.items() if code and lib.eggs_nm_isa(code) > 0]
    return {
        "available": True,
        "isa": _ISA_NAMES[lib.eggs_nm_isa(0)],
        "openmp": bool(lib.eggs_nm_openmp()),
        "isas": isas,
    }


def _check(values: torch.Tensor, bitmask: torch.Tensor, cols: int) -> None:
    """Dtypes, devices, contiguity and shapes the C code relies on (it only checks that each row's
    mask marks as many columns as the row has values)."""
    if values.dtype not in DTYPE_CODES:
        raise TypeError(f"the CPU kernel takes float32 or bfloat16 values, got {values.dtype}")
    if values.device.type != "cpu" or bitmask.device.type != "cpu":
        raise ValueError("the CPU kernel needs CPU tensors; move the layer with .cpu() or use the CUDA path")
    if values.dim() != 2 or not values.is_contiguous():
        raise ValueError(f"values must be a contiguous (out, kept) tensor, got shape {list(values.shape)}")
    if (
        bitmask.dtype != torch.uint8
        or not bitmask.is_contiguous()
        or list(bitmask.shape) != [values.shape[0], -(-cols // 8)]
    ):
        raise ValueError(
            f"bitmask must be contiguous uint8 [{values.shape[0]}, {-(-cols // 8)}], "
            f"got {bitmask.dtype} {list(bitmask.shape)}"
        )


def _isa_code(isa: str) -> int:
    if isa not in ISAS:
        raise ValueError(f"unknown code path {isa!r}; choose one of {', '.join(ISAS)}")
    return ISAS[isa]


def _raise_on(code: int, isa: str) -> None:
    if code < 0:
        raise ValueError(f"CPU kernel ({isa}): {_ERRORS.get(code, f'error {code}')}")


def _library() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise KernelBuildError("the CPU kernel is not available; see the warning above")
    return lib


class CompactLayer:
    """One compact layer's kernel arguments, checked once, for many calls (decode calls each layer
    once per token, so per-call Python work is kept to a pointer or two).

    Holds references to the tensors it points into; rebuild it when they are replaced or moved.
    """

    def __init__(
        self, values: torch.Tensor, bitmask: torch.Tensor, cols: int, bias: torch.Tensor | None = None
    ) -> None:
        self._kernel = _library().eggs_nm_linear
        _check(values, bitmask, cols)
        if bias is not None and list(bias.shape) != [values.shape[0]]:
            raise ValueError(f"bias must have shape [{values.shape[0]}], got {list(bias.shape)}")
        self.values, self.bitmask, self.cols, self.rows = values, bitmask, cols, values.shape[0]
        self.bias = None if bias is None else bias.to(torch.float32).contiguous()
        # The constant middle of eggs_nm_linear's arguments: values, dtype, bitmask, rows, cols, kept, bias.
        self._arguments = (
            values.data_ptr(),
            DTYPE_CODES[values.dtype],
            bitmask.data_ptr(),
            self.rows,
            cols,
            values.shape[1],
            None if self.bias is None else self.bias.data_ptr(),
        )

    def linear(self, x: torch.Tensor, isa: str = "auto", threads: int | None = None) -> torch.Tensor:
        """(..., cols) inputs, any float dtype (read as fp32) -> (..., out) fp32."""
        if x.shape[-1] != self.cols or x.device.type != "cpu":
            raise ValueError(f"x must be a CPU tensor (..., {self.cols}), got {x.device.type} {list(x.shape)}")
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.to(torch.float32).contiguous()
        out = torch.empty(x.shape[:-1] + (self.rows,), dtype=torch.float32)
        code = self._kernel(
            x.data_ptr(),
            x.numel() // self.cols,
            *self._arguments,
            out.data_ptr(),
            threads or torch.get_num_threads(),
            _isa_code(isa),
        )
        if code < 0:
            _raise_on(code, isa)
        return out


def nm_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    bitmask: torch.Tensor,
    cols: int,
    bias: torch.Tensor | None = None,
    isa: str = "auto",
    threads: int | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` in fp32 from the compact form of W, on ``threads`` (default torch's) threads.

    Args:
        x: (..., cols) inputs, any float dtype (read as fp32).
        values: (out, kept) stored weights, fp32 or bf16; ``bitmask``: (out, ceil(cols/8)) uint8,
            one bit per column, least significant first.
        bias: (out,) or None. isa: "auto" or a code path this CPU has ("avx512", "avx2", "generic").
    Returns:
        (..., out) fp32.
    """
    return CompactLayer(values, bitmask, cols, bias).linear(x, isa, threads)


def nm_decompress(
    values: torch.Tensor, bitmask: torch.Tensor, cols: int, isa: str = "auto", threads: int | None = None
) -> torch.Tensor:
    """The dense (out, cols) weight in the values' dtype, zeros where nothing is stored."""
    lib = _library()
    _check(values, bitmask, cols)
    dense = torch.empty((values.shape[0], cols), dtype=values.dtype)
    code = lib.eggs_nm_decompress(
        values.data_ptr(),
        DTYPE_CODES[values.dtype],
        bitmask.data_ptr(),
        values.shape[0],
        cols,
        values.shape[1],
        dense.data_ptr(),
        threads or torch.get_num_threads(),
        _isa_code(isa),
    )
    _raise_on(code, isa)
    return dense


__all__ = ["DTYPE_CODES", "ISAS", "CompactLayer", "kernel_info", "library", "nm_decompress", "nm_linear"]
