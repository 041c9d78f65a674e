"""Evaluation of dense and pruned models."""

from eggs_ptp.eval.perplexity import PerplexityResult, perplexity
from eggs_ptp.eval.resources import PeakRss, current_rss_mb

__all__ = ["PeakRss", "PerplexityResult", "current_rss_mb", "perplexity"]
