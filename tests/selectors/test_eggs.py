"""EGGS selection: hand-checked tiles per rule, the guarantee on random scores, and input errors."""

import logging

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors import (
    RULES,
    EggsSelector,
    GuaranteeError,
    check_guarantee,
    select_in_chunks,
    select_nm,
)

T, F = True, False
P24 = Pattern(n=2, m=4)

# Plain 2:4 top-k keeps columns 0 and 2 / 0 and 3 / 3 and 0 / 0 and 2: column 1 is starved.
TILE = torch.tensor(
    [
        [15.0, 4.0, 8.0, 1.0],
        [12.0, 7.0, 10.0, 11.0],
        [9.0, 2.0, 5.0, 16.0],
        [14.0, 3.0, 13.0, 6.0],
    ]
)

HAND_MASKS = {
    # Diagonal sums k=0..3: 33, 44, 31, 28 -> force k=1: (0,1) (1,2) (2,3) (3,0); then each row's
    # best other entry: row 0 -> col 0 (15), row 1 -> col 0 (12), row 2 -> col 0 (9), row 3 -> col 2 (13).
    "diagonal": [[T, T, F, F], [T, F, T, F], [T, F, F, T], [T, F, T, F]],
    # Best perfect matching (51, unique): (0,0) (1,1) (2,3) (3,2); fill: row 0 -> col 2 (8),
    # row 1 -> col 0 (12), row 2 -> col 0 (9), row 3 -> col 0 (14).
    "matching": [[T, F, T, F], [T, T, F, F], [T, F, F, T], [T, F, T, F]],
    # Swap costs into column 1: row 0 drops 2 (8-4=4), row 1 drops 3 (11-7=4), the other options
    # cost more; the tie goes to the first row, so row 0 trades column 2 for column 1.
    "repair": [[T, T, F, F], [T, F, F, T], [T, F, F, T], [T, F, T, F]],
}


def test_plain_topk_starves_the_hand_tile():
    assert select_nm(TILE, 2, 4)[:, 1].sum() == 0


@pytest.mark.parametrize("rule", RULES)
def test_hand_tile(rule):
    mask = EggsSelector(rule=rule, b=1).select(TILE, P24)
    assert torch.equal(mask, torch.tensor(HAND_MASKS[rule]))


ALL_EQUAL_MASKS = {
    # k=0 wins the tie: force (i, i), fill with the lowest free column.
    "diagonal": [[T, T, F, F], [T, T, F, F], [T, F, T, F], [T, F, F, T]],
    # First permutation in lexicographic order is the identity, so the same as diagonal.
    "matching": [[T, T, F, F], [T, T, F, F], [T, F, T, F], [T, F, F, T]],
    # Every swap costs 0, so the first (i, c, c') wins: row 0 takes column 2 for column 0, then
    # row 0 (which no longer keeps column 0) takes column 3 for column 1.
    "repair": [[F, F, T, T], [T, T, F, F], [T, T, F, F], [T, T, F, F]],
}


@pytest.mark.parametrize("rule", RULES)
def test_all_equal_tile_breaks_ties_by_index(rule):
    mask = EggsSelector(rule=rule, b=1).select(torch.ones(4, 4), P24)
    assert torch.equal(mask, torch.tensor(ALL_EQUAL_MASKS[rule]))


