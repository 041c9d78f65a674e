"""Pruning methods: typed configs, and the compositions of a score, a mask selector and optional
update, re-fit and search stages that they build."""

from eggs_ptp.methods import builtin  # noqa: F401  (registers the built-in factories)
from eggs_ptp.methods.configs import (
    CONFIG_TYPES,
    EggsConfig,
    MagnitudeConfig,
    MethodConfig,
    RiaConfig,
    SparseGPTConfig,
    WandaConfig,
    config_type,
    method_config,
    method_from_dict,
    method_help,
    method_names,
    parse_method,
    split_methods,
)
from eggs_ptp.methods.method import Method, PrunedLayer
from eggs_ptp.methods.registry import build_method, register_method

__all__ = [
    "CONFIG_TYPES",
    "EggsConfig",
    "MagnitudeConfig",
    "Method",
    "MethodConfig",
    "PrunedLayer",
    "RiaConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "build_method",
    "config_type",
    "method_config",
    "method_from_dict",
    "method_help",
    "method_names",
    "parse_method",
    "register_method",
    "split_methods",
]
