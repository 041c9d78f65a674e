"""Importance scores: ``(weight (out, in), stats) -> score (out, in)``, larger means keep.

Pure tensor math, no module or model knowledge, so every selector and update can reuse them.
"""

from eggs_ptp.scores.importance import MagnitudeScore, RiaScore, Score, WandaScore

__all__ = ["MagnitudeScore", "RiaScore", "Score", "WandaScore"]
