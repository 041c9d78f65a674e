"""Each method config type registered against the factory that builds its :class:`Method`."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, TypeVar

from eggs_ptp.methods.configs import MethodConfig
from eggs_ptp.methods.method import Method
from eggs_ptp.pattern import Pattern
from eggs_ptp.updates import (
    BlockReconstruction,
    DenseModelTarget,
    LeastSquaresRefit,
    MaskSwapRefinement,
    ObsUpdate,
    Quantization,
)

C = TypeVar("C", bound=MethodConfig)
Factory = Callable[[C, Pattern], Method]

_FACTORIES: dict[type[MethodConfig], Factory] = {}


def register_method(kind: type[C]) -> Callable[[Factory], Factory]:
    """Register the factory building a :class:`Method` from a ``kind`` config and the run's pattern."""

    def decorate(factory: Factory) -> Factory:
        if kind in _FACTORIES:
            raise ValueError(f"a factory for {kind.__name__} is already registered")
        _FACTORIES[kind] = factory
        return factory

    return decorate


def build_method(config: MethodConfig, pattern: Pattern) -> Method:
    """The stages ``config`` stands for at ``pattern`` (checked against it first): the family's own,
    with the stages every family composes with (:class:`~eggs_ptp.methods.configs.MethodConfig`'s fields)."""
    factory = _FACTORIES.get(type(config))
    if factory is None:
        raise ValueError(
            f"no method is registered for {type(config).__name__}; decorate its factory with @register_method"
        )
    config.check(pattern)
    method = factory(config, pattern)
    damping = getattr(config, "damping", DenseModelTarget.damping)  # the family's, where it has one
    target = DenseModelTarget(damping) if config.target == "model" else None
    swaps = MaskSwapRefinement(damping) if config.swaps else None
    swap_refit = LeastSquaresRefit(damping) if config.swaps else None
    reconstruct = BlockReconstruction(epochs=config.reconstruct) if config.reconstruct else None
    method = replace(
        method,
        target=target,
        # A dense-model target corrects each layer for how its inputs drifted; calibrated on the dense
        # block's inner activations, a layer would correct again what the layers before it in its
        # block already corrected (SmolLM2-135M 2:4: perplexity 1089 instead of 48).
        sequential=config.sequential or target is not None,
        swaps=swaps,
        swap_refit=swap_refit,
        reconstruct=reconstruct,
    )
    scheme = config.quant_scheme
    if scheme is None:
        return method
    # A method with a Hessian quantizes jointly, in its own damping and block size.
    joint = method.needs_hessian and not config.rtn
    sweep = ObsUpdate(damping, getattr(config, "blocksize", ObsUpdate.blocksize)) if joint else None
    return replace(method, quantization=Quantization(scheme, sweep))


__all__ = ["Factory", "build_method", "register_method"]
