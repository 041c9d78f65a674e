"""Least-squares re-fit of the kept weights against the dense layer's outputs.

For a fixed mask, each output row's kept weights ``w_S`` minimise ``||X w_S - X w||^2``, i.e. solve
``H_SS w_S = H_S: w`` with ``H = X^T X``. SparseGPT's sweep only approximates this: a kept weight
is frozen once its column is visited, so it never absorbs the error of columns pruned later. The
re-fit solves every row at once by Jacobi-preconditioned conjugate gradients restricted to the
kept entries: one (out, in) x (in, in) product per iteration, no per-row factorisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eggs_ptp.stats import LayerStats


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """``||delta X^T||^2`` per output row from the Hessian: ``diag(delta H delta^T)``."""
    return ((delta @ hessian) * delta).sum(1)


@dataclass(frozen=True)
class LeastSquaresRefit:
    """Args:
    damping: fraction of the mean Hessian diagonal added to its diagonal; keeps ``H_SS`` well
        conditioned and pulls weights of rarely-seen inputs towards their dense values.
    iterations: most conjugate-gradient steps.
    tolerance: stop once a step lowers the layer's (damped) output error by less than this
        fraction of what the steps before it removed. Measured on SmolLM2-135M's layers, 1e-3
        stops after 11-20 steps within 0.2% of the converged error, where the old rule (every
        row's residual below 1e-4 of its first) ran to the cap of 50 on most layers.
    """

    damping: float = 0.01
    iterations: int = 50
    tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if not self.damping > 0:
            raise ValueError(f"damping must be positive, got {self.damping}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be non-negative, got {self.tolerance}")

    def apply(self, dense: torch.Tensor, start: torch.Tensor, mask: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """Re-fit the kept weights of ``start`` (out, in) towards the outputs of ``dense``.

        Returns the re-fitted weight (fp32, +0.0 where pruned). A row whose calibration output
        error would rise (possible only through the damping term) keeps its ``start`` weights, so
        the re-fit never increases any row's undamped error.
        """
        if stats.hessian is None:
            raise ValueError("the re-fit needs the layer Hessian; collect stats with_hessian=True")
        target = dense.detach().float()
        hessian = stats.hessian.to(target.device)
        keep = mask.to(target.dtype)
        damped = hessian.clone()
        diagonal = torch.arange(damped.shape[0], device=damped.device)
        damped[diagonal, diagonal] += self.damping * torch.mean(torch.diag(hessian)).clamp_min(1e-12)
        precondition = 1.0 / torch.diag(damped)  # (in,)

        weight = start.detach().float() * keep
        residual = ((target - weight) @ damped) * keep  # negative gradient, (out, in)
        z = residual * precondition
        direction = z.clone()
        rz = (residual * z).sum(1)  # (out,)
        removed = 0.0  # the output error the steps so far took away
        for _ in range(self.iterations):
            curvature = (direction @ damped) * keep
            step = rz / (direction * curvature).sum(1).clamp_min(torch.finfo(torch.float32).tiny)
            weight = weight + step[:, None] * direction
            residual = residual - step[:, None] * curvature
            decrease = float((step * rz).sum())  # an exact line search's drop of ||(W - W')X^T||^2
            removed += decrease
            z = residual * precondition
            rz_next = (residual * z).sum(1)
            direction = z + (rz_next / rz.clamp_min(torch.finfo(torch.float32).tiny))[:, None] * direction
            rz = rz_next
            if decrease <= self.tolerance * removed:
                break

        before = output_error(target - start.float() * keep, hessian)
        after = output_error(target - weight, hessian)
        refitted = torch.where((after <= before)[:, None], weight, start.float())
        return torch.where(mask, refitted, torch.zeros_like(refitted))  # +0.0 where pruned, never -0.0


__all__ = ["LeastSquaresRefit", "output_error"]
