"""The dense-model target: the weight whose fit on the pruned inputs is the fit to the dense model's outputs."""

import pytest
import torch

from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import DenseModelTarget, TargetError


def stats_of(pruned: torch.Tensor, dense: torch.Tensor) -> LayerStats:
    stats = LayerStats(pruned.shape[1], with_hessian=True, with_drift=True)
    stats.add(pruned, dense)
    return stats


def test_drift_sums_the_pruned_inputs_against_the_difference():
    pruned, dense = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0, 3.0], [2.0, 1.0]])
    stats = stats_of(pruned, dense)
    # X~^T (X - X~) with X - X~ = [[0, 1], [2, 0]]: by hand
    assert torch.equal(stats.drift, torch.tensor([[0.0, 1.0], [2.0, 2.0]]))
    assert torch.equal(stats.hessian, pruned.T @ pruned)


def test_drift_is_exactly_zero_where_the_streams_agree():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    stats = stats_of(x, x.clone())
    assert not stats.drift.any()
    weight = torch.randn(5, 8)
    assert torch.equal(DenseModelTarget().apply(weight, stats), weight)


def test_target_solves_the_ridge_fit_to_the_dense_outputs():
    generator = torch.Generator().manual_seed(1)
    dense = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    pruned = dense + 0.3 * torch.randn(200, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    stats = stats_of(pruned.float(), dense.float())
    damping = 0.05
    lam = damping * float(torch.diag(pruned.T @ pruned).mean())
    # min ||X~ W'^T - X W^T||^2 + lam ||W' - W||^2: (X~^T X~ + lam I) W'^T = X~^T X W^T + lam W^T
    expected = torch.linalg.solve(
        pruned.T @ pruned + lam * torch.eye(6, dtype=torch.float64), pruned.T @ dense @ weight.T + lam * weight.T
    ).T
    target = DenseModelTarget(damping).apply(weight.float(), stats)
    torch.testing.assert_close(target.double(), expected, rtol=1e-4, atol=1e-4)

    # the fit the other stages make to the target on the pruned inputs is the fit to the dense outputs
    def objective(candidate):
        return float(((pruned @ candidate.T - dense @ weight.T) ** 2).sum() + lam * ((candidate - weight) ** 2).sum())

    assert objective(target.double()) < objective(weight) and objective(target.double()) <= objective(expected) + 1e-6


def test_without_drift_the_target_is_the_weight():
    stats = LayerStats(3, with_hessian=True)
    stats.add(torch.randn(10, 3))
    weight = torch.randn(2, 3)
    assert torch.equal(DenseModelTarget().apply(weight, stats), weight)


def test_drift_needs_the_dense_inputs_and_only_drift_takes_them():
    with pytest.raises(ValueError, match="dense inputs"):
        LayerStats(3, True, with_drift=True).add(torch.randn(4, 3))
    with pytest.raises(ValueError, match="dense inputs"):
        LayerStats(3, True).add(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="do not pair"):
        LayerStats(3, True, with_drift=True).add(torch.randn(4, 3), torch.randn(5, 3))


def test_non_finite_statistics_are_named():
    stats = stats_of(torch.randn(8, 3), torch.full((8, 3), float("nan")))
    with pytest.raises(TargetError, match="NaN or Inf"):
        DenseModelTarget().apply(torch.randn(2, 3), stats)


def test_damping_must_be_positive():
    with pytest.raises(ValueError, match="damping"):
        DenseModelTarget(0.0)
