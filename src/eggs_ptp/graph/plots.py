"""Figures of layer connectivity: a layer x metric heat map, in-degree histograms, connectivity vs error.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so
nothing global (backend, rcParams, open figures) changes. Each PNG is written to a temporary file
beside the target and renamed into place, so a crash never leaves half an image.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eggs_ptp.graph.metrics import LayerGraphMetrics

HEATMAP_COLUMNS: dict[str, Callable[[LayerGraphMetrics], float]] = {
    "kept": lambda m: m.kept_fraction,
    "in-deg min / out": lambda m: m.in_degree_min / m.shape[0],
    "in-deg mean / out": lambda m: m.in_degree_mean / m.shape[0],
    "zero inputs": lambda m: m.zero_inputs_fraction,
    "inputs < B": lambda m: m.below_b_inputs_fraction,
    "tile cols < B": lambda m: m.tiles.below_b_fraction if m.tiles else float("nan"),
    "spectral gap": lambda m: m.spectral_gap,
    "expansion min": lambda m: m.expansion_min,
}
CONNECTIVITY: dict[str, Callable[[LayerGraphMetrics], float]] = {
    "spectral_gap": lambda m: m.spectral_gap,
    "in_degree_min": lambda m: m.in_degree_min / m.shape[0],
    "expansion_min": lambda m: m.expansion_min,
}


def save_png(figure: Figure, path: Path) -> Path:
    """Render ``figure`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            FigureCanvasAgg(figure).print_png(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def heatmap(layers: Sequence[tuple[str, LayerGraphMetrics]], path: Path, title: str = "") -> Path:
    """Layers down, metrics across; colour is each column rescaled to its own min..max (0.5 if constant).

    Raw values are written in the cells when there are at most 60 layers.
    """
    if not layers:
        raise ValueError("heat map needs at least one layer")
    names = list(HEATMAP_COLUMNS)
    values = np.array([[column(m) for column in HEATMAP_COLUMNS.values()] for _, m in layers], dtype=float)
    low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)  # (metrics,)
    spread = np.where(high > low, high - low, 1.0)
    colour = np.where(high > low, (values - low) / spread, 0.5)  # (layers, metrics), NaN where unknown
    figure = Figure(figsize=(1.1 * len(names) + 4, 0.28 * len(layers) + 1.8), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(colour), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(layers)), [name for name, _ in layers], fontsize=7)
    if len(layers) <= 60:
        for (row, col), value in np.ndenumerate(values):
            if not np.isnan(value):
                ink = "white" if colour[row, col] < 0.5 else "black"
                axes.text(col, row, f"{value:.3g}", ha="center", va="center", fontsize=6, color=ink)
    figure.colorbar(image, ax=axes, label="per-metric scale (min to max)")
    axes.set_title(title or "connectivity per layer")
    return save_png(figure, path)


def _degree_points(metrics: Sequence[LayerGraphMetrics]) -> tuple[np.ndarray, np.ndarray]:
    """Histogram bin centres as in-degree / out, and their counts, over all layers."""
    centres, counts = [np.zeros(0)], [np.zeros(0)]
    for m in metrics:
        histogram = m.in_degree_histogram
        centres.append((np.array(histogram.edges()[:-1]) + (histogram.width - 1) / 2) / m.shape[0])
        counts.append(np.array(histogram.counts, dtype=float))
    return np.concatenate(centres), np.concatenate(counts)


def degree_histograms(methods: Mapping[str, Sequence[LayerGraphMetrics]], path: Path, bins: int = 50) -> Path:
    """One step histogram per method of in-degree / out over all its layers' input channels.

    Dividing by the layer's output count puts layers of different shapes on one axis: the
    fraction of outputs an input channel still reaches.
    """
    points = {label: _degree_points(metrics) for label, metrics in methods.items()}
    everything = np.concatenate([centres for centres, _ in points.values()] or [np.zeros(0)])
    if everything.size == 0:
        raise ValueError("degree histograms need at least one layer")
    low, high = float(everything.min()), float(everything.max())
    edges = np.linspace(low, high if high > low else low + 1e-3, bins + 1)
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    for label, (centres, counts) in points.items():
        if counts.sum():
            axes.hist(centres, bins=edges, weights=counts / counts.sum(), histtype="step", linewidth=1.5, label=label)
    axes.set_xlabel("input degree / outputs (fraction of outputs an input reaches)")
    axes.set_ylabel("fraction of input channels")
    axes.set_title("input-degree distribution")
    axes.legend()
    return save_png(figure, path)


def connectivity_vs_error(
    methods: Mapping[str, Sequence[tuple[LayerGraphMetrics, float | None]]], path: Path, metric: str = "spectral_gap"
) -> Path | None:
    """Scatter of a per-layer connectivity number against reconstruction error; None when no error is known."""
    if metric not in CONNECTIVITY:
        raise ValueError(f"unknown connectivity metric {metric!r}; choose one of {', '.join(CONNECTIVITY)}")
    known = {
        label: [(CONNECTIVITY[metric](m), e) for m, e in points if e is not None] for label, points in methods.items()
    }
    if not any(known.values()):
        return None
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for label, points in known.items():
        if points:
            x, y = zip(*points)
            axes.scatter(x, y, s=14, alpha=0.8, label=label)
    axes.set_xlabel(metric.replace("_", " ") + (" / outputs" if metric == "in_degree_min" else ""))
    axes.set_ylabel("reconstruction error (relative)")
    axes.set_title("per-layer connectivity vs reconstruction error")
    axes.legend()
    return save_png(figure, path)


__all__ = ["CONNECTIVITY", "HEATMAP_COLUMNS", "connectivity_vs_error", "degree_histograms", "heatmap", "save_png"]
