"""Call the compiled N:M kernel on torch tensors through ctypes, or say that it is unavailable.

Two layer kinds: float kept values (fp32 / bf16: :class:`CompactLayer`, :func:`nm_linear`) and
quantized ones (int8 / int4 with per-group fp16 scales: :class:`QuantCompactLayer`,
:func:`nm_qlinear`), both with the same bitmask. The library is loaded once per process (built
first if needed, see :mod:`eggs_ptp.kernels.build`).
When it cannot be built, :func:`library` warns once, in one line, and returns None; callers then use
the pure-torch path. Pointers are passed straight from the tensors, so no copies are made beyond the
fp32 input the kernel reads. ``$EGGS_PTP_KERNEL_ISA`` (``avx2``, ``generic``, ...) makes ``auto``
run that code path instead of the best this CPU has, so one machine can measure the others' paths.
"""

from __future__ import annotations

import ctypes
import functools
import operator
import os
import warnings
from typing import Any

import torch

from eggs_ptp.kernels.build import KernelBuildError, build

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
QUANT_DTYPES = {8: torch.int8, 4: torch.uint8}  # bits -> qvalues dtype (int4: two values a byte, low nibble first)
ISAS = {"auto": 0, "generic": 1, "avx2": 2, "avx512": 3}
ISA_VARIABLE = "EGGS_PTP_KERNEL_ISA"
_ISA_NAMES = {code: name for name, code in ISAS.items()}
_ERRORS = {
    -1: "this CPU cannot run the requested code path",
    -2: "unsupported weight dtype",
    -3: "a row of the bitmask does not mark exactly as many columns as it has stored values",
    -4: "group_size must be a multiple of 32, or at least the number of columns",
}

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class _Layer(ctypes.Structure):
    """``eggs_nm_layer``: a float layer's constant kernel arguments, filled once."""

    _fields_ = [("values", _P), ("bitmask", _P), ("bias", _P)] + [
        (name, _I64) for name in ("dtype", "rows", "cols", "kept", "mask_info")
    ]


class _QuantLayer(ctypes.Structure):
    """``eggs_nm_qlayer``: a quantized layer's constant kernel arguments, filled once."""

    _fields_ = [(name, _P) for name in ("qvalues", "bitmask", "scales", "zeros", "bias")] + [
        (name, _I64) for name in ("bits", "rows", "cols", "kept", "group_size", "mask_info")
    ]


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
    lib.eggs_nm_qlinear.argtypes = [_P, _I64, _P, _INT, _P, _I64, _I64, _I64, _P, _P, _I64, _P, _P, _INT, _INT]
    lib.eggs_nm_qdecompress.argtypes = [_P, _INT, _P, _I64, _I64, _I64, _P, _P, _I64, _P, _INT, _INT]
    lib.eggs_nm_isa.argtypes = [_INT]
    lib.eggs_nm_mask_info.argtypes = [_P, _I64, _I64, _I64, _INT]
    lib.eggs_nm_linear_prepared.argtypes = [_P, _I64, _P, _P, _INT, _INT]
    lib.eggs_nm_qlinear_prepared.argtypes = [_P, _I64, _P, _P, _INT, _INT]
    return lib