def _deficit(mask: torch.Tensor, m: int, b: int, h: int) -> int:
    """Total shortfall below b over all columns of all full tiles."""
    out_features, in_features = mask.shape
    tiles_r = out_features // h
    counts = mask[: tiles_r * h].reshape(tiles_r, h, in_features // m, m).sum(1)
    return int((b - counts).clamp(min=0).sum())


CASES = [
    # (out, in, n, m, tile_height)
    (64, 32, 2, 4, 4),
    (64, 32, 2, 4, 16),
    (70, 32, 2, 4, 16),  # 6 tail rows
    (64, 32, 1, 4, 4),
    (66, 32, 4, 8, 8),  # 2 tail rows; M = 8 uses the Hungarian fallback for matching
    (64, 32, 4, 8, 32),
]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("out_features,in_features,n,m,h", CASES)
def test_random_scores_meet_guarantee(rule, out_features, in_features, n, m, h):
    pattern = Pattern(n=n, m=m)
    for seed in range(3):
        scores = torch.rand(out_features, in_features, generator=torch.Generator().manual_seed(seed))
        topk = select_nm(scores, n, m)
        full = out_features // h * h
        for b in range(n + 1):
            selector = EggsSelector(rule=rule, b=b, tile_height=h)
            mask = selector.select(scores, pattern)
            check_guarantee(mask, n, m, b, h)
            assert torch.equal(mask, selector.select(scores.clone(), pattern))
            assert torch.equal(mask[full:], topk[full:])
            assert (scores * mask).sum() <= (scores * topk).sum()
            if b == 0:
                assert torch.equal(mask, topk)
            if rule == "repair":
                # One swap per missing unit, and no swap is ever undone.
                assert int((mask != topk).sum()) == 2 * _deficit(topk, m, b, h)


def _reference_matching(scores: torch.Tensor, n: int, m: int, b: int, h: int) -> torch.Tensor:
    """Per-tile successive Hungarian assignments plus fill, written independently of the module."""
    out_features, in_features = scores.shape
    mask = torch.zeros(out_features, in_features, dtype=torch.bool)
    values = scores.double().numpy()
    for r0 in range(0, out_features, h):
        for c0 in range(0, in_features, m):
            tile = values[r0 : r0 + h, c0 : c0 + m]
            forced = np.zeros((h, m), dtype=bool)
            for _ in range(b):
                cost = np.repeat(np.where(forced, -1e9, tile), h // m, axis=1)
                rows, cols = linear_sum_assignment(cost, maximize=True)
                forced[rows, cols // (h // m)] = True
            for i in range(h):
                rest = [c for c in np.argsort(-tile[i], kind="stable") if not forced[i, c]]
                for c in list(np.flatnonzero(forced[i])) + rest[: n - b]:
                    mask[r0 + i, c0 + c] = True
    return mask


@pytest.mark.parametrize("n,m,b", [(2, 4, 1), (2, 4, 2), (3, 6, 2)])
def test_matching_enumeration_agrees_with_hungarian(n, m, b):
    scores = torch.rand(6 * m, 4 * m, generator=torch.Generator().manual_seed(7))
    mask = EggsSelector(rule="matching", b=b).select(scores, Pattern(n=n, m=m))
    assert torch.equal(mask, _reference_matching(scores, n, m, b, m))


def test_matching_fallback_agrees_with_hungarian_and_reports_cost(caplog):
    scores = torch.rand(32, 16, generator=torch.Generator().manual_seed(3))
    with caplog.at_level(logging.INFO, logger="eggs_ptp.selectors.eggs"):
        mask = EggsSelector(rule="matching", b=2, tile_height=8).select(scores, P24)
    assert torch.equal(mask, _reference_matching(scores, 2, 4, 2, 8))
    assert "Hungarian fallback solved 16 tiles x 2 rounds" in caplog.text


def test_check_guarantee_reports_starved_column():
    mask = torch.tensor([[T, F, T, F], [T, F, F, T], [T, F, F, T], [T, F, T, F]] * 2)
    check_guarantee(mask, 2, 4, 0, 4)
    with pytest.raises(GuaranteeError, match=r"2 tile columns in 2 tiles .* first at tile row 0 .* column 1"):
        check_guarantee(mask, 2, 4, 1, 4)


def test_check_guarantee_reports_wrong_group_count():
    mask = torch.tensor([[T, T, F, F, T, T, F, F], [T, T, F, F, T, T, T, F]])
    with pytest.raises(GuaranteeError, match="1 row groups .* first at row 1, group 1, which keeps 3"):
        check_guarantee(mask, 2, 4, 0, 4)


@pytest.mark.parametrize(
    "kwargs,pattern,match",
    [
        ({"b": 3}, P24, "b=3 exceeds N=2"),
        ({"tile_height": 6}, P24, "tile_height 6 is not a multiple of M=4"),
        ({}, Pattern(sparsity=0.5), "EGGS needs an N:M pattern"),
    ],
)
def test_select_rejects_bad_settings(kwargs, pattern, match):
    with pytest.raises(ValueError, match=match):
        EggsSelector(**kwargs).select(torch.rand(8, 8), pattern)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rule": "greedy"}, "unknown EGGS rule 'greedy'"),
        ({"b": -1}, "b must be 0 or more"),
        ({"tile_height": 0}, "tile_height must be a positive multiple"),
    ],
)
def test_constructor_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EggsSelector(**kwargs)


def test_nan_scores_rejected():
    scores = torch.rand(8, 8)
    scores[1, 1] = float("nan")
    with pytest.raises(ValueError, match="scores contain NaN or Inf"):
        EggsSelector().select(scores, P24)


@pytest.mark.parametrize("rule, tile_height", [("repair", 8), ("diagonal", 4), ("matching", 8)])
def test_selecting_in_row_chunks_gives_the_same_mask(rule, tile_height):
    scores = torch.rand(8 * 5 + 3, 16, generator=torch.Generator().manual_seed(1))  # 5 tiles of 8 and a tail
    scores[0] = scores[1]  # ties across rows too
    selector = EggsSelector(rule=rule, b=1, tile_height=tile_height)
    whole = selector.select(scores, Pattern.parse("2:4"))
    for budget in (1, 16 * 8, 16 * 17):  # one tile per chunk, at least one, and an uneven split
        assert torch.equal(select_in_chunks(selector, scores, Pattern.parse("2:4"), budget), whole)


def test_repair_when_swap_costs_overflow_float32():
    # Top-k keeps columns 0 and 2 of every row; every swap into column 1 or 3 costs 3e38 + 3e38,
    # beyond float32, and once made the invalid entry (0, 0, 0) could win the argmin. All swaps cost
    # the same, so as for equal scores: row 0 trades column 0 for 1, then column 2 for 3.
    row = [3e38, -3e38, 3e38, -3e38]
    mask = EggsSelector("repair", 1).select(torch.tensor([row] * 4), P24)
    assert torch.equal(mask, torch.tensor([[F, T, F, T]] + [[T, F, T, F]] * 3))


def test_matching_enumeration_when_sums_overflow_float32():
    # Every sum of four -3e38 is -Inf in float32, so matchings through forced entries tied with the
    # rest. As for equal scores: the identity, then the first permutation avoiding it, (1, 0, 3, 2).
    mask = EggsSelector("matching", 2).select(torch.full((4, 4), -3e38), P24)
    assert torch.equal(mask, torch.tensor([[T, T, F, F], [T, T, F, F], [F, F, T, T], [F, F, T, T]]))


def test_matching_fallback_forbids_forced_entries_at_any_magnitude():
    # M = 8 runs the Hungarian fallback. For constant scores of 1e20 the former exclusion value
    # low - (H + 1) * (range + 1) rounded back to 1e20, later rounds re-picked forced entries and
    # four columns kept only 1 of B = 3. The scale must not matter.
    pattern = Pattern(n=4, m=8)
    mask = EggsSelector("matching", 3).select(torch.full((8, 8), 1e20), pattern)
    check_guarantee(mask, 4, 8, 3, 8)
    assert torch.equal(mask, EggsSelector("matching", 3).select(torch.ones(8, 8), pattern))


@pytest.mark.parametrize("rule", RULES)
def test_full_tiles_without_columns_give_an_empty_mask(rule):
    # The fallback took min() of no scores: a numpy ValueError about reductions.
    mask = EggsSelector(rule, 1, 8).select(torch.zeros(8, 0), P24)
    assert mask.shape == (8, 0) and mask.dtype == torch.bool
