"""A method is a score, a selector and an optional update; the layer walk calls only ``prune``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from eggs_ptp.pattern import Pattern
from eggs_ptp.scores import Score
from eggs_ptp.selectors import Selector, select_in_chunks
from eggs_ptp.selectors.auto import EggsSettingSearch
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import LeastSquaresRefit, ObsUpdate, output_error


@dataclass
class PrunedLayer:
    """One layer's pruned weight (out, in), its boolean kept mask, and any per-layer choices made."""

    weight: torch.Tensor
    mask: torch.Tensor
    settings: dict[str, Any] | None = None


@dataclass(frozen=True)
class Method:
    """Args:
    name: the registry name, recorded in ``sparsity.json``.
    selector: turns scores into a kept mask obeying the pattern.
    score: importance of each weight; None lets the update choose the mask inside its sweep.
    update: changes the kept weights after (or while) the mask is chosen.
    refit: re-fits the kept weights of the finished mask to the dense layer's outputs.
    search: per layer, run the stages with each candidate selector and keep the one with the
        lowest calibration reconstruction error; ``selector`` is then only the default.
    """

    name: str
    selector: Selector
    score: Score | None = None
    update: ObsUpdate | None = None
    refit: LeastSquaresRefit | None = None
    search: EggsSettingSearch | None = None

    def __post_init__(self) -> None:
        if self.score is None and self.update is None:
            raise ValueError(f"method {self.name!r} needs a score, an update, or both")

    def describe(self) -> dict[str, str | None]:
        """The resolved stages, e.g. ``EggsSelector(rule='repair', b=1, tile_height=256)``."""
        stages = {
            "score": self.score,
            "selector": self.selector,
            "update": self.update,
            "refit": self.refit,
            "search": self.search,
        }
        return {name: repr(stage) if stage else None for name, stage in stages.items()}

    @property
    def needs_calibration(self) -> bool:
        return self.needs_hessian or bool(self.score and self.score.needs_calibration)

    @property
    def needs_hessian(self) -> bool:
        return self.update is not None or self.refit is not None or self.search is not None

    def prune(self, weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern) -> PrunedLayer:
        """Prune ``weight`` (out, in); the result keeps ``weight``'s dtype."""
        if self.search is None:
            return self._prune_with(self.selector, weight, stats, pattern)
        best, best_error, default_error = None, float("inf"), None
        candidates = self.search.candidates(pattern)
        for selector in candidates:
            result = self._prune_with(selector, weight, stats, pattern)
            error = float(output_error(weight.float() - result.weight.float(), stats.hessian).sum())
            default_error = error if default_error is None else default_error
            if error < best_error:
                best, best_error, chosen = result, error, selector
        reference = float(output_error(weight.float(), stats.hessian).sum()) or 1.0
        best.settings = {
            "rule": chosen.rule,
            "b": chosen.b,
            "tile_height": chosen.tile_height,
            "recon_error": (best_error / reference) ** 0.5,
            "default_recon_error": (default_error / reference) ** 0.5,
            "candidates": len(candidates),
        }
        return best

    def _prune_with(
        self, selector: Selector, weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern
    ) -> PrunedLayer:
        mask = None
        if self.score is not None:
            mask = select_in_chunks(selector, self.score(weight, stats), pattern)
        if self.update is None:
            pruned = torch.where(mask, weight, 0.0)  # +0.0, never -0.0
        else:
            pruned, mask = self.update.apply(weight, stats, pattern, selector, mask=mask)
        if self.refit is not None:
            pruned = self.refit.apply(weight, pruned, mask, stats)
        return PrunedLayer(pruned.to(weight.dtype), mask)


__all__ = ["Method", "PrunedLayer"]
