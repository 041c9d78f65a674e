"""Evaluation of dense and pruned models."""

from eggs_ptp.eval.perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
