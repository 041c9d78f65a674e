"""Property-based tests of the pattern parser, the pattern checker and every mask selector.

Scores are drawn from small pools of values, so ties are the rule rather than the exception; the
pools hold zeros of both signs, negatives, subnormals and the largest finite floats. The exact
references below work tile by tile in numpy, independently of the batched torch selectors, and
are compared only on integer-valued scores, whose sums are exact in every dtype involved.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eggs_ptp.pattern import Pattern, Violation, pattern_violations
from eggs_ptp.selectors import (
    RULES,
    EggsSelector,
    GuaranteeError,
    TopKSelector,
    check_guarantee,
    select_in_chunks,
    select_nm,
    select_per_row,
)
from eggs_ptp.selectors.auto import TILE_FACTORS, EggsSettingSearch
from eggs_ptp.selectors.eggs import ENUMERATE_MAX_M

NAN, INF = float("nan"), float("inf")
F32_MAX = torch.finfo(torch.float32).max
F32_TINY = 1e-45  # the smallest float32 subnormal

INT_POOLS = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=4)
FLOAT_POOLS = st.lists(
    st.one_of(
        st.integers(-3, 3).map(float),
        st.sampled_from([0.0, -0.0, F32_MAX, -F32_MAX, F32_TINY, -F32_TINY, 1e38]),
        st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    min_size=1,
    max_size=6,
)
EXTREME_POOLS = st.lists(
    st.sampled_from([F32_MAX, -F32_MAX, F32_MAX / 2, -F32_MAX / 3, 1e30, 0.0]), min_size=1, max_size=4
)
SCORE_POOLS = st.one_of(INT_POOLS, FLOAT_POOLS, st.just("normal"))  # "normal": continuous, no ties
SPARSITIES = st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)


def nm_patterns(max_m: int = 8) -> st.SearchStrategy[Pattern]:
    return st.integers(2, max_m).flatmap(lambda m: st.integers(1, m - 1).map(lambda n: Pattern(n=n, m=m)))


@st.composite
def score_tensors(draw, rows: int, cols: int, pools=SCORE_POOLS) -> torch.Tensor:
    """A (rows, cols) float32 tensor of values from a drawn pool (or standard normal), at random
    positions."""
    pool = draw(pools)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    if pool == "normal":
        return torch.randn(rows, cols, generator=generator)
    return torch.tensor(pool)[torch.randint(len(pool), (rows, cols), generator=generator)]


@st.composite
def nm_cases(draw, pools=SCORE_POOLS, max_rows: int = 10) -> tuple[Pattern, torch.Tensor]:
    pattern = draw(nm_patterns())
    rows, groups = draw(st.integers(0, max_rows)), draw(st.integers(0, 3))
    return pattern, draw(score_tensors(rows, groups * pattern.m, pools))


@st.composite
def eggs_cases(draw, pools=SCORE_POOLS, exact: bool = False) -> tuple[EggsSelector, Pattern, int, torch.Tensor]:
    """A selector, its pattern, its tile height and scores of 0-2 full tiles plus a short tail.

    With ``exact``, ``matching`` is drawn only where it enumerates (H == M <= 6): elsewhere its ties
    follow scipy's solver, which no reference here reproduces.
    """
    rule = draw(st.sampled_from(RULES))
    enumerated = exact and rule == "matching"
    pattern = draw(nm_patterns(ENUMERATE_MAX_M if enumerated else 8))
    factor = None if enumerated else draw(st.sampled_from([None, 1, 2, 4]))
    h = pattern.m * (factor or 1)
    rows = h * draw(st.sampled_from([0, 1, 1, 2])) + draw(st.integers(0, min(h - 1, 5)))
    scores = draw(score_tensors(rows, draw(st.sampled_from([0, 1, 2, 2, 3])) * pattern.m, pools))
    selector = EggsSelector(rule, draw(st.integers(0, pattern.n)), None if factor is None else h)
    return selector, pattern, h, scores


def topk_reference(scores: torch.Tensor, keep: int, m: int) -> torch.Tensor:
    """The first ``keep`` of every ``m`` consecutive columns in (NaN, then score descending, then
    column ascending) order, sorted by numpy instead of torch."""
    values = scores.double().numpy().reshape(scores.shape[0], scores.shape[1] // m, m)
    nan = np.isnan(values)
    column = np.broadcast_to(np.arange(m), values.shape)
    order = np.lexsort((column, np.where(nan, 0.0, -values), ~nan), axis=-1)[..., :keep]
    mask = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return torch.from_numpy(mask.reshape(scores.shape))


def groups_keep(mask: torch.Tensor, m: int) -> torch.Tensor:
    return mask.reshape(mask.shape[0], mask.shape[1] // m, m).sum(-1)


def tile_column_counts(mask: torch.Tensor, h: int) -> list[torch.Tensor]:
    """Kept weights per input column, one (in,) tensor per full tile row of ``h`` rows."""
    return [mask[start : start + h].sum(0) for start in range(0, mask.shape[0] // h * h, h)]


def tiles(values: np.ndarray, h: int, m: int):
    """(row, column, block) for every full H x M tile, tile-row major."""
    for r0 in range(0, values.shape[0] // h * h, h):
        for c0 in range(0, values.shape[1], m):
            yield r0, c0, values[r0 : r0 + h, c0 : c0 + m]


def fill_reference(tile: np.ndarray, forced: np.ndarray, n: int) -> np.ndarray:
    """The forced entries, then each row's best other entries (ties: lower column) up to ``n``."""
    keep = forced.copy()
    for i, row in enumerate(tile):
        rest = [c for c in sorted(range(len(row)), key=lambda c: (-row[c], c)) if not forced[i, c]]
        keep[i, rest[: n - int(forced[i].sum())]] = True
    return keep


