import pytest
import torch

from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors import TopKSelector, select_nm
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import ObsUpdate
from eggs_ptp.updates.obs import HessianError


def stats_from(x: torch.Tensor) -> LayerStats:
    stats = LayerStats(x.shape[1], with_hessian=True)
    stats.add(x)
    return stats


def recon_error(w, w_new, x):
    return float(((x @ w.T) - (x @ w_new.T)).norm() / (x @ w.T).norm())


def test_isotropic_hessian_reduces_to_magnitude_without_update():
    # With H = c I there is nothing to compensate through: OBS keeps the largest |w| and leaves them.
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    stats = LayerStats(8, with_hessian=True)
    stats.hessian = torch.eye(8) * 5.0
    pruned, mask = ObsUpdate(damping=0.01).apply(w, stats, Pattern(2, 4), TopKSelector())
    assert torch.equal(mask, select_nm(w.abs(), 2, 4))
    assert torch.allclose(pruned, w * mask)


@pytest.mark.parametrize("pattern", [Pattern(2, 4), Pattern(4, 8), Pattern(sparsity=0.5)])
def test_update_beats_mask_only_on_correlated_inputs(pattern):
    torch.manual_seed(1)
    x = torch.randn(512, 16) @ torch.randn(16, 16)  # correlated channels
    w = torch.randn(12, 16)
    pruned, mask = ObsUpdate(blocksize=8).apply(w, stats_from(x), pattern, TopKSelector())
    assert torch.equal(pruned != 0, mask)
    if pattern.structured:
        assert (mask.reshape(12, -1, pattern.m).sum(-1) == pattern.n).all()
    else:
        assert (mask.sum(1) == 8).all()
    assert recon_error(w, pruned, x) < recon_error(w, w * mask, x)


def test_fixed_mask_is_kept_and_weights_refit():
    torch.manual_seed(2)
    x = torch.randn(256, 8) @ torch.randn(8, 8)
    w = torch.randn(4, 8)
    mask = select_nm(torch.rand(4, 8), 2, 4)
    pruned, kept = ObsUpdate().apply(w, stats_from(x), Pattern(2, 4), TopKSelector(), mask=mask)
    assert torch.equal(kept, mask)
    assert recon_error(w, pruned, x) < recon_error(w, w * mask, x)


def test_dead_inputs_are_zeroed_and_do_not_break_the_factorisation():
    torch.manual_seed(3)
    x = torch.randn(64, 8)
    x[:, 3] = 0
    pruned, _ = ObsUpdate().apply(torch.randn(4, 8), stats_from(x), Pattern(2, 4), TopKSelector())
    assert torch.isfinite(pruned).all() and (pruned[:, 3] == 0).all()


def test_indefinite_hessian_is_named():
    stats = LayerStats(4, with_hessian=True)
    stats.hessian = -torch.eye(4)
    with pytest.raises(HessianError, match="damping"):
        ObsUpdate().apply(torch.randn(2, 4), stats, Pattern(2, 4), TopKSelector())


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        ObsUpdate(damping=0)
    with pytest.raises(ValueError):
        ObsUpdate(blocksize=0)
