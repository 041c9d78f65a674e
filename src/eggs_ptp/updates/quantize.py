"""Quantization of a pruned layer's kept weights: jointly in an OBS sweep, or to nearest.

The sweep (:meth:`~eggs_ptp.updates.obs.ObsUpdate.quantize`) starts from the method's finished fp
layer with its mask fixed, so every mask rule, re-fit and swap composes with it unchanged; each
rounding error is absorbed by the columns after it. Without a Hessian (mask-only methods) the kept
weights are rounded to nearest. Either way the record says what quantization cost on top of pruning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from eggs_ptp.quant import Grid, QuantScheme
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates.obs import ObsUpdate
from eggs_ptp.updates.refit import output_error


@dataclass(frozen=True)
class Quantization:
    """Args:
    scheme: the grid.
    sweep: the OBS sweep that spreads rounding errors; None rounds each kept weight to nearest.
    """

    scheme: QuantScheme
    sweep: ObsUpdate | None = None

    @property
    def needs_hessian(self) -> bool:
        return self.sweep is not None

    def apply(
        self, reference: torch.Tensor, pruned: torch.Tensor, mask: torch.Tensor, stats: LayerStats | None
    ) -> tuple[torch.Tensor, Grid, dict[str, Any]]:
        """Quantize ``pruned`` (out, in; zeros off ``mask``), the layer fitted to ``reference``.

        Returns the quantized weight (fp32, grid values where kept, +0.0 elsewhere), its grid, and
        a record of the errors before and after, relative to ``reference``.
        """
        if self.sweep is not None:
            quantized, grid = self.sweep.quantize(pruned, stats, mask, self.scheme)
        else:
            grid = self.scheme.fit(pruned, mask)
            quantized = torch.where(mask, grid.round(pruned), 0.0)
        reference = reference.float()
        record: dict[str, Any] = {
            "scheme": self.scheme.to_dict(),
            "mode": "sweep" if self.sweep is not None else "nearest",
            "weight_change": float(
                (quantized - pruned.float()).norm() / pruned.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
            ),
        }
        if stats is not None and stats.hessian is not None:
            hessian = stats.hessian.to(reference.device)
            scale = float(output_error(reference, hessian).sum()) or 1.0
            record["recon_error_fp"] = (float(output_error(reference - pruned.float(), hessian).sum()) / scale) ** 0.5
            record["recon_error"] = (float(output_error(reference - quantized, hessian).sum()) / scale) ** 0.5
        return quantized, grid, record


__all__ = ["Quantization"]
