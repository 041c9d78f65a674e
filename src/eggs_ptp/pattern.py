"""Sparsity patterns: N:M along the input dimension, or unstructured per output row.

A weight counts as kept when it is non-zero; ``-0.0 == 0`` in IEEE arithmetic, so negative zeros
count as pruned.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

import torch

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Pattern:
    """Keep ``n`` of every ``m`` consecutive weights along ``in`` (N:M), or, when ``m`` is None,
    keep a ``1 - sparsity`` fraction of each output row (unstructured)."""

    n: int | None = None
    m: int | None = None
    sparsity: float | None = None

    def __post_init__(self) -> None:
        if self.m is None:
            if self.sparsity is None or not (0.0 < self.sparsity < 1.0) or math.isnan(self.sparsity):
                raise ValueError(f"sparsity must be a fraction strictly between 0 and 1, got {self.sparsity!r}")
            if self.n is not None:
                raise ValueError("give either N:M or a sparsity, not both")
            return
        if self.n is None or not (0 < self.n < self.m):
            raise ValueError(f"pattern {self.n}:{self.m} is impossible: N:M needs 0 < N < M (for example 2:4 or 4:8)")
        if self.sparsity is not None:
            raise ValueError("give either N:M or a sparsity, not both")

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        """Parse ``"2:4"`` into N:M or ``"0.5"`` / ``"50%"`` into unstructured sparsity.

        A percentage is divided in decimal, so ``"14.3%"`` is exactly ``"0.143"`` (a float division
        would give 0.14300000000000002, a different pattern from the one its string names).
        """
        match = _NM.match(text)
        if match:
            return cls(n=int(match.group(1)), m=int(match.group(2)))
        stripped = text.strip()
        try:
            value = float(Decimal(stripped[:-1]) / 100) if stripped.endswith("%") else float(stripped)
        except (ValueError, ArithmeticError):
            raise ValueError(
                f"cannot read pattern {text!r}: use N:M with 0 < N < M (e.g. 2:4) or a sparsity fraction (e.g. 0.5)"
            ) from None
        return cls(sparsity=value)

    @property
    def structured(self) -> bool:
        return self.m is not None

    @property
    def density(self) -> float:
        """Fraction of weights kept."""
        return self.n / self.m if self.structured else 1.0 - self.sparsity

    def kept_per_row(self, in_features: int) -> int:
        """How many weights an unstructured row of ``in_features`` keeps (rounded to nearest)."""
        return int(round(in_features * self.density))

    def __str__(self) -> str:
        """The text ``parse`` reads back to an equal pattern.

        Configs and checkpoint records store this string and parse it again, so a sparsity is never
        rounded: an OWL layer pruned at 0.3243407 keeps 2768 of 4096 per row, and read back as
        0.324341 it would allow only 2767.
        """
        return f"{self.n}:{self.m}" if self.structured else repr(float(self.sparsity))


@dataclass(frozen=True)
class Violation:
    """Where a weight first breaks its pattern, and how often."""

    count: int  # offending groups (N:M) or rows (unstructured)
    row: int
    group: int | None


def pattern_violations(weight: torch.Tensor, pattern: Pattern) -> Violation | None:
    """First place where ``weight`` (out, in) keeps more than the pattern allows, or None.

    Raises:
        ValueError: if ``weight`` is not 2-D, or its ``in`` does not split into groups of M.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D (out, in) tensor, got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if pattern.structured and in_features % pattern.m:
        raise ValueError(f"in_features {in_features} is not divisible by M={pattern.m} of pattern {pattern}")
    kept = weight != 0
    if pattern.structured:
        over = kept.reshape(out_features, in_features // pattern.m, pattern.m).sum(dim=-1) > pattern.n  # (out, G)
    else:
        over = (kept.sum(dim=1) > pattern.kept_per_row(in_features)).unsqueeze(1)  # (out, 1)
    if not over.any():
        return None
    row, group = (int(i) for i in over.nonzero()[0])
    return Violation(int(over.sum()), row, group if pattern.structured else None)


__all__ = ["Pattern", "Violation", "pattern_violations"]
