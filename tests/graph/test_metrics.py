"""Graph metrics on hand-built masks whose answers are known in closed form."""

import json
import math

import pytest
import torch

from eggs_ptp.graph import (
    degree_histogram,
    expansion_estimate,
    layer_metrics,
    spectral_gap,
    summarise,
    tile_stats,
)
from eggs_ptp.graph.metrics import expansion_sizes


def random_mask(out, inn, density, seed=0):
    return torch.rand(out, inn, generator=torch.Generator().manual_seed(seed)) < density


def two_four(out, inn, seed=0):
    scores = torch.rand(out, inn // 4, 4, generator=torch.Generator().manual_seed(seed))
    return scores.argsort(-1).argsort(-1).lt(2).reshape(out, inn)  # exactly 2 of every 4 per row


def test_perfect_matching():
    # A disjoint union of 8 edges: every singular value of the normalised matrix is 1, so gap 0.
    m = layer_metrics(torch.eye(8, dtype=torch.bool))
    assert (m.in_degree_min, m.in_degree_max, m.out_degree_min, m.out_degree_max) == (1, 1, 1, 1)
    assert m.zero_inputs == 0 and m.kept_fraction == pytest.approx(1 / 8)
    assert m.spectral_gap == pytest.approx(0.0, abs=1e-12)
    assert all(p.min_ratio == 1.0 for p in m.expansion)  # |Gamma(T)| = |T|


def test_complete_bipartite():
    out, inn = 6, 300
    m = layer_metrics(torch.ones(out, inn, dtype=torch.bool), expansion_fraction=0.02)
    assert m.spectral_gap == pytest.approx(1.0)  # rank one
    assert [p.size for p in m.expansion] == [1, 2, 4]
    assert [p.min_ratio for p in m.expansion] == [out / s for s in (1, 2, 4)]
    assert m.in_degree_histogram.counts == (inn,) and m.in_degree_histogram.start == out
    assert m.expansion_is_estimate


def test_disconnected_blocks_have_zero_gap():
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[:5, :6] = True
    mask[5:, 6:] = True
    assert spectral_gap(mask) == pytest.approx(0.0, abs=1e-12)
    mask[0, 11] = True  # one bridge connects them, weakly
    assert 0.0 < spectral_gap(mask) < 0.2


def test_star():
    # One input reaching all 7 outputs: a connected star, no sigma_2.
    star = torch.zeros(7, 1, dtype=torch.bool)
    star[:, 0] = True
    m = layer_metrics(star)
    assert (m.in_degree_min, m.out_degree_max, m.spectral_gap) == (7, 1, 1.0)
    assert m.expansion[0].min_ratio == 7.0
    # A star inside a larger, otherwise empty layer: empty rows/columns are dropped.
    wide = torch.zeros(9, 5, dtype=torch.bool)
    wide[2, :] = True
    assert spectral_gap(wide) == 1.0 and layer_metrics(wide).zero_inputs == 0


def test_isolated_input_is_counted():
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[:, 3] = False
    m = layer_metrics(mask, b=5)
    assert (m.zero_inputs, m.zero_inputs_fraction) == (1, 0.2)
    assert m.below_b_inputs == 5  # every input keeps 4 or 0, fewer than B=5
    assert m.in_degree_min == 0 and m.expansion_min == 0.0
    assert m.expansion[0].greedy_min == 0.0  # greedy starts from the lowest-degree input
    assert m.spectral_gap == pytest.approx(1.0)  # the rest is complete bipartite


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(5, 7, dtype=torch.bool),
        torch.zeros(5, 7, dtype=torch.bool),
        torch.ones(1, 1, dtype=torch.bool),
        torch.zeros(1, 1, dtype=torch.bool),
        torch.tensor([[True, False, False], [False, False, False], [True, False, True]]),
        torch.zeros(600, 700, dtype=torch.bool),  # the Lanczos-sized path too
    ],
    ids=["all-kept", "all-pruned", "1x1-kept", "1x1-pruned", "empty-rows-and-cols", "large-empty"],
)
def test_degenerate_masks_give_finite_answers(mask):
    m = layer_metrics(mask, pattern=(2, 4))
    numbers = [v for v in _leaves(m.to_dict()) if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)
    json.dumps(m.to_dict())
    if not mask.any():
        assert m.spectral_gap == 0.0 and m.expansion_min == 0.0 and m.zero_inputs == mask.shape[1]


