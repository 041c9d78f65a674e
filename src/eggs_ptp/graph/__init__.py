"""Expander diagnostics: how connected each pruned layer's bipartite graph stayed.

Plots live in :mod:`eggs_ptp.graph.plots`, imported on demand because they need matplotlib.
"""

from eggs_ptp.graph.masks import (
    LayerMask,
    MaskSource,
    infer_nm,
    open_masks,
    select_layers,
    source_name,
)
from eggs_ptp.graph.metrics import (
    DegreeHistogram,
    ExpansionPoint,
    LayerGraphMetrics,
    TileStats,
    degree_histogram,
    expansion_estimate,
    layer_metrics,
    spectral_gap,
    summarise,
    tile_stats,
)

__all__ = [
    "DegreeHistogram",
    "ExpansionPoint",
    "LayerGraphMetrics",
    "LayerMask",
    "MaskSource",
    "TileStats",
    "degree_histogram",
    "expansion_estimate",
    "infer_nm",
    "layer_metrics",
    "open_masks",
    "select_layers",
    "source_name",
    "spectral_gap",
    "summarise",
    "tile_stats",
]
