import pytest
import torch

from eggs_ptp.scores import MagnitudeScore, RiaScore, WandaScore
from eggs_ptp.stats import LayerStats

W = torch.tensor([[1.0, -2.0], [3.0, 0.0]])


def stats_with_norms(norms):
    stats = LayerStats(len(norms))
    stats.sq_norm = torch.tensor(norms) ** 2
    return stats


def test_magnitude_is_absolute_weight():
    assert torch.equal(MagnitudeScore()(W), torch.tensor([[1.0, 2.0], [3.0, 0.0]]))


def test_wanda_scales_columns_by_input_norm():
    score = WandaScore()(W, stats_with_norms([2.0, 0.5]))
    assert torch.equal(score, torch.tensor([[2.0, 1.0], [6.0, 0.0]]))


def test_ria_hand_computed():
    # column sums of |W|: [4, 2]; row sums: [3, 3]; ||X|| = [4, 1] -> ||X||^0.5 = [2, 1]
    score = RiaScore(alpha=0.5)(W, stats_with_norms([4.0, 1.0]))
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2, (2 / 2 + 2 / 3) * 1], [(3 / 4 + 3 / 3) * 2, 0.0]])
    assert torch.allclose(score, expected)


def test_ria_zero_rows_and_columns_score_zero_not_nan():
    score = RiaScore()(torch.zeros(2, 3), stats_with_norms([1.0, 1.0, 1.0]))
    assert torch.equal(score, torch.zeros(2, 3))


def test_calibration_scores_need_stats():
    with pytest.raises(ValueError, match="calibration"):
        WandaScore()(W, None)


def test_stats_accumulate_norms_and_hessian():
    stats = LayerStats(2, with_hessian=True)
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (batch, tokens, in)
    stats.add(x)
    assert stats.tokens == 2
    assert torch.equal(stats.sq_norm, torch.tensor([10.0, 20.0]))
    assert torch.equal(stats.hessian, torch.tensor([[10.0, 14.0], [14.0, 20.0]]))
