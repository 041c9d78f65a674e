"""EGGS-PTP mask selection: N:M masks that also keep at least B weights in every input column of
every H x M tile, so no input channel is starved by plain top-k.

The three rules (``diagonal``, ``matching``, ``repair``) trade score kept against fidelity to the
published description; see the "EGGS-PTP mask" section of the method notes. All rules meet the
same guarantee, and ``select`` checks it before returning so a violated guarantee fails loudly.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors.topk import check_finite, select_nm

logger = logging.getLogger(__name__)

RULES = ("diagonal", "matching", "repair")

# Largest M whose M! permutations are enumerated for H == M matchings (720 at M = 6).
ENUMERATE_MAX_M = 6


class GuaranteeError(RuntimeError):
    """A mask broke the N:M or per-tile column guarantee (a bug in a selection rule)."""


def check_guarantee(mask: torch.Tensor, n: int, m: int, b: int, tile_height: int) -> None:
    """Verify the EGGS guarantee on a finished mask.

    Comparison groups: per output row, groups of ``m`` along ``in`` (exactly ``n`` kept), and per
    full tile of ``tile_height`` rows x ``m`` columns (every column keeps at least ``b``). Tail rows
    beyond the last full tile only need the N:M part.

    Args:
        mask: (out, in) bool mask, True = kept.
        n: weights kept per group.
        m: group size.
        b: minimum kept per column per full tile.
        tile_height: rows per tile, a positive multiple of ``m``.

    Raises:
        ValueError: if the arguments do not describe a checkable mask.
        GuaranteeError: if any group or tile column breaks the guarantee.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a 2-D bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    if m <= 0 or tile_height <= 0 or tile_height % m:
        raise ValueError(f"tile_height {tile_height} must be a positive multiple of M={m}")
    out_features, in_features = mask.shape
    if in_features % m:
        raise ValueError(f"in_features {in_features} is not divisible by M={m}")
    groups = in_features // m
    per_group = mask.reshape(out_features, groups, m).sum(-1)  # (out, G)
    wrong = per_group != n
    if wrong.any():
        row, group = wrong.nonzero()[0].tolist()
        raise GuaranteeError(
            f"{int(wrong.sum())} row groups do not keep exactly {n} of {m}; first at row {row}, "
            f"group {group}, which keeps {int(per_group[row, group])}"
        )
    tiles_r = out_features // tile_height
    counts = mask[: tiles_r * tile_height].reshape(tiles_r, tile_height, groups, m).sum(1)  # (tiles_r, G, M)
    short = counts < b
    if short.any():
        tile_row, group, column = short.nonzero()[0].tolist()
        raise GuaranteeError(
            f"{int(short.sum())} tile columns in {int(short.any(-1).sum())} tiles keep fewer than "
            f"B={b}; first at tile row {tile_row} (rows {tile_row * tile_height}.."
            f"{(tile_row + 1) * tile_height - 1}), group {group}, column {column} "
            f"(input column {group * m + column}), which keeps {int(counts[tile_row, group, column])}"
        )


def _bounded(work: torch.Tensor, h: int) -> torch.Tensor:
    """``work``, or an exact rescaling of it, whose tile sums cannot overflow.

    The rules add up to H scores (diagonal sums, matchings, scipy's assignment costs) or subtract
    two (repair swap costs); an overflow to Inf there picks forbidden entries and breaks the
    guarantee. Scores above the dtype's largest value / (8 H^2) are widened from float32 to
    float64 (exact) or, already float64, divided by a power of two (exact short of values so small
    against the largest that they turn subnormal); either way every rule chooses the same.
    """
    limit = torch.finfo(work.dtype).max / (8 * h * h)
    if not bool((work.abs() > limit).any()):
        return work
    if work.dtype != torch.float64:
        return work.double()
    return work * 2.0 ** -math.ceil(math.log2(float(work.abs().max()) / limit))