def diagonal_forced_reference(tile: np.ndarray, b: int) -> np.ndarray:
    """The ``b`` cyclic diagonals with the largest sums (ties: smaller k)."""
    h, m = tile.shape
    sums = [sum(tile[i, (i + k) % m] for i in range(h)) for k in range(m)]
    forced = np.zeros((h, m), dtype=bool)
    for k in sorted(range(m), key=lambda k: (-sums[k], k))[:b]:
        forced[np.arange(h), (np.arange(h) + k) % m] = True
    return forced


def matching_forced_reference(tile: np.ndarray, b: int) -> np.ndarray:
    """``b`` successive best perfect matchings avoiding earlier ones (ties: lexicographically first)."""
    m = tile.shape[0]
    perms = np.array(list(itertools.permutations(range(m))))  # lexicographic
    rows = np.arange(m)
    forced = np.zeros((m, m), dtype=bool)
    for _ in range(b):
        value = np.where(forced[rows, perms].any(1), -np.inf, tile[rows, perms].sum(1))
        forced[rows, perms[np.argmax(value)]] = True  # argmax: the first of equal maxima
    return forced


def repair_reference(tile: np.ndarray, keep: np.ndarray, b: int) -> np.ndarray:
    """Swap in the cheapest missing entry, one per round, until no column keeps fewer than ``b``.

    Row i may take column c (short of b, not kept by i) and give up c' (kept by i, above b) at cost
    S[i, c'] - S[i, c]; ties go to the first (i, c, c').
    """
    keep = keep.copy()
    h, m = tile.shape
    while (keep.sum(0) < b).any():
        counts = keep.sum(0)
        take = ~keep & (counts < b)  # (H, M) over (i, c)
        drop = keep & (counts > b)  # (H, M) over (i, c')
        cost = np.where(take[:, :, None] & drop[:, None, :], tile[:, None, :] - tile[:, :, None], np.inf)
        i, c, dropped = np.unravel_index(np.argmin(cost), cost.shape)  # argmin: the first of equal minima
        keep[i, c], keep[i, dropped] = True, False
    return keep


