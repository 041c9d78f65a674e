"""A method is a score, a selector and optional updates; the layer walk calls only ``prune``, and
reads from the method how statistics are to be collected (``needs_*``, ``sequential``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import Grid
from eggs_ptp.scores import Score
from eggs_ptp.selectors import EggsSelector, Selector, select_in_chunks
from eggs_ptp.selectors.auto import EggsSettingSearch
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import (
    BlockReconstruction,
    DenseModelTarget,
    LeastSquaresRefit,
    MaskSwapRefinement,
    ObsUpdate,
    Quantization,
    output_error,
)


@dataclass
class PrunedLayer:
    """One layer's pruned weight (out, in), its boolean kept mask, any per-layer choices made, and
    the grid its kept weights lie on when quantized."""

    weight: torch.Tensor
    mask: torch.Tensor
    settings: dict[str, Any] | None = None
    grid: Grid | None = None


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
    target: fit every stage to the dense model's outputs rather than the dense layer's; the walk
        then carries the dense model's activations beside the pruned model's.
    sequential: calibrate each layer on the outputs of the already-pruned layers of its own block,
        one group of layers sharing an input at a time, instead of all on the dense block's.
    swaps: after the update (and re-fit), improve the mask by exact swaps inside each M-group
        under the layer's reconstruction error, keeping an EGGS selector's guarantee; the kept
        weights are then re-fitted (``swap_refit``), since each swap re-fits only the weight it keeps.
    reconstruct: once a block is pruned, train its linear layers' kept weights together so that the
        block's outputs match the dense block's (the dense model's, with ``target``).
    quantization: last, round the finished layer's kept weights to an integer grid (jointly in an
        OBS sweep where the method has a Hessian).
    """

    name: str
    selector: Selector
    score: Score | None = None
    update: ObsUpdate | None = None
    refit: LeastSquaresRefit | None = None
    search: EggsSettingSearch | None = None
    target: DenseModelTarget | None = None
    sequential: bool = False
    swaps: MaskSwapRefinement | None = None
    swap_refit: LeastSquaresRefit | None = None
    reconstruct: BlockReconstruction | None = None
    quantization: Quantization | None = None

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
            "target": self.target,
            "swaps": self.swaps,
            "swap_refit": self.swap_refit,
            "reconstruct": self.reconstruct,
            "quantization": self.quantization,
        }
        described = {name: repr(stage) if stage else None for name, stage in stages.items()}
        described["sequential"] = "each group of layers sharing an input, in block order" if self.sequential else None
        return described

    @property
    def needs_calibration(self) -> bool:
        scored = bool(self.score and self.score.needs_calibration)
        return self.needs_hessian or scored or self.reconstruct is not None

    @property
    def needs_hessian(self) -> bool:
        stages = (self.update, self.refit, self.search, self.target, self.swaps)
        return any(stage is not None for stage in stages) or bool(self.quantization and self.quantization.needs_hessian)

    @property
    def needs_dense_stream(self) -> bool:
        return self.target is not None

    def prune(self, weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern) -> PrunedLayer:
        """Prune ``weight`` (out, in); the result keeps ``weight``'s dtype."""
        reference = weight if self.target is None else self.target.apply(weight, stats)
        result = self._search(reference, stats, pattern)
        settings = dict(result.settings or {})
        if self.target is not None:
            settings["dense_target_shift"] = float(
                (reference - weight.float()).norm() / weight.float().norm().clamp_min(1e-30)
            )
        if self.quantization is not None:
            result.weight, result.grid, settings["quantization"] = self.quantization.apply(
                reference, result.weight, result.mask, stats
            )
        result.weight = result.weight.to(weight.dtype)
        result.settings = settings or None
        return result

    def _search(self, weight: torch.Tensor, stats: LayerStats | None, pattern: Pattern) -> PrunedLayer:
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
            **(best.settings or {}),
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
        settings = None
        if self.swaps is not None:
            eggs = isinstance(selector, EggsSelector) and selector.b
            guarantee = (selector.b, selector.tile_height or pattern.m) if eggs else None
            pruned, mask, settings = self.swaps.apply(weight, pruned, mask, stats, pattern, guarantee)
            if self.swap_refit is not None:
                pruned = self.swap_refit.apply(weight, pruned, mask, stats)
            settings = {"swaps": settings}
        return PrunedLayer(pruned.to(weight.dtype), mask, settings)


__all__ = ["Method", "PrunedLayer"]
