"""Connectivity of a kept-weight mask seen as a bipartite graph (inputs -> outputs).

A mask ``K`` is a bool tensor (out, in): rows are output neurons, columns input channels, and
``K[o, i]`` is an edge when weight (o, i) was kept. These numbers make the paper's "information
flow" measurable: an input channel with no kept weight is cut off from the layer; a small spectral
gap or a poorly expanding set of inputs means the layer splits into weakly connected parts.

Conventions for degenerate masks (never NaN, never an exception):

* spectral gap: rows and columns with no kept weight are dropped (given weight 0 in ``D^-1/2``,
  which only adds zero singular values). A mask with no kept weight has gap 0.0 (nothing is
  connected). When a single row or column keeps weights there is no sigma_2: the gap is 1.0 (a
  star, or a single edge, is connected).
* expansion: a set of inputs with no kept weights has ratio 0.

Counts go through float32 matrix products on one float copy of the mask, which on CPU are an
order of magnitude faster than reductions over bool tensors and exact below 2^24; the spectral
gap uses float64, since float32 noise of ~1e-7 in sigma_2^2 becomes ~1e-3 in a small sigma_2.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 64  # at most this many bins in a degree histogram
DENSE_SVD_MAX = 512  # dense SVD when the layer's smaller side is at most this, Lanczos above
_LANCZOS_TOL = 1e-5  # ARPACK residual tolerance; gaps then agree with dense SVD to ~1e-9


def _check_mask(mask: Any) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = f"a tensor of dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (out, in) of kept weights, got {kind}; use weight != 0")
    if mask.dim() != 2:
        raise TypeError(f"mask must be 2-D (out, in), got {mask.dim()}-D with shape {tuple(mask.shape)}")
    if mask.numel() == 0:
        raise ValueError(f"mask has shape {tuple(mask.shape)}: a layer needs at least one input and one output")
    return mask.cpu()


def _degrees(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In-degrees (in,) and out-degrees (out,) of a float32 (out, in) 0/1 matrix, as int64."""
    in_degree = torch.ones(weights.shape[0]) @ weights
    out_degree = weights @ torch.ones(weights.shape[1])
    return in_degree.round().long(), out_degree.round().long()


@dataclass(frozen=True)
class DegreeHistogram:
    """Counts of degrees: bin ``i`` holds degrees in ``[start + i*width, start + (i+1)*width)``.

    Bins span the observed min..max degree, one degree per bin when that range has at most
    ``HISTOGRAM_BINS`` values, otherwise ``width`` grows so there are at most that many bins; this
    keeps JSON small for wide layers while resolving the narrow spread N:M masks produce.
    """

    start: int
    width: int
    counts: tuple[int, ...]

    def edges(self) -> list[int]:
        return [self.start + i * self.width for i in range(len(self.counts) + 1)]