def eggs_reference(selector: EggsSelector, pattern: Pattern, h: int, scores: torch.Tensor) -> torch.Tensor:
    n, m, b = pattern.n, pattern.m, selector.b
    values = scores.double().numpy()
    mask = topk_reference(scores, n, m).numpy().copy()
    for r0, c0, tile in tiles(values, h, m):
        if selector.rule == "repair":
            block = repair_reference(tile, mask[r0 : r0 + h, c0 : c0 + m], b)
        elif selector.rule == "diagonal":
            block = fill_reference(tile, diagonal_forced_reference(tile, b), n)
        else:
            block = fill_reference(tile, matching_forced_reference(tile, b), n)
        mask[r0 : r0 + h, c0 : c0 + m] = block
    return torch.from_numpy(mask)


def assert_clear_value_error(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert message and "\n" not in message and all(word in message for word in words), message


# ---------------------------------------------------------------- the parser and Pattern(...)

ODD_TEXTS = [
    *["nan", "NaN", "-nan", "inf", "-inf", "infinity", "1e400", "1e-400", "-0", "0", "1", "-0.0", "0.0"],
    *["2:0", "0:4", "4:4", "3:2", "-1:4", "1:-4", "2:4:8", "2:", ":4", ":", "2 4", "2/4", "2::4"],
    *[" 2 : 4 ", "\t2:4\n", "002:0004", "1_0:16", "0.5_0", "+0.5", ".5", "5.", "0x1p-1", "5e-1", "0.5e0"],
    *[
        "50%",
        "100%",
        "0%",
        "%",
        "%50",
        "50%%",
        "nan%",
        "inf%",
        "-50%",
        "14.3%",
        "1e1%",
        " 50 % ",
        "sNaN%",
        "1e999999999%",
    ],
    *["\u0662:\u0664", "\uff12:\uff14", "\u0660.\u0665", "\u00b2:4", "2\u22364", "\u20032:4\u2003"],
    *["", " ", "\n", "\x00", "0.5\x00", "2:4\x00", "\u00bc", "\u00bd", "0,5", "five", "2\uff1a4"],
]
TEXTS = st.one_of(
    st.sampled_from(ODD_TEXTS),
    st.text(),
    st.text(alphabet="0123456789:.%-+e _\t\u0663\uff15", max_size=8),
    st.from_regex(r"\s*-?\d{1,3}\s*:\s*-?\d{1,3}\s*", fullmatch=True),
    st.floats().map(repr),
    st.floats().map(lambda x: f"{x * 100}%"),
)


@settings(max_examples=300)
@given(text=TEXTS)
def test_parse_gives_a_pattern_that_round_trips_or_a_one_line_value_error(text):
    """Any text parses to a valid pattern whose string reads back to an equal pattern with the same
    string, or raises ValueError with a one-line message; never another exception type."""
    try:
        pattern = Pattern.parse(text)
    except ValueError as error:
        assert str(error) and "\n" not in str(error), str(error)
        return
    if pattern.structured:
        assert type(pattern.n) is int and type(pattern.m) is int and 0 < pattern.n < pattern.m
        assert str(pattern) == f"{pattern.n}:{pattern.m}"
    else:
        assert pattern.n is None and pattern.m is None and 0.0 < pattern.sparsity < 1.0
    again = Pattern.parse(str(pattern))
    assert again == pattern and str(again) == str(pattern)


@pytest.mark.parametrize(
    "text,expected",
    [
        (" 2 : 4 ", Pattern(n=2, m=4)),
        ("002:0004", Pattern(n=2, m=4)),
        ("\u0662:\u0664", Pattern(n=2, m=4)),  # Arabic-Indic digits: Python's int() reads them
        ("\uff12:\uff14", Pattern(n=2, m=4)),  # fullwidth digits likewise
        ("50%", Pattern(sparsity=0.5)),
        (" 50 % ", Pattern(sparsity=0.5)),
        ("14.3%", Pattern(sparsity=0.143)),  # decimal division, not 14.3 / 100 = 0.14300000000000002
        ("1e1%", Pattern(sparsity=0.1)),
        ("+0.5", Pattern(sparsity=0.5)),
        ("\u0660.\u0665", Pattern(sparsity=0.5)),
    ],
)
def test_parse_reads_odd_but_valid_spellings(text, expected):
    assert Pattern.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["nan", "inf", "-inf", "1e400", "1e-400", "-0", "0", "1", "2:0", "0:4", "4:4", "100%", "0%", "%", "nan%"]
    + ["sNaN%", "1e999999999%", "-50%", "", " ", "\u00b2:4", "\u00bd", "2:4:8", "0,5"],
)
def test_parse_rejects_odd_inputs_with_one_line(text):
    with pytest.raises(ValueError) as error:
        Pattern.parse(text)
    assert_clear_value_error(error)


