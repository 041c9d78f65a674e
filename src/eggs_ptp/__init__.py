"""eggs-ptp: one-shot N:M pruning of causal LMs with EGGS-PTP and its baselines."""

from eggs_ptp.api import Evaluation, build_calibration, prune, prune_to_folder
from eggs_ptp.config import OwlAllocation, PruneConfig
from eggs_ptp.methods import (
    EggsConfig,
    MagnitudeConfig,
    MethodConfig,
    RiaConfig,
    SparseGPTConfig,
    WandaConfig,
    parse_method,
)
from eggs_ptp.options import RunOptions
from eggs_ptp.pattern import Pattern
from eggs_ptp.report import PruneReport

__all__ = [
    "EggsConfig",
    "Evaluation",
    "MagnitudeConfig",
    "MethodConfig",
    "OwlAllocation",
    "Pattern",
    "PruneConfig",
    "PruneReport",
    "RiaConfig",
    "RunOptions",
    "SparseGPTConfig",
    "WandaConfig",
    "build_calibration",
    "parse_method",
    "prune",
    "prune_to_folder",
]
