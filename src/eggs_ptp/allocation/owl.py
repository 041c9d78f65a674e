"""Outlier-weighted layerwise sparsity (OWL; Yin et al., 2024).

Blocks whose Wanda scores ``|W_ij| * ||X_j||`` hold more outliers (scores above ``threshold``
times the block's mean) lose fewer weights. Outlier ratios are mapped linearly onto a band of
width ``2 * lambda`` around the target and shifted so the block sparsities average to the target
exactly, as in the reference implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eggs_ptp.models.layers import PrunableLinear
from eggs_ptp.scores import WandaScore
from eggs_ptp.stats import LayerStats


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float) -> float:
    """Fraction of all entries of ``scores`` (one block's layers) above ``threshold`` x their mean."""
    flat = torch.cat([score.reshape(-1).float() for score in scores])
    if flat.numel() == 0:
        raise ValueError("outlier_ratio needs at least one score")
    return float((flat > threshold * flat.mean()).float().mean())


def block_outlier_ratio(layers: Sequence[tuple[PrunableLinear, LayerStats]], threshold: float) -> float:
    """OWL's layerwise outlier distribution entry for one block: Wanda-score outliers of all its layers."""
    score = WandaScore()
    return outlier_ratio([score(layer.weight.float(), stats) for layer, stats in layers], threshold)


def owl_sparsities(ratios: Sequence[float], target: float, lam: float) -> list[float]:
    """Per-block sparsities with mean ``target``: more outliers, lower sparsity.

    Raises:
        ValueError: when the band ``target +/- lam`` leaves [0, 1), so some block could not be
            pruned to its share.
    """
    if not 0 <= target < 1:
        raise ValueError(f"target sparsity must lie in [0, 1), got {target}")
    if not (0 <= target - lam and target + lam < 1):
        raise ValueError(f"OWL band {target} +/- {lam} leaves [0, 1); use a smaller --owl-lambda")
    values = torch.tensor(list(ratios), dtype=torch.float64)
    if values.numel() == 0:
        return []
    spread = values.max() - values.min()
    if spread == 0:
        return [target] * values.numel()
    keep = (values - values.min()) / spread * (2 * lam)
    keep = keep - keep.mean() + (1 - target)
    return [float(s) for s in 1 - keep]


__all__ = ["block_outlier_ratio", "outlier_ratio", "owl_sparsities"]
