"""Magnitude, Wanda and RIA scores.

- magnitude: ``|W_ij|``
- Wanda (Sun et al., 2023): ``|W_ij| * ||X_j||``
- RIA (Zhang et al., ICLR 2024): ``(|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||^a``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from eggs_ptp.stats import LayerStats


class Score(Protocol):
    name: ClassVar[str]
    needs_calibration: ClassVar[bool]

    def __call__(self, weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor: ...


def _require_stats(name: str, stats: LayerStats | None) -> LayerStats:
    if stats is None:
        raise ValueError(f"the {name} score needs calibration statistics; none were collected")
    return stats


@dataclass(frozen=True)
class MagnitudeScore:
    name: ClassVar[str] = "magnitude"
    needs_calibration: ClassVar[bool] = False

    def __call__(self, weight: torch.Tensor, stats: LayerStats | None = None) -> torch.Tensor:
        return weight.abs().float()


@dataclass(frozen=True)
class WandaScore:
    name: ClassVar[str] = "wanda"
    needs_calibration: ClassVar[bool] = True

    def __call__(self, weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
        norm = _require_stats(self.name, stats).channel_norm.to(weight.device)
        return weight.abs().float() * norm  # (out, in) * (in,)


@dataclass(frozen=True)
class RiaScore:
    """Relative importance: a weight's share of its column's and its row's total magnitude."""

    alpha: float = 0.5
    name: ClassVar[str] = "ria"
    needs_calibration: ClassVar[bool] = True

    def __call__(self, weight: torch.Tensor, stats: LayerStats | None) -> torch.Tensor:
        norm = _require_stats(self.name, stats).channel_norm.to(weight.device)
        magnitude = weight.abs().float()  # (out, in)
        # An all-zero row or column has no relative importance; avoid 0/0 so it scores 0, not NaN.
        column_total = magnitude.sum(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        row_total = magnitude.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        relative = magnitude / column_total
        relative += magnitude.div_(row_total)  # in place: two (out, in) temporaries, not five
        return relative.mul_(norm.pow(self.alpha))


__all__ = ["MagnitudeScore", "RiaScore", "Score", "WandaScore"]
