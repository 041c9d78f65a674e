import math

import pytest
import torch

import eggs_ptp.updates.swaps as swaps
from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors import EggsSelector, GuaranteeError, TopKSelector, check_guarantee, select_nm
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import ObsUpdate
from eggs_ptp.updates.swaps import MaskSwapRefinement


def stats_from(x: torch.Tensor) -> LayerStats:
    stats = LayerStats(x.shape[1], with_hessian=True)
    stats.add(x)
    return stats


def correlated_layer(seed: int, rows: int = 6, cols: int = 8, tokens: int = 256):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=generator) @ torch.randn(cols, cols, generator=generator)
    return torch.randn(rows, cols, generator=generator), stats_from(x), generator


def damped(stats: LayerStats, damping: float = 0.01) -> torch.Tensor:
    h = stats.hessian.double()
    return h + damping * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=torch.float64)


def row_errors(w: torch.Tensor, pruned: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    d = (w - pruned).double()
    return ((d @ h) * d).sum(-1)


def single_swaps(w, pruned, mask, h, m):
    """Every (row, pruned-to-be j, kept-to-be i, best value of i, error change), by brute force.

    The error is quadratic in the new weight, so its minimum follows from three evaluations.
    """
    found = []
    for r in range(w.shape[0]):
        base = row_errors(w[r], pruned[r], h)
        for start in range(0, w.shape[1], m):
            group = range(start, start + m)
            for j in (c for c in group if mask[r, c]):
                for i in (c for c in group if not mask[r, c]):
                    candidate = pruned[r].double().clone()
                    candidate[j] = 0.0
                    values = []
                    for v in (0.0, 1.0, -1.0):
                        candidate[i] = v
                        values.append(float(row_errors(w[r], candidate, h)))
                    e0, e1, em = values
                    curvature, slope = (e1 + em) / 2 - e0, (e1 - em) / 2
                    found.append((r, j, i, -slope / (2 * curvature), e0 - slope**2 / (4 * curvature) - float(base)))
    return found


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(4, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_one_round_applies_each_rows_best_swap_at_its_optimal_value(pattern, seed):
    w, stats, generator = correlated_layer(seed)
    mask = select_nm(torch.rand(w.shape, generator=generator), pattern.n, pattern.m)
    start = (w + 0.3 * torch.randn(w.shape, generator=generator)) * mask  # kept weights off their optimum too
    h = damped(stats)
    out, kept, record = MaskSwapRefinement(max_rounds=1, tolerance=0.0).apply(w, start, mask, stats, pattern)
    candidates = single_swaps(w, start, mask, h, pattern.m)
    before, after = row_errors(w, start, h), row_errors(w, out, h)
    improved = 0
    for r in range(w.shape[0]):
        _, j, i, value, change = min((c for c in candidates if c[0] == r), key=lambda c: c[4])
        if change >= 0:
            assert torch.equal(kept[r], mask[r]) and torch.equal(out[r], start[r]), r
            continue
        improved += 1
        expected = mask[r].clone()
        expected[j], expected[i] = False, True
        assert torch.equal(kept[r], expected), r
        assert out[r, i].item() == pytest.approx(value, rel=1e-4, abs=1e-5)
        others = torch.ones(w.shape[1], dtype=torch.bool)
        others[[i, j]] = False
        assert torch.equal(out[r, others], start[r, others])
        assert float(after[r] - before[r]) == pytest.approx(change, rel=1e-3, abs=1e-4 * float(before[r]))
    assert record["swaps"] == improved >= w.shape[0] // 2 and record["rounds"] == 1


def test_diagonal_hessian_reaches_the_known_optimal_mask():
    # Without coupling, a weight's error is w^2 H_ii whether pruned or not and a kept weight's best
    # value is its dense one: the best 2:4 mask keeps the two largest w^2 H_ii, here columns 2 and 3.
    w = torch.tensor([[1.0, 2.0, 3.0, 1.0]])
    stats = LayerStats(4, with_hessian=True)
    stats.hessian = torch.diag(torch.tensor([1.0, 1.0, 1.0, 16.0]))
    mask = torch.tensor([[True, True, False, False]])
    out, kept, record = MaskSwapRefinement().apply(w, w * mask, mask, stats, Pattern(2, 4))
    assert torch.equal(kept, torch.tensor([[False, False, True, True]]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 3.0, 1.0]]))
    assert record["swaps"] == 2 and record["rounds"] == 2 and record["converged"]
    # 1 * 1 + 2^2 * 1 of 1 + 4 + 9 + 16 output energy, against 9 + 16 before.
    assert record["recon_error_before"] == pytest.approx(math.sqrt(25 / 30), rel=1e-5)
    assert record["recon_error_after"] == pytest.approx(math.sqrt(5 / 30), rel=1e-5)


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(4, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_converged_rows_have_no_improving_swap_and_no_row_got_worse(pattern, seed):
    w, stats, generator = correlated_layer(seed, rows=8, cols=16)
    mask = select_nm(w.abs(), pattern.n, pattern.m)
    start = (w + 0.2 * torch.randn(w.shape, generator=generator)) * mask
    h = damped(stats)
    out, kept, record = MaskSwapRefinement().apply(w, start, mask, stats, pattern)
    assert record["converged"] and record["swaps"] > 0
    before, after = row_errors(w, start, h), row_errors(w, out, h)
    assert (after <= before * (1 + 1e-6)).all()
    for r, _, _, _, change in single_swaps(w, out, kept, h, pattern.m):
        assert change >= -1e-4 * float(after[r]), r


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(4, 8)])
def test_keeps_n_of_m_with_positive_zeros_and_agrees_with_its_weight(pattern):
    w, stats, _ = correlated_layer(4, rows=16, cols=32)
    pruned, mask = ObsUpdate().apply(w, stats, pattern, TopKSelector())
    out, kept, record = MaskSwapRefinement().apply(w, pruned, mask, stats, pattern)
    assert record["swaps"] > 0 and out.dtype == torch.float32 and kept.dtype == torch.bool
    assert (kept.reshape(16, -1, pattern.m).sum(-1) == pattern.n).all()
    assert torch.equal(out != 0, kept)
    assert not torch.signbit(out[~kept]).any()


