"""The built-in methods, each one line of composition."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eggs_ptp.methods.method import Method
from eggs_ptp.methods.registry import register_method
from eggs_ptp.scores import MagnitudeScore, RiaScore, WandaScore
from eggs_ptp.selectors import EggsSelector, TopKSelector
from eggs_ptp.selectors.auto import EggsSettingSearch
from eggs_ptp.updates import LeastSquaresRefit, ObsUpdate

if TYPE_CHECKING:
    from eggs_ptp.config import PruneConfig

# EGGS tile height when none is given, in multiples of M: the best EGGS setting in
# benchmarks/results/prune_grid_64x512.md (repair, B = 1, H = 64M), though not better than RIA beyond noise.
DEFAULT_TILE_FACTOR = 64


@register_method("magnitude", "|W|, no calibration needed")
def _magnitude(config: "PruneConfig") -> Method:
    return Method("magnitude", TopKSelector(), score=MagnitudeScore())


@register_method("wanda", "|W| * ||X_j|| (Sun et al., 2023)")
def _wanda(config: "PruneConfig") -> Method:
    return Method("wanda", TopKSelector(), score=WandaScore())


@register_method("ria", "relative importance * ||X_j||^a (Zhang et al., 2024)")
def _ria(config: "PruneConfig") -> Method:
    return Method("ria", TopKSelector(), score=RiaScore(config.alpha))


@register_method("sparsegpt", "OBS saliency with weight update (Frantar & Alistarh, 2023)")
def _sparsegpt(config: "PruneConfig") -> Method:
    return Method("sparsegpt", TopKSelector(), update=ObsUpdate(config.damping, config.blocksize))


@register_method(
    "sparsegpt+refit", "SparseGPT, then a least-squares re-fit of the kept weights to the dense outputs"
)
def _sparsegpt_refit(config: "PruneConfig") -> Method:
    return Method("sparsegpt+refit", TopKSelector(), update=ObsUpdate(config.damping, config.blocksize),
                  refit=LeastSquaresRefit(config.damping))


def _eggs_stages(config: "PruneConfig") -> dict[str, EggsSelector | EggsSettingSearch | None]:
    """The configured EGGS selector and, with ``auto``, the per-layer search around it."""
    pattern = config.parsed_pattern
    if not 0 <= config.b <= pattern.n:
        raise ValueError(f"b must lie in 0..N = 0..{pattern.n} for pattern {pattern}, got {config.b}")
    tile_height = config.tile_height or DEFAULT_TILE_FACTOR * pattern.m
    if tile_height < pattern.m or tile_height % pattern.m:
        raise ValueError(f"tile_height must be a positive multiple of M = {pattern.m}, got {tile_height}")
    selector = EggsSelector(rule=config.rule, b=config.b, tile_height=tile_height)
    return {"selector": selector, "search": EggsSettingSearch(selector) if config.auto else None}


@register_method(
    "eggs",
    "RIA score + expander guarantee: every input keeps >= B per tile (EGGS-PTP)",
    structured_only=True,
)
def _eggs(config: "PruneConfig") -> Method:
    return Method("eggs", score=RiaScore(config.alpha), **_eggs_stages(config))


@register_method(
    "eggs+update",
    "EGGS guarantee on the OBS saliency inside SparseGPT's sweep, then a least-squares re-fit",
    structured_only=True,
)
def _eggs_update(config: "PruneConfig") -> Method:
    return Method("eggs+update", update=ObsUpdate(config.damping, config.blocksize),
                  refit=LeastSquaresRefit(config.damping), **_eggs_stages(config))
