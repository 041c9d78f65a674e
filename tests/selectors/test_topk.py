"""Top-k selection: hand-checked masks and lower-index tie-breaking."""

import pytest
import torch

from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors import TopKSelector, select_in_chunks, select_nm, select_per_row

T, F = True, False


def test_select_nm_hand_checked_2_4():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3, 4.0, 1.0, 3.0, 2.0],
            [-1.0, -2.0, -3.0, 0.0, 5.0, 5.0, 1.0, 5.0],
        ]
    )
    expected = torch.tensor(
        [
            [F, T, T, F, T, F, T, F],
            [T, F, F, T, T, T, F, F],  # three-way tie at 5 keeps columns 4 and 5
        ]
    )
    assert torch.equal(select_nm(scores, 2, 4), expected)


def test_select_nm_all_equal_keeps_first_n_of_each_group():
    mask = select_nm(torch.ones(3, 16), 4, 8)
    expected = torch.tensor([T, T, T, T, F, F, F, F] * 2).expand(3, 16)
    assert torch.equal(mask, expected)


def test_select_nm_rejects_ragged_groups():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        select_nm(torch.rand(2, 6), 2, 4)


def test_select_per_row_keep_count_and_ties():
    scores = torch.tensor([[3.0, 1.0, 4.0, 1.0, 5.0, 9.0], [2.0, 2.0, 2.0, 1.0, 2.0, 0.0]])
    expected = torch.tensor([[F, F, T, F, T, T], [T, T, T, F, F, F]])
    assert torch.equal(select_per_row(scores, 3), expected)


def test_selector_dispatches_on_pattern():
    scores = torch.tensor([[3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]])
    unstructured = TopKSelector().select(scores, Pattern(sparsity=0.75))  # keeps round(8 * 0.25) = 2
    assert torch.equal(unstructured, torch.tensor([[F, F, F, F, F, T, F, T]]))
    structured = TopKSelector().select(scores, Pattern(n=1, m=4))
    assert torch.equal(structured, torch.tensor([[F, F, T, F, F, T, F, F]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_rejected(bad):
    scores = torch.rand(4, 8)
    scores[2, 3] = bad
    with pytest.raises(ValueError, match="scores contain NaN or Inf"):
        TopKSelector().select(scores, Pattern(n=2, m=4))


@pytest.mark.parametrize("pattern", ["2:4", "0.5"])
def test_top_k_in_row_chunks_gives_the_same_mask(pattern):
    scores = torch.rand(37, 16, generator=torch.Generator().manual_seed(2))
    whole = TopKSelector().select(scores, Pattern.parse(pattern))
    assert torch.equal(select_in_chunks(TopKSelector(), scores, Pattern.parse(pattern), 16 * 5), whole)


def test_select_nm_ranks_nan_above_inf():
    # Documented order (torch.sort's): NaN, +Inf, finite values, -Inf; -0.0 ties 0.0 (lower column).
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([[1.0, nan, 3.0, inf, nan, -inf, 0.0, -0.0]])
    assert torch.equal(select_nm(scores, 2, 4), torch.tensor([[F, T, F, T, T, F, T, F]]))
    assert torch.equal(select_per_row(scores, 3), torch.tensor([[F, T, F, T, T, F, F, F]]))
