"""The N:M bit codec: a pruned (out, in) weight as its kept values and a one-bit position mask.

* ``values``: exactly N values of every M-group, row-major, in the layer's dtype, shape
  (out, in * N / M);
* ``bitmask``: uint8, shape (out, ceil(in / 8)); bit j of byte k (least significant bit first,
  numpy's ``bitorder="little"``) is set when column 8k + j is stored.

The bitmask marks *stored* positions, not non-zero ones: a group with fewer than N non-zeros (a
kept weight that is exactly zero) fills its spare slots with zeros, negative zeros first, then
lowest index first, so every group stores exactly N and every stored bit pattern survives.
Positions not stored decode to +0.0. Quantized layers store 4-bit integers two to a byte
(:func:`pack_nibbles`). Pure tensor code: the file format (:mod:`.compact`) and the sparse modules
(:mod:`eggs_ptp.kernels`) both build on it.
"""

from __future__ import annotations

import torch

from eggs_ptp.pattern import Pattern, pattern_violations


def _check_pattern(pattern: Pattern, in_features: int) -> tuple[int, int]:
    if not pattern.structured:
        raise ValueError(f"the compact format is N:M only; pattern {pattern} is unstructured")
    if in_features % pattern.m:
        raise ValueError(f"{in_features} input columns do not split into groups of {pattern.m} for pattern {pattern}")
    return pattern.n, pattern.m


def negative_zeros(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor == 0) & tensor.signbit()


def compress(weight: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``weight`` (out, in) into ``values`` (out, in*N/M) and ``bitmask`` (out, ceil(in/8)) uint8.

    Raises ValueError when a group holds more than N non-zeros (-0.0 counts as zero).
    """
    if weight.dim() != 2:
        raise ValueError(f"compress needs a 2-D (out, in) weight, got shape {list(weight.shape)}")
    rows, cols = weight.shape
    n, m = _check_pattern(pattern, cols)
    violation = pattern_violations(weight, pattern)
    if violation:
        raise ValueError(
            f"weight breaks pattern {pattern}: {violation.count} groups hold more than {n} non-zeros "
            f"(first at row {violation.row}, group {violation.group})"
        )
    groups = weight.reshape(rows, cols // m, m)  # (out, groups, M)
    # Rank each slot: non-zeros, then -0.0, then +0.0, each by position; store the first N.
    rank = torch.full(groups.shape, 2 * m, dtype=torch.int64, device=weight.device)
    rank = rank.masked_fill(negative_zeros(groups), m).masked_fill(groups != 0, 0)
    rank += torch.arange(m, device=weight.device)
    stored = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    stored.scatter_(-1, rank.topk(n, dim=-1, largest=False).indices, True)
    stored = stored.reshape(rows, cols)  # (out, in)
    values = weight[stored].reshape(rows, cols // m * n)  # boolean indexing keeps row-major order
    return values, pack_bits(stored)


def check_compact(
    values: torch.Tensor, bitmask: torch.Tensor, shape: tuple[int, int] | list[int], pattern: Pattern
) -> torch.Tensor:
    """Check that ``values`` and ``bitmask`` describe an (out, in) weight at ``pattern``.

    Returns the unpacked (out, in) bool mask of stored positions; raises ValueError otherwise.
    """
    rows, cols = shape
    n, m = _check_pattern(pattern, cols)
    if list(values.shape) != [rows, cols // m * n]:
        raise ValueError(
            f"values shape {list(values.shape)} is not [{rows}, {cols // m * n}] for {rows}x{cols} at {pattern}"
        )
    return check_bitmask(bitmask, shape, pattern)


def check_bitmask(bitmask: torch.Tensor, shape: tuple[int, int] | list[int], pattern: Pattern) -> torch.Tensor:
    """Check that ``bitmask`` marks exactly N of every M columns of an (out, in) weight; returns the
    unpacked (out, in) bool mask of stored positions (quantized layers store no float values to check)."""
    rows, cols = shape
    n, m = _check_pattern(pattern, cols)
    if bitmask.dtype != torch.uint8 or list(bitmask.shape) != [rows, -(-cols // 8)]:
        raise ValueError(f"bitmask must be uint8 [{rows}, {-(-cols // 8)}], got {bitmask.dtype} {list(bitmask.shape)}")
    stored = unpack_bits(bitmask, cols)  # (out, in)
    if not (stored.reshape(rows, cols // m, m).sum(dim=-1) == n).all():
        raise ValueError(f"bitmask does not mark exactly {n} of every {m} columns")
    return stored


def decompress(
    values: torch.Tensor, bitmask: torch.Tensor, shape: tuple[int, int] | list[int], pattern: Pattern
) -> torch.Tensor:
    """Rebuild the dense (out, in) weight, bit for bit, with +0.0 at positions not stored."""
    return scatter_stored(values, check_compact(values, bitmask, shape, pattern))


def scatter_stored(values: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """The dense weight from ``values`` placed, row-major, at the True positions of ``stored`` (out, in)."""
    weight = torch.zeros(stored.shape, dtype=values.dtype, device=values.device)
    return weight.masked_scatter_(stored, values)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(out, in) bool -> (out, ceil(in/8)) uint8, column 8k+j in bit j of byte k."""
    rows, cols = mask.shape
    padded = torch.nn.functional.pad(mask, (0, -cols % 8)).reshape(rows, -1, 8).to(torch.uint8)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=mask.device)
    return (padded * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    """(out, ceil(in/8)) uint8 -> (out, in) bool, the inverse of :func:`pack_bits`; padding bits past
    ``cols`` are dropped."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (out, bytes, 8)
    return bits.reshape(bitmask.shape[0], -1)[:, :cols].bool()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(rows, kept) integers in [0, 15] -> (rows, ceil(kept/2)) uint8: value k in the low nibble of byte
    k // 2 when k is even, the high nibble when odd; an odd ``kept`` leaves each row's last high nibble 0."""
    if q.dim() != 2:
        raise ValueError(f"pack_nibbles needs a 2-D (rows, kept) tensor, got shape {list(q.shape)}")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise ValueError(f"4-bit values must lie in [0, 15], got [{int(q.min())}, {int(q.max())}]")
    rows, kept = q.shape
    pairs = torch.nn.functional.pad(q.to(torch.uint8), (0, kept % 2)).reshape(rows, -(-kept // 2), 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_nibbles(packed: torch.Tensor, kept: int) -> torch.Tensor:
    """(rows, ceil(kept/2)) uint8 -> (rows, kept) uint8, the inverse of :func:`pack_nibbles`."""
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != -(-kept // 2):
        raise ValueError(
            f"packed 4-bit values must be uint8 [rows, {-(-kept // 2)}], got {packed.dtype} {list(packed.shape)}"
        )
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], 2 * packed.shape[1])[:, :kept]


__all__ = [
    "check_bitmask",
    "check_compact",
    "compress",
    "decompress",
    "negative_zeros",
    "pack_bits",
    "pack_nibbles",
    "scatter_stored",
    "unpack_bits",
    "unpack_nibbles",
]