def test_a_swap_never_keeps_an_exact_zero():
    # Pruning the overshooting weight 0 lowers the error, but the only columns it could go to have
    # a dense weight of 0 and no coupling: their best value is 0, which the mask could not show.
    w = torch.tensor([[1.0, 0.5, 0.0, 0.0]])
    stats = LayerStats(4, with_hessian=True)
    stats.hessian = torch.eye(4)
    mask = torch.tensor([[True, True, False, False]])
    start = torch.tensor([[3.0, 0.5, 0.0, 0.0]])
    out, kept, record = MaskSwapRefinement().apply(w, start, mask, stats, Pattern(2, 4))
    assert torch.equal(kept, mask) and torch.equal(out, start) and record["swaps"] == 0


def test_same_inputs_give_identical_outputs_and_row_chunks_change_nothing(monkeypatch):
    w, stats, _ = correlated_layer(5, rows=24, cols=32)
    pruned, mask = ObsUpdate().apply(w, stats, Pattern(2, 4), TopKSelector())
    refine = MaskSwapRefinement()
    first = refine.apply(w, pruned, mask, stats, Pattern(2, 4), guarantee=None)
    second = refine.apply(w, pruned, mask, stats, Pattern(2, 4))
    monkeypatch.setattr(swaps, "CHUNK_ELEMENTS", 64)  # a few rows per temporary
    chunked = refine.apply(w, pruned, mask, stats, Pattern(2, 4))
    for other in (second, chunked):
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]) and first[2] == other[2]


@pytest.mark.parametrize(
    ("pattern", "b", "tile_height"),
    [(Pattern(2, 4), 1, 4), (Pattern(2, 4), 2, 8), (Pattern(4, 8), 2, 8), (Pattern(4, 8), 3, 16)],
)
@pytest.mark.parametrize("seed", range(3))
def test_guarantee_holds_after_refinement_and_the_error_still_falls(pattern, b, tile_height, seed):
    w, stats, _ = correlated_layer(seed, rows=2 * tile_height + 3, cols=32)  # full tiles and a tail
    selector = EggsSelector("repair", b=b, tile_height=tile_height)
    pruned, mask = ObsUpdate().apply(w, stats, pattern, selector)
    h = damped(stats)
    out, kept, record = MaskSwapRefinement().apply(w, pruned, mask, stats, pattern, guarantee=(b, tile_height))
    check_guarantee(kept, pattern.n, pattern.m, b, tile_height)
    assert torch.equal(out != 0, kept)
    before, after = row_errors(w, pruned, h), row_errors(w, out, h)
    assert (after <= before * (1 + 1e-6)).all()
    assert after.sum() < before.sum() * 0.99
    assert record["converged"]