@given(n=st.integers(-3, 40), m=st.integers(-3, 40))
def test_constructed_n_m_is_valid_exactly_when_0_lt_n_lt_m(n, m):
    if 0 < n < m:
        pattern = Pattern(n=n, m=m)
        assert Pattern.parse(str(pattern)) == pattern and pattern.density == n / m
    else:
        with pytest.raises(ValueError) as error:
            Pattern(n=n, m=m)
        assert_clear_value_error(error, f"{n}:{m}")


@given(sparsity=st.one_of(SPARSITIES, st.floats()))
def test_constructed_sparsity_round_trips_exactly_through_its_string(sparsity):
    """The string is what configs and records store and parse again, so it must lose nothing."""
    if 0.0 < sparsity < 1.0:
        pattern = Pattern(sparsity=sparsity)
        assert Pattern.parse(str(pattern)) == pattern
    else:
        with pytest.raises(ValueError) as error:
            Pattern(sparsity=sparsity)
        assert_clear_value_error(error, "sparsity")


@given(whole=st.integers(1, 99), digits=st.text(alphabet="0123456789", max_size=12))
def test_percent_is_the_same_pattern_as_its_fraction(whole, digits):
    percent = f"{whole}.{digits}%" if digits else f"{whole}%"
    assert Pattern.parse(percent) == Pattern.parse(f"0.{whole:02d}{digits}")


@given(sparsity=SPARSITIES, in_features=st.integers(0, 10**6))
def test_kept_per_row_is_the_rounded_density_share(sparsity, in_features):
    kept = Pattern(sparsity=sparsity).kept_per_row(in_features)
    assert 0 <= kept <= in_features and kept == round(in_features * (1.0 - sparsity))


# ---------------------------------------------------------------- the pattern checker

WEIGHT_POOLS = st.lists(st.sampled_from([0.0, -0.0, 1.0, -2.5, NAN, INF, -INF, 1e-45]), min_size=1, max_size=4)


