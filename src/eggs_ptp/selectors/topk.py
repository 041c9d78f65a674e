"""Plain top-k mask selection: the baseline every score-based pruner (magnitude, Wanda, RIA) uses.

Ties are broken toward the lower column index with a stable descending sort, because
``torch.topk`` leaves the order of equal values unspecified and masks must be reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from eggs_ptp.pattern import Pattern


def _check_2d(scores: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(
            f"scores must be a 2-D (out, in) tensor, got shape {tuple(scores.shape)}; "
            "flatten or transpose the weight's score first"
        )


def check_finite(scores: torch.Tensor) -> None:
    """Reject scores with NaN or Inf, which would make the ranking meaningless.

    Args:
        scores: score tensor of any shape.

    Raises:
        ValueError: if any entry is NaN or +-Inf.
    """
    bad = int((~torch.isfinite(scores)).sum())
    if bad:
        raise ValueError(
            f"scores contain NaN or Inf ({bad} of {scores.numel()} entries); "
            "check the weights and calibration activations that produced them"
        )


def select_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest scores in every group of ``m`` consecutive columns.

    Comparison group: per output row, groups of ``m`` along ``in``. Ties go to the lower column.
    Scores need not be finite (the selectors reject NaN and Inf before this, but the EGGS fill
    forces entries with +Inf): NaN ranks above +Inf, as in ``torch.sort``, so a group still keeps
    exactly ``n``.

    Args:
        scores: (out, in) scores, ``in`` divisible by ``m``.
        n: weights kept per group, ``0 <= n <= m``.
        m: group size.

    Returns:
        (out, in) bool mask, True = kept, exactly ``n`` per group.
    """
    _check_2d(scores)
    out_features, in_features = scores.shape
    if m <= 0 or not 0 <= n <= m:
        raise ValueError(f"N:M needs 0 <= N <= M and M > 0, got {n}:{m}")
    if in_features % m:
        raise ValueError(
            f"in_features {in_features} is not divisible by M={m}; N:M groups need whole groups of M columns"
        )
    groups = scores.reshape(out_features, in_features // m, m)  # (out, G, M)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]  # (out, G, n)
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order, True)
    return mask.reshape(out_features, in_features)


def select_per_row(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Keep the ``keep`` largest scores of every row (unstructured sparsity).

    Comparison group: per output row, all ``in`` columns. Ties go to the lower column; NaN ranks
    above +Inf, as in ``select_nm``.

    Args:
        scores: (out, in) scores.
        keep: weights kept per row, ``0 <= keep <= in``.

    Returns:
        (out, in) bool mask, True = kept, exactly ``keep`` per row.
    """
    _check_2d(scores)
    in_features = scores.shape[1]
    if not 0 <= keep <= in_features:
        raise ValueError(f"cannot keep {keep} weights per row of {in_features}; keep must be in 0..{in_features}")
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :keep]  # (out, keep)
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, order, True)
    return mask


@dataclass(frozen=True)
class TopKSelector:
    """Keep the highest-scoring weights of each comparison group; no extra guarantee."""

    name: ClassVar[str] = "topk"

    def rows_together(self, pattern: Pattern) -> int:
        return 1

    def select(self, scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        """Select the mask for one weight matrix.

        Comparison group: per output row, groups of M along ``in`` for N:M; the whole row for
        unstructured sparsity (``pattern.kept_per_row(in)`` kept per row).

        Args:
            scores: (out, in) finite scores.
            pattern: N:M or unstructured pattern.

        Returns:
            (out, in) bool mask, True = kept.
        """
        _check_2d(scores)
        check_finite(scores)
        if pattern.structured:
            return select_nm(scores, pattern.n, pattern.m)
        return select_per_row(scores, pattern.kept_per_row(scores.shape[1]))


__all__ = ["TopKSelector", "check_finite", "select_nm", "select_per_row"]
