"""Fit a layer to the dense model's outputs, not to the dense layer's.

Every other stage fits a pruned layer ``W'`` to the dense layer on the inputs it sees inside the
already-pruned model, ``min ||X~ W'^T - X~ W^T||``. What the model needs is its dense self's
output there, ``X W^T``, computed on the dense model's own inputs ``X``: fitting that lets the
layer also absorb the error the pruned blocks before it passed on (GPTAQ's asymmetric calibration
does the same for quantisation). Both objectives have the same Hessian ``H = X~^T X~``, so the
change is only in the weight every stage is fitted to:

``||X~ W'^T - X W^T||^2 + lambda ||W' - W||^2 = ||X~ (W' - W*)^T||_(H + lambda I)^2 + const``,
``W* = W + W D^T (H + lambda I)^-1``, with ``D = X~^T (X - X~)`` (:attr:`LayerStats.drift`).

The ridge term pulls ``W*`` towards ``W`` along directions the calibration tokens do not see, and
makes ``W* = W`` exactly where the two streams agree. Any score, selector and update then runs on
``W*`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eggs_ptp.stats import LayerStats


class TargetError(RuntimeError):
    """The dense-model target could not be computed from these statistics."""


@dataclass(frozen=True)
class DenseModelTarget:
    """Args:
    damping: the ridge ``lambda`` as a fraction of the mean Hessian diagonal (as the OBS sweep's).
    """

    damping: float = 0.01

    def __post_init__(self) -> None:
        if not self.damping > 0:
            raise ValueError(f"damping must be positive, got {self.damping}")

    def apply(self, weight: torch.Tensor, stats: LayerStats) -> torch.Tensor:
        """``W*`` for ``weight`` (out, in), fp32; ``weight`` itself when ``stats`` hold no drift
        (an expert matrix, whose tokens the two streams route differently)."""
        drift = stats.drift
        if drift is None:
            return weight.float()
        if stats.hessian is None:
            raise TargetError("the dense-model target needs the layer Hessian; collect stats with_hessian=True")
        w = weight.float()
        damped = stats.hessian.to(w.device).clone()
        diagonal = torch.arange(damped.shape[0], device=damped.device)
        damped[diagonal, diagonal] += self.damping * torch.mean(torch.diag(damped)).clamp_min(1e-12)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info):
            raise TargetError(f"the damped Hessian is not positive definite (damping {self.damping}); raise --damping")
        pull = w @ drift.to(w.device).T  # (out, in): W D^T
        target = w + torch.cholesky_solve(pull.T, factor).T
        if not bool(torch.isfinite(target).all()):
            raise TargetError("NaN or Inf in the dense-model target; check the calibration activations")
        return target


__all__ = ["DenseModelTarget", "TargetError"]