@settings(max_examples=80)
@given(pattern=st.one_of(nm_patterns(), SPARSITIES.map(lambda s: Pattern(sparsity=s))), data=st.data())
def test_pattern_violations_agrees_with_a_direct_count(pattern, data):
    """A weight is kept when non-zero (NaN and Inf count, -0.0 does not); the checker reports how many
    groups (N:M) or rows (unstructured) keep more than allowed and the first one in row-major order."""
    m = pattern.m or 1
    rows, cols = data.draw(st.integers(0, 6)), data.draw(st.integers(0, 4)) * m
    weight = data.draw(score_tensors(rows, cols, WEIGHT_POOLS))
    kept = [[v != 0 for v in row] for row in weight.tolist()]
    if pattern.structured:
        over = [(r, g) for r in range(rows) for g in range(cols // m) if sum(kept[r][g * m : (g + 1) * m]) > pattern.n]
    else:
        over = [(r, None) for r in range(rows) if sum(kept[r]) > pattern.kept_per_row(cols)]
    expected = Violation(len(over), *over[0]) if over else None
    assert pattern_violations(weight, pattern) == expected


@given(case=nm_cases(), data=st.data())
def test_pattern_violations_finds_one_extra_weight_in_a_valid_mask(case, data):
    pattern, scores = case
    mask = select_nm(scores, pattern.n, pattern.m)
    assert pattern_violations(mask.float(), pattern) is None
    if mask.numel():
        row = data.draw(st.integers(0, mask.shape[0] - 1))
        group = data.draw(st.integers(0, mask.shape[1] // pattern.m - 1))
        dropped = (~mask[row, group * pattern.m : (group + 1) * pattern.m]).nonzero()[0, 0]
        mask[row, group * pattern.m + dropped] = True
        assert pattern_violations(mask.float(), pattern) == Violation(1, row, group)


# ---------------------------------------------------------------- top-k


@settings(max_examples=80)
@given(case=nm_cases(), dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_topk_n_m_keeps_exactly_n_per_group_by_score_then_lower_column(case, dtype):
    pattern, scores = case
    scores = torch.nan_to_num(scores.to(dtype))
    mask = TopKSelector().select(scores, pattern)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert (groups_keep(mask, pattern.m) == pattern.n).all()
    assert torch.equal(mask, topk_reference(scores, pattern.n, pattern.m))
    assert torch.equal(mask, TopKSelector().select(scores.clone(), pattern))
    assert torch.equal(mask, TopKSelector().select(scores.t().contiguous().t(), pattern))  # layout-free


@settings(max_examples=80)
@given(sparsity=SPARSITIES, data=st.data())
def test_topk_unstructured_keeps_the_rounded_share_of_every_row(sparsity, data):
    pattern = Pattern(sparsity=sparsity)
    rows, cols = data.draw(st.integers(0, 8)), data.draw(st.integers(0, 24))
    scores = data.draw(score_tensors(rows, cols))
    mask = TopKSelector().select(scores, pattern)
    keep = pattern.kept_per_row(cols)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert (mask.sum(1) == keep).all()
    if cols:
        assert torch.equal(mask, topk_reference(scores, keep, cols))
    assert pattern_violations(mask.float(), pattern) is None


NON_FINITE_POOLS = st.lists(st.sampled_from([NAN, INF, -INF, 0.0, 1.0, 1.0, -1.0]), min_size=1, max_size=5)


@given(case=nm_cases(pools=NON_FINITE_POOLS), keep=st.integers(0, 8))
def test_low_level_top_k_ranks_nan_above_inf_and_still_obeys_the_pattern(case, keep):
    """``select_nm`` and ``select_per_row`` take non-finite scores (the EGGS fill forces entries with
    +Inf); NaN ranks above +Inf as in ``torch.sort``, so the counts stay exact."""
    pattern, scores = case
    mask = select_nm(scores, pattern.n, pattern.m)
    assert (groups_keep(mask, pattern.m) == pattern.n).all()
    assert torch.equal(mask, topk_reference(scores, pattern.n, pattern.m))
    keep = min(keep, scores.shape[1])
    rows = select_per_row(scores, keep)
    assert (rows.sum(1) == keep).all()
    if scores.shape[1]:
        assert torch.equal(rows, topk_reference(scores, keep, scores.shape[1]))


@given(case=eggs_cases(), bad=st.sampled_from([NAN, INF, -INF]), data=st.data())
def test_selectors_reject_nan_and_inf_with_a_one_line_value_error(case, bad, data):
    selector, pattern, _, scores = case
    if not scores.numel():
        scores = torch.zeros(1, pattern.m)
    scores.view(-1)[data.draw(st.integers(0, scores.numel() - 1))] = bad
    for chosen, chosen_pattern in [
        (selector, pattern),
        (TopKSelector(), pattern),
        (TopKSelector(), Pattern(sparsity=0.5)),
    ]:
        with pytest.raises(ValueError) as error:
            chosen.select(scores, chosen_pattern)
        assert_clear_value_error(error, "NaN", "Inf")
        with pytest.raises(ValueError):
            select_in_chunks(chosen, scores, chosen_pattern, chunk_elements=1)


# ---------------------------------------------------------------- EGGS


@settings(max_examples=150)
@given(case=eggs_cases(), dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_eggs_mask_obeys_n_m_and_the_tile_guarantee(case, dtype):
    """The guarantee (method notes, "EGGS-PTP mask"; ``check_guarantee``): exactly N kept in every
    M-group of every row, and at least B kept in every input column of every full H x M tile, so at
    least B * floor(out / H) per input column in the layer. Rows after the last full tile are plain
    top-k, and B = 0 is plain top-k under every rule. Every rule keeps at most top-k's score per
    group, since top-k is the best N:M mask."""
    selector, pattern, h, scores = case
    scores = torch.nan_to_num(scores.to(dtype))
    n, m, b = pattern.n, pattern.m, selector.b
    mask = selector.select(scores, pattern)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert (groups_keep(mask, m) == n).all()
    assert all((counts >= b).all() for counts in tile_column_counts(mask, h))
    assert (mask.sum(0) >= b * (scores.shape[0] // h)).all()
    topk = topk_reference(scores, n, m)
    full = scores.shape[0] // h * h
    assert torch.equal(mask[full:], topk[full:])
    if b == 0:
        assert torch.equal(mask, topk)
    check_guarantee(mask, n, m, b, h)
    values = scores.double()
    kept, best = (values * mask).reshape(-1, m).sum(-1), (values * topk).reshape(-1, m).sum(-1)
    assert (kept <= best + 1e-12 * values.abs().reshape(-1, m).sum(-1)).all()  # up to float64 rounding


@settings(max_examples=120)
@given(case=eggs_cases(pools=INT_POOLS, exact=True))
def test_eggs_rules_match_a_per_tile_reference_on_tied_scores(case):
    """On integer scores (every sum exact, ties everywhere) each rule picks exactly what its
    documented tie order says: diagonals by sum then smaller k, matchings lexicographically first,
    repair swaps cheapest then first in (row, column, dropped column) order, fills by lower column."""
    selector, pattern, h, scores = case
    assert torch.equal(selector.select(scores, pattern), eggs_reference(selector, pattern, h, scores))


@settings(max_examples=80)
@given(case=eggs_cases())
def test_repair_changes_top_k_only_where_a_column_is_short(case):
    """Repair adds entries only to tile columns short of B in top-k (which end at exactly B), drops
    them only from columns above B (which end at B or more), and makes one swap per missing unit."""
    selector, pattern, h, scores = case
    selector = EggsSelector("repair", selector.b, selector.tile_height)
    mask = selector.select(scores, pattern)
    topk = topk_reference(scores, pattern.n, pattern.m)
    b, swaps = selector.b, 0
    starts = range(0, scores.shape[0] // h * h, h)
    for start, before, after in zip(starts, tile_column_counts(topk, h), tile_column_counts(mask, h)):
        added = (mask & ~topk)[start : start + h].sum(0)
        dropped = (topk & ~mask)[start : start + h].sum(0)
        short = before < b
        assert torch.equal(after[short], torch.full_like(after[short], b))
        assert (after[~short] >= b).all() and (after[~short] <= before[~short]).all()
        assert (added[~short] == 0).all() and (dropped[before <= b] == 0).all()
        swaps += int((b - before).clamp(min=0).sum())
    assert int((mask & ~topk).sum()) == int((topk & ~mask).sum()) == swaps


@settings(max_examples=60)
@given(case=eggs_cases())
def test_diagonal_keeps_b_whole_cyclic_diagonals_in_every_tile(case):
    selector, pattern, h, scores = case
    selector = EggsSelector("diagonal", selector.b, selector.tile_height)
    mask = selector.select(scores, pattern).numpy()
    m = pattern.m
    for _, _, tile in tiles(mask, h, m):
        whole = sum(bool(tile[np.arange(h), (np.arange(h) + k) % m].all()) for k in range(m))
        assert whole >= selector.b


@settings(max_examples=80)
@given(case=eggs_cases(), data=st.data())
def test_selection_is_deterministic_and_independent_of_chunking_and_layout(case, data):
    """Same scores, same mask bit for bit: on a copy, on a transposed-then-transposed view, and
    selected in row chunks of whole tiles (``select_in_chunks``) of any size."""
    selector, pattern, _, scores = case
    mask = selector.select(scores, pattern)
    assert torch.equal(mask, selector.select(scores.clone(), pattern))
    assert torch.equal(mask, selector.select(scores.t().contiguous().t(), pattern))
    budget = data.draw(st.integers(1, max(scores.numel(), 1)))
    assert torch.equal(mask, select_in_chunks(selector, scores, pattern, chunk_elements=budget))


@settings(max_examples=100)
@given(
    case=eggs_cases(pools=INT_POOLS),
    power=st.sampled_from([-60, -3, 5, "top"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_masks_do_not_depend_on_the_scale_of_the_scores(case, power, dtype):
    """Scaling by a power of two keeps every order and the order of every sum, so no rule may change
    its mask, even when the largest score lands next to the dtype's largest value ("top"), where
    tile sums and swap costs overflow unless the selector guards them."""
    selector, pattern, _, scores = case
    if power == "top":
        power = int(np.log2(torch.finfo(dtype).max)) - 2  # the pool's |scores| <= 3 < 2**2
    scaled = (scores.double() * 2.0**power).to(dtype)
    assert scaled.isfinite().all()
    assert torch.equal(selector.select(scaled, pattern), selector.select(scores, pattern))


@settings(max_examples=80)
@given(case=eggs_cases(pools=EXTREME_POOLS))
def test_eggs_meets_its_guarantee_on_scores_near_the_float32_limit(case):
    """Sums and differences of such scores overflow float32; the mask must still obey the pattern
    and the guarantee (``select`` raises GuaranteeError otherwise)."""
    selector, pattern, h, scores = case
    mask = selector.select(scores, pattern)
    assert (groups_keep(mask, pattern.m) == pattern.n).all()
    assert all((counts >= selector.b).all() for counts in tile_column_counts(mask, h))


@settings(max_examples=30)
@given(pattern=nm_patterns(), b=st.integers(0, 7), factor=st.sampled_from([1, 4, 16]), data=st.data())
def test_auto_candidates_are_valid_distinct_and_each_meets_its_guarantee(pattern, b, factor, data):
    """Every setting the per-layer search may pick is a valid EGGS selector for the pattern and meets
    its own guarantee, so whichever wins, the recorded setting describes the mask."""
    default = EggsSelector("repair", min(b, pattern.n), factor * pattern.m)
    candidates = EggsSettingSearch(default).candidates(pattern)
    assert candidates[0] == default and len(set(candidates)) == len(candidates)
    grid = {
        EggsSelector(rule, k, f * pattern.m)
        for rule in ("repair", "diagonal")
        for k in range(1, pattern.n + 1)
        for f in TILE_FACTORS
    }
    if pattern.m <= ENUMERATE_MAX_M:
        grid |= {EggsSelector("matching", k, pattern.m) for k in range(1, pattern.n + 1)}
    assert set(candidates) == grid | {default}
    chosen = data.draw(st.sampled_from(candidates))
    h = chosen.rows_together(pattern)
    scores = data.draw(score_tensors(h + data.draw(st.integers(0, 3)), pattern.m * 2, INT_POOLS))
    check_guarantee(chosen.select(scores, pattern), pattern.n, pattern.m, chosen.b, h)


@given(case=eggs_cases(), data=st.data())
def test_check_guarantee_rejects_a_mask_one_weight_off(case, data):
    selector, pattern, h, scores = case
    mask = selector.select(scores, pattern)
    if not mask.numel():
        return
    flat = data.draw(st.integers(0, mask.numel() - 1))
    mask.view(-1)[flat] = ~mask.view(-1)[flat]
    with pytest.raises(GuaranteeError):
        check_guarantee(mask, pattern.n, pattern.m, selector.b, h)