def test_one_by_one_conventions():
    kept = layer_metrics(torch.ones(1, 1, dtype=torch.bool))
    assert (kept.spectral_gap, kept.expansion_min, kept.tiles) == (1.0, 1.0, None)


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@pytest.mark.parametrize("shape", [(600, 900), (900, 600)])
@pytest.mark.parametrize("kind", ["random", "2:4", "bridged-blocks"])
def test_lanczos_agrees_with_dense_svd(shape, kind):
    out, inn = shape
    if kind == "random":
        mask = random_mask(out, inn, 0.1, seed=3)
    elif kind == "2:4":
        mask = two_four(out, inn, seed=4)
    else:  # two dense blocks joined by a handful of edges: a small gap, the hard case for Lanczos
        mask = torch.zeros(out, inn, dtype=torch.bool)
        mask[: out // 2, : inn // 2] = random_mask(out // 2, inn // 2, 0.3, seed=5)
        mask[out // 2 :, inn // 2 :] = random_mask(out - out // 2, inn - inn // 2, 0.3, seed=6)
        mask |= random_mask(out, inn, 0.0005, seed=7)
    dense, fast = spectral_gap(mask, dense_max=10**9), spectral_gap(mask, dense_max=0)
    assert fast == pytest.approx(dense, abs=1e-8)
    assert spectral_gap(mask, dense_max=0) == fast  # seeded: repeatable


def test_tile_counts_on_a_hand_built_two_four_mask():
    # 8 x 8, 2:4 along inputs. Rows 0-3 keep inputs {0,1} and {4,5}; rows 4-7 rotate through the group.
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, [0, 1, 4, 5]] = True
    for row in range(4, 8):
        mask[row, [row % 4, (row + 1) % 4, 4 + row % 4, 4 + (row + 1) % 4]] = True
    stats = tile_stats(mask, 2, 4)  # 4 x 4 tiles: 2 down, 2 across, 16 tile columns
    assert stats.tile_columns == 16
    assert stats.zero_count == 4 and stats.zero_fraction == 0.25  # inputs 2, 3, 6, 7 in the top tiles
    assert stats.below_b_count == 4
    assert tile_stats(mask, 2, 4, b=3).below_b_count == 12  # all but the top tiles' 4-kept columns
    tall = tile_stats(mask, 2, 4, tile_height=8)  # one tile down: every input reached somewhere
    assert (tall.tile_columns, tall.zero_count) == (8, 0)
    assert tile_stats(mask[:3], 2, 4).tile_columns == 0  # no full tile: zero counts, no division


def test_degree_histogram_bins_wide_ranges():
    exact = degree_histogram(torch.tensor([3, 3, 5]))
    assert (exact.start, exact.width, exact.counts) == (3, 1, (2, 0, 1))
    wide = degree_histogram(torch.arange(1000))
    assert len(wide.counts) <= 64 and sum(wide.counts) == 1000
    assert wide.edges()[0] == 0 and wide.edges()[-1] >= 1000


def test_expansion_is_seeded_and_sized():
    mask = random_mask(64, 400, 0.05, seed=1)
    assert expansion_estimate(mask) == expansion_estimate(mask)
    assert [p.size for p in expansion_estimate(mask)] == [1, 2, 4]  # up to 1% of 400 inputs
    assert expansion_sizes(50) == [1]
    greedy = expansion_estimate(mask, fraction=0.05)
    assert all(p.min_ratio == min(p.random_min, p.greedy_min) for p in greedy)


def test_summarise():
    good = layer_metrics(torch.ones(4, 4, dtype=torch.bool))
    cut = torch.ones(4, 4, dtype=torch.bool)
    cut[:, 0] = False
    bad = layer_metrics(cut)
    summary = summarise([good, bad])
    assert summary == {
        "layers": 2,
        "in_degree_min_mean": 2.0,
        "in_degree_min_worst": 0,
        "zero_inputs": 1,
        "mean_spectral_gap": pytest.approx(1.0),
        "expansion_min": 0.0,
    }
    assert summarise([])["layers"] == 0


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (torch.ones(3, 3), TypeError, "bool tensor"),
        (torch.ones(3, 3, dtype=torch.int8), TypeError, "bool tensor"),
        ([[True]], TypeError, "bool tensor"),
        (torch.ones(2, 3, 4, dtype=torch.bool), TypeError, "2-D"),
        (torch.ones(0, 4, dtype=torch.bool), ValueError, "at least one"),
    ],
)
def test_bad_masks_are_refused_in_one_line(bad, error, match):
    with pytest.raises(error, match=match) as caught:
        layer_metrics(bad)
    assert "\n" not in str(caught.value)
    with pytest.raises(error):
        spectral_gap(bad)


def test_plots_write_pngs_and_leave_matplotlib_state_alone(tmp_path):
    import matplotlib

    from eggs_ptp.graph import plots

    before = dict(matplotlib.rcParams)
    tiled = [layer_metrics(two_four(16, 32, seed=i), pattern=(2, 4)) for i in range(3)]
    untiled = [layer_metrics(random_mask(16, 32, 0.5, seed=i)) for i in range(3)]  # a NaN column in the heat map
    written = [
        plots.heatmap([(f"layer{i}", m) for i, m in enumerate(tiled + untiled)], tmp_path / "heat.png"),
        plots.degree_histograms({"2:4": tiled, "unstructured": untiled}, tmp_path / "degrees.png"),
        plots.connectivity_vs_error(
            {"2:4": [(m, 0.1 * i) for i, m in enumerate(tiled)], "unstructured": [(m, None) for m in untiled]},
            tmp_path / "scatter.png",
            metric="in_degree_min",
        ),
    ]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in written)
    assert plots.connectivity_vs_error({"no errors": [(tiled[0], None)]}, tmp_path / "none.png") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["degrees.png", "heat.png", "scatter.png"]
    assert dict(matplotlib.rcParams) == before
    with pytest.raises(ValueError, match="unknown connectivity metric"):
        plots.connectivity_vs_error({"x": [(tiled[0], 0.1)]}, tmp_path / "x.png", metric="gap")