def _to_tiles(scores: torch.Tensor, h: int, m: int) -> torch.Tensor:
    """(tiles_r * H, G * M) -> (T, H, M) with T = tiles_r * G, tile-row major."""
    rows, in_features = scores.shape
    tiles = scores.reshape(rows // h, h, in_features // m, m)  # (tiles_r, H, G, M)
    return tiles.permute(0, 2, 1, 3).reshape(-1, h, m)  # (T, H, M)


def _from_tiles(tiles: torch.Tensor, rows: int, in_features: int) -> torch.Tensor:
    """Inverse of ``_to_tiles``: (T, H, M) -> (tiles_r * H, G * M)."""
    _, h, m = tiles.shape
    grid = tiles.reshape(rows // h, in_features // m, h, m)  # (tiles_r, G, H, M)
    return grid.permute(0, 2, 1, 3).reshape(rows, in_features)


def _fill(scores: torch.Tensor, forced: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the forced entries, then each tile row's best remaining ones up to ``n``.

    Comparison group: per tile row (one M-group of one output row). Ties go to the lower column.
    """
    _, _, m = scores.shape
    priority = scores.masked_fill(forced, float("inf"))  # forced entries (at most n per row) win
    return select_nm(priority.reshape(-1, m), n, m).reshape(scores.shape)


def _diagonal_forced(scores: torch.Tensor, b: int) -> torch.Tensor:
    """Force the ``b`` cyclic diagonals with the largest score sums in every tile (ties: smaller k)."""
    tiles, h, m = scores.shape
    rows = torch.arange(h, device=scores.device)
    idx = ((rows[:, None] + torch.arange(m, device=scores.device)[None, :]) % m).expand(tiles, h, m)  # (T, H, M)
    sums = scores.gather(2, idx).sum(1)  # (T, M): sum of diagonal k
    best = torch.sort(sums, dim=1, descending=True, stable=True).indices[:, :b]  # (T, b)
    chosen = torch.zeros(tiles, m, dtype=torch.bool, device=scores.device).scatter_(1, best, True)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(2, idx, chosen[:, None, :].expand(tiles, h, m))


@lru_cache(maxsize=None)
def _permutations(m: int) -> torch.Tensor:
    """All permutations of range(m) in lexicographic order, (m!, m)."""
    return torch.tensor(list(itertools.permutations(range(m))), dtype=torch.long)


def _matching_enumerate(scores: torch.Tensor, b: int) -> torch.Tensor:
    """``b`` successive maximum-weight perfect matchings for H == M by enumerating all M! of them.

    Ties go to the first permutation in lexicographic order.
    """
    tiles, m, _ = scores.shape
    perms = _permutations(m).to(scores.device)  # (P, M): perms[p, i] = column of row i
    rows = torch.arange(m, device=scores.device)
    forced = torch.zeros_like(scores, dtype=torch.bool)
    for _ in range(b):
        allowed = scores.masked_fill(forced, float("-inf"))
        value = allowed[:, rows, perms].sum(-1)  # (T, P, M) -> (T, P)
        best = perms[value.argmax(1)]  # (T, M)
        forced.scatter_(2, best[:, :, None], True)
    return forced


def _matching_scipy(scores: torch.Tensor, b: int) -> torch.Tensor:
    """``b`` successive maximum-weight assignments per tile with scipy's Hungarian solver.

    Each column is replicated H/M times so every round gives each row one entry and each column
    H/M entries. Entries forced earlier are forbidden with -Inf (a finite "low enough" value is
    lost to rounding next to large scores); the remaining graph stays regular, so a full
    assignment without them always exists. Ties follow scipy's solver (deterministic, but not
    lexicographic like the enumeration).
    """
    if b == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    tiles, h, m = scores.shape
    reps = h // m
    values = scores.detach().to("cpu", torch.float64).numpy()  # (T, H, M)
    forced = np.zeros(values.shape, dtype=bool)
    start = time.perf_counter()
    for _ in range(b):
        cost = np.repeat(np.where(forced, -np.inf, values), reps, axis=2)  # (T, H, H)
        for tile in range(tiles):
            row_ind, col_ind = linear_sum_assignment(cost[tile], maximize=True)
            forced[tile, row_ind, col_ind // reps] = True
    logger.info(
        "matching: Hungarian fallback solved %d tiles x %d rounds (H=%d, M=%d) in %.3f s",
        tiles,
        b,
        h,
        m,
        time.perf_counter() - start,
    )
    return torch.from_numpy(forced).to(scores.device)


def _repair(scores: torch.Tensor, n: int, b: int) -> torch.Tensor:
    """Start from top-k and swap in the cheapest missing entry until no tile column is short of ``b``.

    A swap in row i takes a column c short of ``b`` that row i drops and gives up a kept column c'
    holding more than ``b``; its cost is S[i, c'] - S[i, c]. Each round applies the cheapest swap in
    every deficient tile (ties: first in (i, c, c') order). Each swap lowers the tile's total
    shortfall by one, so at most M * b rounds are needed; a swap always exists because the tile
    keeps H * n >= M * b entries.
    """
    tiles, h, m = scores.shape
    mask = select_nm(scores.reshape(-1, m), n, m).reshape(tiles, h, m)  # (T, H, M)
    for _ in range(m * b):
        counts = mask.sum(1)  # (T, M)
        active = (counts < b).any(1).nonzero().squeeze(1)  # (A,)
        if active.numel() == 0:
            break
        kept, values, count = mask[active], scores[active], counts[active]  # (A, H, M) x2, (A, M)
        take = ~kept & (count < b)[:, None, :]  # (A, H, M): row i may take column c
        drop = kept & (count > b)[:, None, :]  # (A, H, M): row i may give up column c'
        valid = take[:, :, :, None] & drop[:, :, None, :]  # (A, H, M, M) over (i, c, c')
        cost = values[:, :, None, :] - values[:, :, :, None]  # (A, H, M, M): S[i, c'] - S[i, c]
        flat = cost.masked_fill(~valid, float("inf")).reshape(active.numel(), -1).argmin(1)  # (A,)
        row, column, dropped = flat // (m * m), (flat // m) % m, flat % m
        mask[active, row, column] = True
        mask[active, row, dropped] = False
    return mask


@dataclass(frozen=True)
class EggsSelector:
    """N:M selection with at least ``b`` kept weights per column in every full tile.

    Attributes:
        rule: one of ``RULES``: ``diagonal`` (literal reading), ``matching`` (max-weight
            assignments), ``repair`` (minimal change from top-k).
        b: minimum kept weights per input column per tile, ``0 <= b <= N``; 0 gives plain top-k.
        tile_height: rows per tile, a positive multiple of M; None means M.
    """

    rule: str = "repair"
    b: int = 1
    tile_height: int | None = None

    name: ClassVar[str] = "eggs"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown EGGS rule {self.rule!r}; choose one of {', '.join(RULES)}")
        if self.b < 0:
            raise ValueError(f"b must be 0 or more (the minimum kept per tile column), got {self.b}")
        if self.tile_height is not None and self.tile_height <= 0:
            raise ValueError(f"tile_height must be a positive multiple of M, got {self.tile_height}")

    def rows_together(self, pattern: Pattern) -> int:
        """A tile's rows; rows after the last full tile are selected on their own, so a chunk of
        whole tiles followed by the tail selects exactly as the whole matrix does."""
        return self.tile_height or pattern.m

    def select(self, scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        """Select the mask for one weight matrix.

        Comparison groups: per output row, groups of M along ``in`` (N kept); per full tile of
        ``tile_height`` rows x M columns (at least ``b`` per column). Rows after the last full tile
        get plain top-k N:M.

        Args:
            scores: (out, in) finite scores, ``in`` divisible by M.
            pattern: an N:M pattern.

        Returns:
            (out, in) bool mask, True = kept.

        Raises:
            ValueError: for unusable scores or settings.
            GuaranteeError: if the mask breaks the guarantee (a bug, never expected).
        """
        if scores.dim() != 2:
            raise ValueError(f"scores must be a 2-D (out, in) tensor, got shape {tuple(scores.shape)}")
        check_finite(scores)
        if not pattern.structured:
            raise ValueError(
                f"EGGS needs an N:M pattern, got unstructured sparsity {pattern}; use the topk selector instead"
            )
        n, m = pattern.n, pattern.m
        h = m if self.tile_height is None else self.tile_height
        if self.b > n:
            raise ValueError(f"b={self.b} exceeds N={n} of pattern {pattern}; b must be between 0 and N")
        if h % m:
            raise ValueError(f"tile_height {h} is not a multiple of M={m}; use M, 2M, 4M, ...")
        out_features, in_features = scores.shape
        if in_features % m:
            raise ValueError(
                f"in_features {in_features} is not divisible by M={m}; N:M groups need whole groups of M columns"
            )
        full = out_features // h * h
        mask = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
        mask[full:] = select_nm(scores[full:], n, m)
        if full:
            work = _bounded(scores[:full].to(torch.promote_types(scores.dtype, torch.float32)), h)
            tiles = _to_tiles(work, h, m)  # (T, H, M)
            if self.rule == "repair":
                tile_mask = _repair(tiles, n, self.b)
            elif self.rule == "diagonal":
                tile_mask = _fill(tiles, _diagonal_forced(tiles, self.b), n)
            elif h == m and m <= ENUMERATE_MAX_M:
                tile_mask = _fill(tiles, _matching_enumerate(tiles, self.b), n)
            else:
                tile_mask = _fill(tiles, _matching_scipy(tiles, self.b), n)
            mask[:full] = _from_tiles(tile_mask, full, in_features)
        check_guarantee(mask, n, m, self.b, h)
        return mask


__all__ = ["ENUMERATE_MAX_M", "RULES", "EggsSelector", "GuaranteeError", "check_guarantee"]
