"""The built-in methods, each one line of composition from its config."""

from __future__ import annotations

from eggs_ptp.methods.configs import EggsConfig, MagnitudeConfig, RiaConfig, SparseGPTConfig, WandaConfig
from eggs_ptp.methods.method import Method
from eggs_ptp.methods.registry import register_method
from eggs_ptp.pattern import Pattern
from eggs_ptp.scores import MagnitudeScore, RiaScore, WandaScore
from eggs_ptp.selectors import EggsSelector, TopKSelector
from eggs_ptp.selectors.auto import EggsSettingSearch
from eggs_ptp.updates import LeastSquaresRefit, ObsUpdate


@register_method(MagnitudeConfig)
def magnitude(config: MagnitudeConfig, pattern: Pattern) -> Method:
    return Method(config.name, TopKSelector(), score=MagnitudeScore())


@register_method(WandaConfig)
def wanda(config: WandaConfig, pattern: Pattern) -> Method:
    return Method(config.name, TopKSelector(), score=WandaScore())


@register_method(RiaConfig)
def ria(config: RiaConfig, pattern: Pattern) -> Method:
    return Method(config.name, TopKSelector(), score=RiaScore(config.alpha))


@register_method(SparseGPTConfig)
def sparsegpt(config: SparseGPTConfig, pattern: Pattern) -> Method:
    return Method(
        config.name,
        TopKSelector(),
        update=ObsUpdate(config.damping, config.blocksize),
        refit=LeastSquaresRefit(config.damping) if config.refit else None,
    )


@register_method(EggsConfig)
def eggs(config: EggsConfig, pattern: Pattern) -> Method:
    """With ``update`` the OBS sweep chooses the mask under the guarantee and a re-fit follows;
    without it the RIA score does; ``auto`` searches the selector's settings per layer."""
    selector = EggsSelector(rule=config.rule, b=config.b, tile_height=config.tile_height_for(pattern))
    search = EggsSettingSearch(selector) if config.auto else None
    if config.update:
        return Method(
            config.name,
            selector,
            update=ObsUpdate(config.damping, config.blocksize),
            refit=LeastSquaresRefit(config.damping),
            search=search,
        )
    return Method(config.name, selector, score=RiaScore(config.alpha), search=search)


__all__ = ["eggs", "magnitude", "ria", "sparsegpt", "wanda"]