def test_the_guarantee_binds_where_unconstrained_swaps_would_break_it():
    # 2:4 with B = N and tile height M leaves every full-tile column exactly B: no swap is allowed
    # there, while the tail rows, which only need N:M, still swap.
    pattern = Pattern(2, 4)
    w, stats, _ = correlated_layer(6, rows=11, cols=32)
    pruned, mask = ObsUpdate().apply(w, stats, pattern, EggsSelector("repair", b=2, tile_height=4))
    refine = MaskSwapRefinement()
    free = refine.apply(w, pruned, mask, stats, pattern)[1]
    with pytest.raises(GuaranteeError):
        check_guarantee(free, 2, 4, 2, 4)
    out, kept, _ = refine.apply(w, pruned, mask, stats, pattern, guarantee=(2, 4))
    assert torch.equal(kept[:8], mask[:8]) and torch.equal(out[:8], pruned[:8])
    assert not torch.equal(kept[8:], mask[8:])


def test_lowers_sparsegpts_error_on_a_correlated_layer():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(512, 64, generator=generator) @ torch.randn(64, 64, generator=generator)
    w = torch.randn(32, 64, generator=generator)
    stats = stats_from(x)
    pattern = Pattern(2, 4)
    pruned, mask = ObsUpdate().apply(w, stats, pattern, TopKSelector())
    out, _, record = MaskSwapRefinement().apply(w, pruned, mask, stats, pattern)
    h = damped(stats)
    before, after = row_errors(w, pruned, h), row_errors(w, out, h)
    assert (after <= before * (1 + 1e-6)).all()
    assert after.sum() < before.sum() * 0.95
    undamped = stats.hessian.double()
    reference = float(row_errors(w, torch.zeros_like(w), undamped).sum())
    for key, weight in (("recon_error_before", pruned), ("recon_error_after", out)):
        expected = math.sqrt(float(row_errors(w, weight, undamped).sum()) / reference)
        assert record[key] == pytest.approx(expected, rel=1e-3)
    assert record["recon_error_after"] < record["recon_error_before"]


def test_rejects_what_it_cannot_refine():
    w, stats, _ = correlated_layer(0)
    mask = select_nm(w.abs(), 2, 4)
    refine = MaskSwapRefinement()
    with pytest.raises(ValueError, match="N:M"):
        refine.apply(w, w * mask, mask, stats, Pattern(sparsity=0.5))
    with pytest.raises(ValueError, match="Hessian"):
        refine.apply(w, w * mask, mask, LayerStats(8), Pattern(2, 4))
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        refine.apply(w, w * mask, torch.ones_like(mask), stats, Pattern(2, 4))
    for bad in (float("nan"), float("inf")):
        broken = w.clone()
        broken[0, 0] = bad
        with pytest.raises(ValueError, match="dense weight contains NaN or Inf"):
            refine.apply(broken, w * mask, mask, stats, Pattern(2, 4))
    stats.hessian = stats.hessian.clone()
    stats.hessian[1, 2] = float("inf")
    with pytest.raises(ValueError, match="Hessian contains NaN or Inf"):
        refine.apply(w, w * mask, mask, stats, Pattern(2, 4))


def test_rejects_a_start_that_breaks_the_guarantee_and_bad_settings():
    w, stats, _ = correlated_layer(0, rows=4)
    mask = torch.tensor([[True, True, False, False] * 2] * 4)  # columns 2, 3 of each tile keep none
    with pytest.raises(GuaranteeError):
        MaskSwapRefinement().apply(w, w * mask, mask, stats, Pattern(2, 4), guarantee=(1, 4))
    for settings in ({"damping": 0.0}, {"max_rounds": 0}, {"tolerance": -1e-3}):
        with pytest.raises(ValueError, match=next(iter(settings))):
            MaskSwapRefinement(**settings)