def degree_histogram(degrees: torch.Tensor, max_bins: int = HISTOGRAM_BINS) -> DegreeHistogram:
    low, high = int(degrees.min()), int(degrees.max())
    width = max(1, math.ceil((high - low + 1) / max_bins))
    counts = torch.bincount((degrees.long() - low) // width, minlength=(high - low) // width + 1)
    return DegreeHistogram(low, width, tuple(int(c) for c in counts))


@dataclass(frozen=True)
class TileStats:
    """Input columns inside full ``tile_height`` x ``m`` tiles that keep 0, or fewer than ``b``, weights.

    A "tile column" is one input channel within one tile; tiles that would run past the last row
    or column are left out. No full tile (a layer smaller than one tile) gives zero counts.
    """

    n: int
    m: int
    tile_height: int
    b: int
    tile_columns: int
    zero_count: int
    zero_fraction: float
    below_b_count: int
    below_b_fraction: float


def _tile_stats(weights: torch.Tensor, n: int, m: int, tile_height: int | None, b: int) -> TileStats:
    height = tile_height or m
    if n < 1 or m <= n or height < 1 or b < 0:
        raise ValueError(f"tile stats need 0 < n < m, tile_height >= 1 and b >= 0, got {n}:{m}, {height}, b={b}")
    rows, cols = (weights.shape[0] // height) * height, (weights.shape[1] // m) * m
    kept = weights[:rows, :cols].reshape(rows // height, height, cols).sum(dim=1)  # (tiles down, cols)
    total = kept.numel()
    zero, below = int((kept == 0).sum()), int((kept < b).sum())
    return TileStats(
        n, m, height, b, total, zero, zero / total if total else 0.0, below, below / total if total else 0.0
    )


def tile_stats(mask: torch.Tensor, n: int, m: int, tile_height: int | None = None, b: int = 1) -> TileStats:
    """Per-tile column counts (tiles ``tile_height`` x m, default m x m): what EGGS's B-per-tile rule is about."""
    return _tile_stats(_check_mask(mask).to(torch.float32), n, m, tile_height, b)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run LAPACK on one thread: threaded SVD of these small matrices stalls 50-100x when the
    cores are oversubscribed (measured: 19 s instead of 0.5 s for 512 x 11008), and one thread is fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _spectral_gap(mask: torch.Tensor, in_degree: torch.Tensor, out_degree: torch.Tensor, dense_max: int) -> float:
    edges = float(out_degree.sum())
    if edges == 0:
        return 0.0
    if min(int((out_degree > 0).sum()), int((in_degree > 0).sum())) == 1:
        return 1.0
    scale_out = torch.where(out_degree > 0, out_degree.double().rsqrt(), 0.0)  # (out,) D_out^-1/2
    scale_in = torch.where(in_degree > 0, in_degree.double().rsqrt(), 0.0)  # (in,) D_in^-1/2
    weights = mask.to(torch.float64)  # (out, in); float32 products put sqrt(1e-7) noise into small sigma_2
    if min(mask.shape) <= dense_max:
        with _one_thread():
            sigma = torch.linalg.svdvals(scale_out[:, None] * weights * scale_in[None, :])
        return float(min(1.0, max(0.0, 1.0 - sigma[1] / sigma[0])))
    # A sqrt(d_in) = sqrt(d_out) and both have norm sqrt(edges): that pair has sigma_1 = 1 for any
    # graph. Deflating it leaves sigma_2^2 as the largest eigenvalue of the smaller Gram matrix.
    if mask.shape[0] <= mask.shape[1]:  # A A^T, (out, out)
        outer, inner_squared, forward, backward = scale_out, scale_in.square(), weights.T, weights
        top = out_degree.double().sqrt() / math.sqrt(edges)
    else:  # A^T A, (in, in)
        outer, inner_squared, forward, backward = scale_in, scale_out.square(), weights, weights.T
        top = in_degree.double().sqrt() / math.sqrt(edges)

    def gram(vector: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64).reshape(-1))
        product = outer * (backward @ (inner_squared * (forward @ (outer * x))))
        return (product - top * (top @ x)).numpy()

    size = top.shape[0]
    log.debug("spectral gap of a %s mask by Lanczos on a %d x %d Gram matrix", tuple(mask.shape), size, size)
    start = torch.rand(size, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    operator = LinearOperator((size, size), matvec=gram, dtype=np.float64)
    (largest,) = eigsh(operator, k=1, which="LA", v0=start, tol=_LANCZOS_TOL, return_eigenvectors=False)
    return float(min(1.0, max(0.0, 1.0 - math.sqrt(max(0.0, largest)))))


def spectral_gap(mask: torch.Tensor, dense_max: int = DENSE_SVD_MAX) -> float:
    """``1 - sigma_2 / sigma_1`` of ``D_out^-1/2 K D_in^-1/2``: 0 when disconnected, 1 when complete bipartite.

    A layer whose smaller side is at most ``dense_max`` takes a dense float64 SVD. Larger ones run
    Lanczos (ARPACK ``eigsh``, seeded start vector, so results repeat) on the smaller Gram matrix
    with the known top singular pair deflated, multiplying by a float64 copy of the mask: dense
    products beat a sparse matrix at N:M densities, and A itself is never formed.
    """
    mask = _check_mask(mask)
    return _spectral_gap(mask, *_degrees(mask.to(torch.float32)), dense_max)


@dataclass(frozen=True)
class ExpansionPoint:
    """Smallest ``|Gamma(T)| / |T|`` found over input sets of one size, and which search found it."""

    size: int
    min_ratio: float
    method: str  # "random" or "greedy"
    random_min: float
    greedy_min: float


def expansion_sizes(n_inputs: int, fraction: float = 0.01) -> list[int]:
    """1, 2, 4, ... up to ``max(1, floor(fraction * n_inputs))``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"expansion fraction must be in (0, 1], got {fraction}")
    largest = max(1, int(fraction * n_inputs))
    return [2**p for p in range(largest.bit_length())]


def _rows_total(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum of some rows of (out, in) ``weights``: a gather for a few rows, one product for many."""
    if rows.numel() * 16 < weights.shape[0]:
        return weights.index_select(0, rows).sum(dim=0)
    indicator = torch.zeros(weights.shape[0])
    indicator[rows] = 1.0
    return indicator @ weights


def _expansion(
    mask: torch.Tensor,
    weights: torch.Tensor,
    in_degree: torch.Tensor,
    fraction: float,
    random_sets: int,
    greedy_starts: int,
    seed: int,
) -> tuple[ExpansionPoint, ...]:
    if random_sets < 1 or greedy_starts < 1:
        raise ValueError(f"expansion needs random_sets >= 1 and greedy_starts >= 1, got {random_sets}, {greedy_starts}")
    n_in = mask.shape[1]
    sizes = expansion_sizes(n_in, fraction)
    by_input = mask.T.contiguous()  # (in, out)
    generator = torch.Generator().manual_seed(seed)
    random_min = []
    for size in sizes:
        chosen = torch.rand(random_sets, n_in, generator=generator).topk(size, dim=1).indices  # (sets, size)
        reached = by_input[chosen].any(dim=1).sum(dim=1)  # (sets,)
        random_min.append(float(reached.min()) / size)
    greedy_min = [math.inf] * len(sizes)
    degree = in_degree.float()  # (in,)
    for start in in_degree.argsort(stable=True)[:greedy_starts].tolist():
        covered = mask[:, start].clone()  # (out,)
        fresh = degree - _rows_total(weights, covered.nonzero().squeeze(1))  # (in,) outputs each would add
        taken = torch.zeros(n_in, dtype=torch.bool)
        taken[start] = True
        for size in range(1, sizes[-1] + 1):
            if size > 1:
                pick = int(fresh.masked_fill(taken, math.inf).argmin())
                added = (mask[:, pick] & ~covered).nonzero().squeeze(1)  # newly reached outputs
                fresh -= _rows_total(weights, added)
                covered[added] = True
                taken[pick] = True
            if size & (size - 1) == 0:
                index = size.bit_length() - 1
                greedy_min[index] = min(greedy_min[index], float(covered.sum()) / size)
    return tuple(
        ExpansionPoint(size, min(r, g), "greedy" if g < r else "random", r, g)
        for size, r, g in zip(sizes, random_min, greedy_min)
    )


def expansion_estimate(
    mask: torch.Tensor, fraction: float = 0.01, random_sets: int = 32, greedy_starts: int = 4, seed: int = 0
) -> tuple[ExpansionPoint, ...]:
    """Estimate vertex expansion of input sets: an upper bound on the true minimum, not a certificate.

    Sizes are 1, 2, 4, ... up to ``fraction`` of the inputs. Random: ``random_sets`` seeded
    uniform sets per size. Greedy: from each of the ``greedy_starts`` lowest-degree inputs,
    repeatedly add the input that reaches the fewest outputs not yet reached, recording the ratio
    as the set passes each size. For large sets the ratio is capped by ``out / |T|``.
    """
    mask = _check_mask(mask)
    weights = mask.to(torch.float32)
    return _expansion(mask, weights, _degrees(weights)[0], fraction, random_sets, greedy_starts, seed)


@dataclass(frozen=True)
class LayerGraphMetrics:
    """Every connectivity number of one layer's mask; ``to_dict`` is JSON-ready."""

    shape: tuple[int, int]  # (out, in)
    kept_fraction: float
    in_degree_min: int
    in_degree_mean: float
    in_degree_max: int
    in_degree_histogram: DegreeHistogram
    out_degree_min: int
    out_degree_mean: float
    out_degree_max: int
    b: int
    zero_inputs: int
    zero_inputs_fraction: float
    below_b_inputs: int
    below_b_inputs_fraction: float
    tiles: TileStats | None
    spectral_gap: float
    expansion: tuple[ExpansionPoint, ...]
    expansion_min: float
    expansion_is_estimate: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_metrics(
    mask: torch.Tensor,
    b: int = 1,
    pattern: tuple[int, int] | None = None,
    tile_height: int | None = None,
    expansion_fraction: float = 0.01,
    random_sets: int = 32,
    greedy_starts: int = 4,
    seed: int = 0,
    dense_max: int = DENSE_SVD_MAX,
) -> LayerGraphMetrics:
    """All metrics of one mask; ``pattern=(n, m)`` adds the per-tile counts (tiles ``tile_height`` x m)."""
    mask = _check_mask(mask)
    if b < 0:
        raise ValueError(f"b must be >= 0, got {b}")
    weights = mask.to(torch.float32)  # (out, in), shared by every count below
    in_degree, out_degree = _degrees(weights)  # (in,), (out,)
    n_in = mask.shape[1]
    zero, below = int((in_degree == 0).sum()), int((in_degree < b).sum())
    expansion = _expansion(mask, weights, in_degree, expansion_fraction, random_sets, greedy_starts, seed)
    return LayerGraphMetrics(
        shape=(mask.shape[0], n_in),
        kept_fraction=float(in_degree.sum()) / mask.numel(),
        in_degree_min=int(in_degree.min()),
        in_degree_mean=float(in_degree.double().mean()),
        in_degree_max=int(in_degree.max()),
        in_degree_histogram=degree_histogram(in_degree),
        out_degree_min=int(out_degree.min()),
        out_degree_mean=float(out_degree.double().mean()),
        out_degree_max=int(out_degree.max()),
        b=b,
        zero_inputs=zero,
        zero_inputs_fraction=zero / n_in,
        below_b_inputs=below,
        below_b_inputs_fraction=below / n_in,
        tiles=_tile_stats(weights, *pattern, tile_height, b) if pattern else None,
        spectral_gap=_spectral_gap(mask, in_degree, out_degree, dense_max),
        expansion=expansion,
        expansion_min=min(point.min_ratio for point in expansion),
    )


def summarise(metrics: list[LayerGraphMetrics]) -> dict[str, Any]:
    """Model-level numbers: the columns the method comparison reports next to perplexity."""
    if not metrics:
        keys = ("in_degree_min_mean", "in_degree_min_worst", "mean_spectral_gap", "expansion_min")
        return {"layers": 0, "zero_inputs": 0, **dict.fromkeys(keys)}
    minima = [m.in_degree_min for m in metrics]
    return {
        "layers": len(metrics),
        "in_degree_min_mean": sum(minima) / len(minima),
        "in_degree_min_worst": min(minima),
        "zero_inputs": sum(m.zero_inputs for m in metrics),
        "mean_spectral_gap": sum(m.spectral_gap for m in metrics) / len(metrics),
        "expansion_min": min(m.expansion_min for m in metrics),
    }


__all__ = [
    "DENSE_SVD_MAX",
    "HISTOGRAM_BINS",
    "DegreeHistogram",
    "ExpansionPoint",
    "LayerGraphMetrics",
    "TileStats",
    "degree_histogram",
    "expansion_estimate",
    "expansion_sizes",
    "layer_metrics",
    "spectral_gap",
    "summarise",
    "tile_stats",
]
