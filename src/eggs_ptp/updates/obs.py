"""SparseGPT's optimal-brain-surgeon sweep (Frantar & Alistarh, 2023).

Columns are pruned left to right in blocks; each pruned weight's error is spread over the
not-yet-visited columns through the inverse Hessian ``H = X^T X + damping``. When no mask is given,
the mask is chosen inside the sweep from the OBS saliency ``w^2 / [H^-1]_jj^2`` of the partly
updated weights, per M-group for N:M (by whatever selector the method composes) and per column
block for unstructured sparsity.

The same sweep quantizes jointly (GPTQ; SparseGPT's own joint mode): with the mask fixed, each
kept weight is rounded to its grid as its column is visited and its rounding error is spread over
the columns not yet visited, like a pruned weight's. A group's scale is fitted on its kept weights
when the sweep reaches the group's first column, so it sees the errors already spread into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import Grid, QuantScheme
from eggs_ptp.selectors import Selector
from eggs_ptp.stats import LayerStats


class HessianError(RuntimeError):
    """The damped Hessian is not positive definite."""


def _inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damping * mean(diag H) * I)^-1``."""
    h = hessian.clone()
    diagonal = torch.arange(h.shape[0], device=h.device)
    h[diagonal, diagonal] += damping * torch.mean(torch.diag(h))
    try:
        factor = torch.linalg.cholesky(h)
        inverse = torch.cholesky_inverse(factor)
        return torch.linalg.cholesky(inverse, upper=True)
    except torch.linalg.LinAlgError as error:
        raise HessianError(
            f"the damped Hessian is not positive definite (damping {damping}); "
            "raise --damping or use more calibration samples"
        ) from error


@dataclass(frozen=True)
class ObsUpdate:
    """Args:
    damping: fraction of the mean Hessian diagonal added to the diagonal (SparseGPT's percdamp).
    blocksize: columns per lazy-update block (rounded down to a multiple of M, at least M).
    """

    damping: float = 0.01
    blocksize: int = 128
    needs_hessian = True

    def __post_init__(self) -> None:
        if not self.damping > 0:
            raise ValueError(f"damping must be positive, got {self.damping}")
        if self.blocksize < 1:
            raise ValueError(f"blocksize must be at least 1, got {self.blocksize}")

    def apply(
        self,
        weight: torch.Tensor,
        stats: LayerStats,
        pattern: Pattern,
        selector: Selector,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prune ``weight`` (out, in) and update its kept entries.

        Args:
            mask: a kept-weight mask fixed beforehand; when None the sweep chooses it.
        Returns:
            The updated weight (zeros where pruned, fp32) and the boolean kept mask.
        """
        w, hinv = self._prepare(weight, stats)
        rows, cols = w.shape
        group = pattern.m if pattern.structured else 1
        block = max(group, (self.blocksize // group) * group)
        kept = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
        pruned, _ = self._sweep(w, hinv, block, kept, pattern, selector, mask, None)
        return pruned, kept

    def quantize(
        self, weight: torch.Tensor, stats: LayerStats, mask: torch.Tensor, scheme: QuantScheme
    ) -> tuple[torch.Tensor, Grid]:
        """Quantize the kept entries of ``weight`` (out, in) to ``scheme`` and prune the rest, with
        every rounding error spread forward; the result (fp32, +0.0 where pruned) lies on the grid."""
        w, hinv = self._prepare(weight, stats)
        width = scheme.group_columns(w.shape[1])
        block = width * max(1, self.blocksize // width)  # a group never spans two lazy blocks
        kept = mask.to(device=w.device).clone()
        return self._sweep(w, hinv, block, kept, None, None, kept, scheme)

    def _prepare(self, weight: torch.Tensor, stats: LayerStats) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 working copy (dead inputs zeroed) and the upper Cholesky factor of H^-1."""
        if stats.hessian is None:
            raise ValueError("the OBS update needs the layer Hessian; collect stats with_hessian=True")
        w = weight.detach().clone().float()
        hessian = stats.hessian.to(w.device)
        dead = torch.diag(hessian) == 0
        hessian = hessian.clone()
        hessian[dead, dead] = 1.0  # an input that is always zero carries no information
        w[:, dead] = 0.0
        return w, _inverse_hessian_factor(hessian, self.damping)

    def _sweep(
        self,
        w: torch.Tensor,
        hinv: torch.Tensor,
        block: int,
        kept: torch.Tensor,
        pattern: Pattern | None,
        selector: Selector | None,
        mask: torch.Tensor | None,
        scheme: QuantScheme | None,
    ) -> tuple[torch.Tensor, Grid | None]:
        """Visit the columns left to right, filling ``kept`` when no ``mask`` is given."""
        rows, cols = w.shape
        group = pattern.m if pattern is not None and pattern.structured else 1
        grid = scheme.fit(w, kept) if scheme is not None else None  # per-channel scales: fitted up front
        width = scheme.group_columns(cols) if scheme is not None else cols
        for start in range(0, cols, block):
            end = min(start + block, cols)
            w_block = w[:, start:end].clone()
            hinv_block = hinv[start:end, start:end]
            hinv_diag = torch.diag(hinv_block)
            errors = torch.zeros_like(w_block)
            if mask is not None:
                kept[:, start:end] = mask[:, start:end]
            elif not pattern.structured:
                kept[:, start:end] = selector.select(w_block.pow(2) / hinv_diag.pow(2), pattern)
            for i in range(end - start):
                column = start + i
                if mask is None and pattern.structured and i % group == 0:
                    saliency = w_block[:, i : i + group].pow(2) / hinv_diag[i : i + group].pow(2)
                    kept[:, column : column + group] = selector.select(saliency, pattern)
                if grid is not None and width < cols and column % width == 0:
                    grid.refit_group(column // width, w_block[:, i : i + width], kept[:, column : column + width])
                w_col = w_block[:, i]
                target = w_col if grid is None else grid.round_column(w_col, column)
                quantised = torch.where(kept[:, column], target, torch.zeros_like(w_col))
                error = (w_col - quantised) / hinv_block[i, i]
                w_block[:, i:] -= error.unsqueeze(1) @ hinv_block[i, i:].unsqueeze(0)
                w_block[:, i] = quantised
                errors[:, i] = error
            w[:, start:end] = w_block
            w[:, end:] -= errors @ hinv[start:end, end:]
        return torch.where(kept, w, torch.zeros_like(w)), grid  # +0.0 where pruned, never -0.0


__all__ = ["HessianError", "ObsUpdate"]
