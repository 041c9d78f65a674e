import itertools

import pytest
import torch

from eggs_ptp.pattern import Pattern
from eggs_ptp.permute import kept_score, search_permutation
from eggs_ptp.selectors.topk import select_nm

TWO_FOUR = Pattern.parse("2:4")


def best_kept(scores: torch.Tensor, pattern: Pattern) -> float:
    """The exact optimum over every split of the columns into groups of M (small inputs only)."""

    def splits(rest):
        if not rest:
            yield []
            return
        for others in itertools.combinations(rest[1:], pattern.m - 1):
            group = [rest[0], *others]
            for tail in splits([c for c in rest if c not in group]):
                yield group + tail

    return max(kept_score(scores[:, order], pattern) for order in splits(list(range(scores.shape[1]))))


def test_kept_score_is_what_nm_top_k_keeps():
    scores = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    mask = select_nm(scores, 2, 4)
    assert kept_score(scores, TWO_FOUR) == pytest.approx(float(scores[mask].sum()))


@pytest.mark.parametrize(
    "row_scores, best",
    [
        ([[5, 5, 5, 5, 1, 1, 1, 1]], 20.0),  # the heavy channels must be split over both groups
        ([[5, 5, 5, 5, 1, 1, 1, 1], [1, 1, 1, 1, 5, 5, 5, 5]], 40.0),  # each group: 2 heavy of each row
        ([[9, 8, 7, 6, 1, 1, 1, 1, 1, 1, 1, 1]], 32.0),  # all four heavy kept, none crowded out
    ],
)
def test_search_finds_the_known_best(row_scores, best):
    scores = torch.tensor(row_scores, dtype=torch.float32)
    perm = search_permutation(scores, TWO_FOUR)
    assert sorted(perm.tolist()) == list(range(scores.shape[1]))
    assert kept_score(scores[:, perm], TWO_FOUR) == pytest.approx(best)
    assert kept_score(scores[:, perm], TWO_FOUR) == pytest.approx(best_kept(scores, TWO_FOUR))


@pytest.mark.parametrize(
    "row_scores",
    [[[5, 5, 1, 1, 5, 5, 1, 1]], [[3.0] * 8, [3.0] * 8]],  # already optimal; all ties
)
def test_identity_is_kept_when_nothing_is_gained(row_scores):
    scores = torch.tensor(row_scores)
    assert torch.equal(search_permutation(scores, TWO_FOUR), torch.arange(8))


@pytest.mark.parametrize("seed", range(6))
def test_never_worse_than_identity_and_close_to_the_optimum(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(3, 12, generator=generator) * torch.rand(12, generator=generator) ** 3
    kept = kept_score(scores[:, search_permutation(scores, TWO_FOUR)], TWO_FOUR)
    assert kept >= kept_score(scores, TWO_FOUR)
    assert kept >= 0.98 * best_kept(scores, TWO_FOUR)


def test_search_is_deterministic_and_gains_on_a_wide_layer():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(64, 512, generator=generator).abs() * torch.rand(512, generator=generator) ** 4
    perm = search_permutation(scores, Pattern.parse("4:8"), window=16)  # several windows
    assert torch.equal(perm, search_permutation(scores, Pattern.parse("4:8"), window=16))
    assert sorted(perm.tolist()) == list(range(512))
    assert kept_score(scores[:, perm], Pattern.parse("4:8")) > 1.01 * kept_score(scores, Pattern.parse("4:8"))


def test_tied_blocks_share_one_permutation_within_blocks():
    """Two heads of 8 that read one KV head: both must move the same way, inside their head."""
    head0 = torch.tensor([[5.0, 5, 5, 5, 1, 1, 1, 1]])
    head1 = torch.tensor([[5.0, 5, 5, 5, 1, 1, 1, 1]])
    scores = torch.cat([head0, head1], dim=1)  # (1, 16)
    perm = search_permutation(scores, TWO_FOUR, block=8, ties=torch.tensor([0, 0]))
    assert torch.equal(perm[8:], perm[:8] + 8)
    assert sorted(perm[:8].tolist()) == list(range(8))
    assert kept_score(scores[:, perm], TWO_FOUR) == pytest.approx(40.0)


def test_untied_blocks_are_searched_on_their_own():
    scores = torch.tensor([[5.0, 5, 5, 5, 1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 5, 5]])
    perm = search_permutation(scores, TWO_FOUR, block=8)
    assert sorted(perm[:8].tolist()) == list(range(8)) and sorted(perm[8:].tolist()) == list(range(8, 16))
    assert kept_score(scores[:, perm], TWO_FOUR) == pytest.approx(40.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pattern=Pattern.parse("0.5")), "N:M pattern"),
        (dict(block=6), "multiple of M"),
        (dict(block=8, ties=torch.tensor([0, 0, 1])), "one id per block"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, message):
    arguments = {"scores": torch.rand(2, 16), "pattern": TWO_FOUR, **kwargs}
    with pytest.raises(ValueError, match=message):
        search_permutation(**arguments)