def kernel_info() -> dict[str, Any]:
    """Whether the kernel is loaded, the code path it runs here (auto), and which paths this CPU has."""
    lib = library()
    if lib is None:
        return {"available": False, "isa": "torch", "openmp": False, "isas": []}
    isas = [name for name, code in ISAS.items() if code and lib.eggs_nm_isa(code) > 0]
    return {
        "available": True,
        "isa": _ISA_NAMES[lib.eggs_nm_isa(_isa_code("auto"))],
        "forced_by": f"{ISA_VARIABLE}={os.environ[ISA_VARIABLE]}" if _forced_isa() else None,
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


def _check_quant(
    qvalues: torch.Tensor,
    bits: int,
    bitmask: torch.Tensor,
    cols: int,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    group_size: int | None,
) -> tuple[int, int]:
    """What the C code relies on for quantized values; returns (kept values per row, group_size).

    int4 rows store ceil(kept / 2) bytes, so kept is read off the bitmask's first row (the kernel
    checks that every row marks as many)."""
    if bits not in QUANT_DTYPES:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    if qvalues.dtype != QUANT_DTYPES[bits]:
        raise TypeError(f"{bits}-bit qvalues must be {QUANT_DTYPES[bits]}, got {qvalues.dtype}")
    if any(t is not None and t.device.type != "cpu" for t in (qvalues, bitmask, scales, zeros)):
        raise ValueError("the CPU kernel needs CPU tensors; move the layer with .cpu() or use the CUDA path")
    if qvalues.dim() != 2 or not qvalues.is_contiguous():
        raise ValueError(f"qvalues must be a contiguous 2-D (out, stored) tensor, got shape {list(qvalues.shape)}")
    rows = qvalues.shape[0]
    if cols < 1:
        raise ValueError(f"cols must be positive, got {cols}")
    if bitmask.dtype != torch.uint8 or not bitmask.is_contiguous() or list(bitmask.shape) != [rows, -(-cols // 8)]:
        raise ValueError(
            f"bitmask must be contiguous uint8 [{rows}, {-(-cols // 8)}], got {bitmask.dtype} {list(bitmask.shape)}"
        )
    group_size = cols if group_size is None else operator.index(group_size)
    if group_size < 1 or (group_size % 32 and group_size < cols):
        raise ValueError(
            f"group_size must be a multiple of 32, or at least cols ({cols}) for one group per row; got {group_size}"
        )
    groups = -(-cols // group_size)
    if scales.dtype != torch.float16 or not scales.is_contiguous() or list(scales.shape) != [rows, groups]:
        raise ValueError(
            f"scales must be contiguous float16 [{rows}, {groups}], got {scales.dtype} {list(scales.shape)}"
        )
    if zeros is not None and (
        zeros.dtype != torch.uint8 or not zeros.is_contiguous() or list(zeros.shape) != [rows, groups]
    ):
        raise ValueError(
            f"zeros must be None or contiguous uint8 [{rows}, {groups}], got {zeros.dtype} {list(zeros.shape)}"
        )
    if bits == 8:
        return qvalues.shape[1], group_size
    if rows == 0:
        return 2 * qvalues.shape[1], group_size
    first = (bitmask[0].unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1  # (bytes, 8)
    kept = int(first.reshape(-1)[:cols].sum())
    if qvalues.shape[1] != -(-kept // 2):
        raise ValueError(
            f"4-bit qvalues must have ceil(kept / 2) = {-(-kept // 2)} bytes a row for the {kept} columns "
            f"the bitmask's first row marks, got {qvalues.shape[1]}"
        )
    return kept, group_size


@functools.cache
def _forced_isa() -> str | None:
    """The code path ``$EGGS_PTP_KERNEL_ISA`` asks ``auto`` to run (read once per process)."""
    forced = os.environ.get(ISA_VARIABLE, "auto").strip() or "auto"
    if forced not in ISAS:
        raise ValueError(f"{ISA_VARIABLE}={forced!r} is not a code path; choose one of {', '.join(ISAS)}")
    lib = library()
    if forced != "auto" and lib is not None and lib.eggs_nm_isa(ISAS[forced]) < 0:
        raise ValueError(f"{ISA_VARIABLE}={forced}: this CPU cannot run that code path; unset it")
    return None if forced == "auto" else forced


def _isa_code(isa: str) -> int:
    if isa not in ISAS:
        raise ValueError(f"unknown code path {isa!r}; choose one of {', '.join(ISAS)}")
    return ISAS[_forced_isa() or "auto"] if isa == "auto" else ISAS[isa]


def _raise_on(code: int, isa: str) -> None:
    if code < 0:
        raise ValueError(f"CPU kernel ({isa}): {_ERRORS.get(code, f'error {code}')}")


def _library() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise KernelBuildError("the CPU kernel is not available; see the warning above")
    return lib


def _mask_info(lib: ctypes.CDLL, bitmask: torch.Tensor, rows: int, cols: int, kept: int) -> int:
    """The bitmask checked once (every row marks `kept` columns, else ValueError), and whether every
    row takes the whole-byte path (1), and also the 2:4 pairs path (2), or not (0): the prepared
    kernels then check no row per call."""
    code = lib.eggs_nm_mask_info(bitmask.data_ptr(), rows, cols, kept, _isa_code("auto"))
    _raise_on(code, "auto")
    return code


class _KernelLayer:
    """A layer's kernel arguments, checked once, for many calls (decode calls each layer once per
    token, so per-call Python work is kept to a pointer or two): the arguments live in a C struct
    and the bitmask is checked at construction, not on every call.

    Holds references to the tensors it points into; rebuild it when they are replaced or moved, and
    do not modify them in place (the mask is not checked again).
    """

    _kernel: Any
    _arguments: tuple[Any, ...]  # the constant middle of the kernel's arguments, between x and out
    cols: int
    rows: int

    def linear(self, x: torch.Tensor, isa: str = "auto", threads: int | None = None) -> torch.Tensor:
        """(..., cols) inputs, any float dtype (read as fp32) -> (..., out) fp32."""
        # Per call cost matters (a 192x576 layer takes ~8 us dense): is_cpu and torch.empty(*sizes)
        # were measured ~1.3 us cheaper than device.type and a torch.Size argument.
        if x.shape[-1] != self.cols or not x.is_cpu:
            raise ValueError(f"x must be a CPU tensor (..., {self.cols}), got {x.device.type} {list(x.shape)}")
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.to(torch.float32).contiguous()
        out = torch.empty(*x.shape[:-1], self.rows, dtype=torch.float32)
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


def _bias(bias: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    if bias is None:
        return None
    if list(bias.shape) != [rows] or bias.device.type != "cpu":
        raise ValueError(f"bias must have shape [{rows}] on the CPU, got {bias.device.type} {list(bias.shape)}")
    return bias.to(torch.float32).contiguous()


class CompactLayer(_KernelLayer):
    """A float (fp32 / bf16) compact layer's kernel arguments: see :func:`nm_linear`."""

    def __init__(
        self, values: torch.Tensor, bitmask: torch.Tensor, cols: int, bias: torch.Tensor | None = None
    ) -> None:
        lib = _library()
        self._kernel = lib.eggs_nm_linear_prepared
        _check(values, bitmask, cols)
        self.values, self.bitmask, self.cols, self.rows = values, bitmask, cols, values.shape[0]
        self.bias = _bias(bias, self.rows)
        self._layer = _Layer(
            values.data_ptr(),
            bitmask.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
            DTYPE_CODES[values.dtype],
            self.rows,
            cols,
            values.shape[1],
            _mask_info(lib, bitmask, self.rows, cols, values.shape[1]),
        )
        self._arguments = (ctypes.addressof(self._layer),)


class QuantCompactLayer(_KernelLayer):
    """A quantized compact layer's kernel arguments: see :func:`nm_qlinear`."""

    def __init__(
        self,
        qvalues: torch.Tensor,
        bits: int,
        bitmask: torch.Tensor,
        cols: int,
        scales: torch.Tensor,
        zeros: torch.Tensor | None = None,
        group_size: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        lib = _library()
        self._kernel = lib.eggs_nm_qlinear_prepared
        self.kept, self.group_size = _check_quant(qvalues, bits, bitmask, cols, scales, zeros, group_size)
        self.qvalues, self.bits, self.bitmask, self.scales, self.zeros = qvalues, bits, bitmask, scales, zeros
        self.cols, self.rows = cols, qvalues.shape[0]
        self.bias = _bias(bias, self.rows)
        self._layer = _QuantLayer(
            qvalues.data_ptr(),
            bitmask.data_ptr(),
            scales.data_ptr(),
            None if zeros is None else zeros.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
            bits,
            self.rows,
            cols,
            self.kept,
            self.group_size,
            _mask_info(lib, bitmask, self.rows, cols, self.kept),
        )
        self._arguments = (ctypes.addressof(self._layer),)


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


def nm_qlinear(
    x: torch.Tensor,
    qvalues: torch.Tensor,
    bits: int,
    bitmask: torch.Tensor,
    cols: int,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    group_size: int | None = None,
    bias: torch.Tensor | None = None,
    isa: str = "auto",
    threads: int | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` in fp32 with W dequantized in the kernel: ``w = (q - z) * scale`` in fp32.

    Args:
        x: (..., cols) inputs, any float dtype (read as fp32).
        qvalues: the stored values of each row in column order; bits 8: int8 (out, kept);
            bits 4: uint8 (out, ceil(kept / 2)), value k in the low nibble of byte k // 2 when k is
            even, the high nibble when odd, read as unsigned 0..15.
        bitmask: (out, ceil(cols / 8)) uint8, as for :func:`nm_linear`.
        scales: float16 (out, groups), column c in group ``c // group_size``.
        zeros: uint8 (out, groups) zero points, or None for 0 (int8) / 8 (int4).
        group_size: a multiple of 32, or >= cols; None: one group per row.
        bias: (out,) or None. isa: "auto" or a code path this CPU has.
    Returns:
        (..., out) fp32.
    """
    return QuantCompactLayer(qvalues, bits, bitmask, cols, scales, zeros, group_size, bias).linear(x, isa, threads)


def nm_qdecompress(
    qvalues: torch.Tensor,
    bits: int,
    bitmask: torch.Tensor,
    cols: int,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    group_size: int | None = None,
    isa: str = "auto",
    threads: int | None = None,
) -> torch.Tensor:
    """The dense (out, cols) fp32 weight of :func:`nm_qlinear`, +0.0 where nothing is stored."""
    lib = _library()
    kept, group_size = _check_quant(qvalues, bits, bitmask, cols, scales, zeros, group_size)
    dense = torch.empty((qvalues.shape[0], cols), dtype=torch.float32)
    code = lib.eggs_nm_qdecompress(
        qvalues.data_ptr(),
        bits,
        bitmask.data_ptr(),
        qvalues.shape[0],
        cols,
        kept,
        scales.data_ptr(),
        None if zeros is None else zeros.data_ptr(),
        group_size,
        dense.data_ptr(),
        threads or torch.get_num_threads(),
        _isa_code(isa),
    )
    _raise_on(code, isa)
    return dense


__all__ = [
    "DTYPE_CODES",
    "ISAS",
    "ISA_VARIABLE",
    "QUANT_DTYPES",
    "CompactLayer",
    "QuantCompactLayer",
    "kernel_info",
    "library",
    "nm_decompress",
    "nm_linear",
    "nm_qdecompress",
    "nm_qlinear",
]
