"""Computing N:M sparse linear layers from the compact format.

``nm_linear.c`` is the CPU kernel (AVX-512, AVX2 or plain C, chosen at run time), compiled once by
:mod:`~eggs_ptp.kernels.build` and called through :mod:`~eggs_ptp.kernels.cpu`; :mod:`~eggs_ptp.kernels.gpu`
wraps PyTorch's 2:4 semi-structured matmul; :class:`SparseNMLinear` picks between them and dense.
:func:`nm_qlinear` / :class:`QuantCompactLayer` run the same kernel on int8 / int4 kept values.
"""

from eggs_ptp.kernels.cpu import QuantCompactLayer, kernel_info, nm_decompress, nm_linear, nm_qdecompress, nm_qlinear
from eggs_ptp.kernels.linear import DENSE_ABOVE_TOKENS, SparseNMLinear
from eggs_ptp.kernels.swap import load_sparse

__all__ = [
    "DENSE_ABOVE_TOKENS",
    "QuantCompactLayer",
    "SparseNMLinear",
    "kernel_info",
    "load_sparse",
    "nm_decompress",
    "nm_linear",
    "nm_qdecompress",
    "nm_qlinear",
]
