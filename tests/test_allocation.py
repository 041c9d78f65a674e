import pytest
import torch

from eggs_ptp.allocation import outlier_ratio, owl_sparsities


def test_outlier_ratio_counts_scores_above_threshold_times_mean():
    # mean of [1, 1, 1, 1, 1, 1, 1, 9] is 2; only 9 exceeds 3 x 2 = 6.
    scores = [torch.ones(1, 4), torch.tensor([[1.0, 1.0, 1.0, 9.0]])]
    assert outlier_ratio(scores, 3.0) == pytest.approx(1 / 8)
    assert outlier_ratio(scores, 5.0) == 0.0


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_owl_keeps_the_mean_and_gives_outlier_blocks_less_sparsity(target):
    ratios = [0.01, 0.05, 0.02, 0.08, 0.03]
    sparsities = owl_sparsities(ratios, target, 0.08)
    assert sum(sparsities) / len(sparsities) == pytest.approx(target, abs=1e-12)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    order = sorted(range(5), key=lambda i: ratios[i])
    assert [sparsities[i] for i in order] == sorted(sparsities, reverse=True)


def test_equal_ratios_give_uniform_sparsity():
    assert owl_sparsities([0.02, 0.02, 0.02], 0.5, 0.08) == [0.5, 0.5, 0.5]


def test_band_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="smaller --owl-lambda"):
        owl_sparsities([0.1, 0.2], 0.95, 0.08)
