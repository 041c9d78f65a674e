"""Methods registered by name; the CLI's choices come from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from eggs_ptp.config import PruneConfig
    from eggs_ptp.methods.method import Method


@dataclass(frozen=True)
class _Entry:
    factory: "Callable[[PruneConfig], Method]"
    help: str
    structured_only: bool


_REGISTRY: dict[str, _Entry] = {}


def register_method(
    name: str, help: str, structured_only: bool = False
) -> "Callable[[Callable[[PruneConfig], Method]], Callable[[PruneConfig], Method]]":
    """Register a factory building a :class:`Method` from a run's config; names are unique."""

    def decorate(factory: "Callable[[PruneConfig], Method]") -> "Callable[[PruneConfig], Method]":
        if name in _REGISTRY:
            raise ValueError(f"a method named {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, help, structured_only)
        return factory

    return decorate


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def method_help(name: str) -> str:
    return _REGISTRY[name].help


def is_structured_only(name: str) -> bool:
    return _REGISTRY[name].structured_only


def build_method(config: "PruneConfig") -> "Method":
    if config.method not in _REGISTRY:
        raise ValueError(
            f"unknown method {config.method!r}; choose one of: {', '.join(method_names())}"
        )
    return _REGISTRY[config.method].factory(config)
