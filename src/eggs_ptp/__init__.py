"""eggs-ptp: one-shot N:M pruning of causal LMs with EGGS-PTP and its baselines."""

from eggs_ptp.api import build_calibration, prune
from eggs_ptp.config import PruneConfig
from eggs_ptp.pattern import Pattern
from eggs_ptp.report import PruneReport

__all__ = ["Pattern", "PruneConfig", "PruneReport", "build_calibration", "prune"]
