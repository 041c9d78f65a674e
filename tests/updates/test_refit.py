import pytest
import torch

from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors import EggsSelector, TopKSelector, select_nm
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import LeastSquaresRefit, ObsUpdate, output_error


def stats_from(x: torch.Tensor) -> LayerStats:
    stats = LayerStats(x.shape[1], with_hessian=True)
    stats.add(x)
    return stats


def correlated_layer(seed: int, rows: int = 12, cols: int = 16, tokens: int = 400):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=generator) @ torch.randn(cols, cols, generator=generator)
    return torch.randn(rows, cols, generator=generator), stats_from(x)


def test_orthogonal_inputs_leave_kept_weights_at_their_dense_values():
    # H = c I: no input can stand in for another, so the best kept weights are the dense ones.
    w = torch.tensor([[4.0, -1.0, 3.0, 0.5], [1.0, 2.0, -3.0, 0.25]])
    stats = LayerStats(4, with_hessian=True)
    stats.hessian = torch.eye(4) * 3.0
    mask = select_nm(w.abs(), 2, 4)
    refitted = LeastSquaresRefit().apply(w, w * 0.5, mask, stats)
    assert torch.allclose(refitted, w * mask, atol=1e-5)


def test_matches_the_direct_per_row_solution():
    w, stats = correlated_layer(0)
    mask = select_nm(torch.rand(w.shape, generator=torch.Generator().manual_seed(1)), 2, 4)
    refit = LeastSquaresRefit(damping=0.01, iterations=200, tolerance=1e-7)
    got = refit.apply(w, w * mask, mask, stats)
    h = stats.hessian.double()
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(16, dtype=torch.float64)
    for row in range(w.shape[0]):
        kept = mask[row]
        expected = torch.linalg.solve(damped[kept][:, kept], damped[kept] @ w[row].double())
        assert torch.allclose(got[row, kept].double(), expected, rtol=1e-3, atol=1e-4), row
    assert (got[~mask] == 0).all() and not torch.signbit(got[~mask]).any()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(4, 8), Pattern(sparsity=0.5)])
def test_never_raises_any_rows_error_over_mask_only_or_obs(seed, pattern):
    w, stats = correlated_layer(seed)
    selector = TopKSelector()
    scores = w.abs() * stats.channel_norm
    mask = selector.select(scores, pattern)
    refit = LeastSquaresRefit(iterations=5)
    for start in (w * mask, ObsUpdate(blocksize=8).apply(w, stats, pattern, selector, mask=mask)[0]):
        before = output_error(w - start, stats.hessian)
        after = output_error(w - refit.apply(w, start, mask, stats), stats.hessian)
        assert (after <= before * (1 + 1e-5) + 1e-6).all()
    assert after.sum() < output_error(w - w * mask, stats.hessian).sum() * 0.9


def test_refit_after_eggs_sweep_keeps_mask_and_guarantee():
    w, stats = correlated_layer(3, rows=16, cols=16)
    selector = EggsSelector("repair", b=1, tile_height=8)
    pruned, mask = ObsUpdate(blocksize=8).apply(w, stats, Pattern(2, 4), selector)
    refitted = LeastSquaresRefit().apply(w, pruned, mask, stats)
    assert torch.equal(refitted != 0, mask)


def test_refit_needs_the_hessian():
    with pytest.raises(ValueError, match="Hessian"):
        LeastSquaresRefit().apply(torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool), LayerStats(4))


def test_the_default_tolerance_stops_close_to_the_converged_fit():
    """Stopping once a step removes less than 1e-3 of what came before costs under 0.2% of the error."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 64, generator=generator) @ torch.randn(64, 64, generator=generator)
    w, stats = torch.randn(48, 64, generator=generator), stats_from(x)
    start, mask = ObsUpdate().apply(w, stats, Pattern(2, 4), TopKSelector())
    early = LeastSquaresRefit().apply(w, start, mask, stats)
    converged = LeastSquaresRefit(iterations=500, tolerance=0.0).apply(w, start, mask, stats)
    errors = [float(output_error(w - fit, stats.hessian).sum()) for fit in (start, early, converged)]
    assert errors[2] <= errors[1] <= 1.002 * errors[2] < errors[0]


def test_a_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        LeastSquaresRefit(tolerance=-1.0)
