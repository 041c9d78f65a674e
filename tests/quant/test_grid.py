"""Integer grids: hand-checked scales, exact dequantization, kept-only ranges, checked records."""

import pytest
import torch

from eggs_ptp.quant import SCALE_DTYPE, Grid, QuantScheme


def test_int8_scale_is_the_kept_maximum_over_127_in_float16():
    weight = torch.tensor([[0.5, -2.54, 100.0, 1.0]])  # 100.0 is pruned: it must not stretch the grid
    kept = torch.tensor([[True, True, False, True]])
    grid = QuantScheme.parse("int8").fit(weight, kept)
    assert grid.scales.dtype == SCALE_DTYPE and grid.zeros is None
    assert grid.scales.item() == torch.tensor(2.54 / 127, dtype=torch.float16).item()
    q = grid.quantize(weight)
    assert q[0, 1].item() == -127 and q[0, 2].item() == 127  # the pruned weight clamps
    scale = grid.scales.float().item()
    assert grid.round(weight)[0, 0].item() == round(0.5 / scale) * scale


def test_int4_symmetric_groups_and_the_implied_zero_of_8():
    weight = torch.arange(1, 65, dtype=torch.float32).reshape(1, 64)
    grid = QuantScheme.parse("int4", group_size=32).fit(weight, torch.ones_like(weight, dtype=torch.bool))
    assert grid.scales.shape == (1, 2)
    assert grid.scales[0].tolist() == [pytest.approx(32 / 7, rel=1e-3), pytest.approx(64 / 7, rel=1e-3)]
    q = grid.quantize(weight)
    assert q.min() >= 8 and q.max() == 15  # positive weights: upper half of the nibble


def test_int4_asymmetric_spans_min_to_max_with_zero_on_the_grid():
    weight = torch.tensor([[-1.0, 0.0, 2.0, 3.0] * 8])
    grid = QuantScheme.parse("int4", group_size=32, asymmetric=True).fit(
        weight, torch.ones_like(weight, dtype=torch.bool)
    )
    assert grid.scales.float().item() == pytest.approx(4 / 15, rel=1e-3)
    assert grid.zeros.item() == round(1 / grid.scales.float().item())
    assert grid.round(torch.zeros(1, 32)).abs().max().item() == 0.0  # zero is exactly representable


def test_partial_last_group_and_dequantize_is_exact():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 72, generator=generator)
    kept = torch.rand(5, 72, generator=generator) > 0.5
    for scheme in (QuantScheme.parse("int8"), QuantScheme.parse("int4", 32), QuantScheme.parse("int4", 32, True)):
        grid = scheme.fit(weight, kept)
        assert grid.scales.shape == (5, scheme.groups(72))
        q = grid.quantize(weight)
        low, high = scheme.stored_range
        assert q.min() >= low and q.max() <= high
        rounded = grid.round(weight)
        assert torch.equal(grid.round(rounded), rounded)  # grid values are fixed points
        assert not grid.off_grid(torch.where(kept, rounded, 0.0), kept).any()
        for column in (0, 31, 32, 71):
            assert torch.equal(grid.round_column(weight[:, column], column), rounded[:, column])
        halfway = rounded + 0.5 * grid.scales.float().repeat_interleave(scheme.group_columns(72), 1)[:, :72]
        assert grid.off_grid(halfway, kept).any()


def test_all_zero_and_tiny_groups_keep_a_positive_scale():
    weight = torch.zeros(2, 32)
    weight[1, 0] = 1e-12
    grid = QuantScheme.parse("int8").fit(weight, torch.ones_like(weight, dtype=torch.bool))
    assert (grid.scales.float() > 0).all()
    assert torch.equal(grid.round(weight)[0], weight[0])


def test_bad_schemes_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantScheme.parse("int4", group_size=100)
    with pytest.raises(ValueError, match="need int4"):
        QuantScheme.parse("int8", asymmetric=True)
    with pytest.raises(ValueError, match="unknown quantization"):
        QuantScheme.parse("int3")
    assert QuantScheme.parse("none") is None
    assert QuantScheme.from_dict(QuantScheme.parse("int4", 64, True).to_dict()) == QuantScheme(4, False, 64)


def test_grid_tensors_round_trip_and_are_checked():
    scheme = QuantScheme.parse("int4", 32, asymmetric=True)
    grid = scheme.fit(torch.randn(3, 64), torch.ones(3, 64, dtype=torch.bool))
    tensors = grid.tensors("model.layers.0.mlp.up_proj")
    assert set(tensors) == {"model.layers.0.mlp.up_proj.weight.scales", "model.layers.0.mlp.up_proj.weight.zeros"}
    back = Grid.from_tensors(scheme, "model.layers.0.mlp.up_proj", tensors, 64)
    assert torch.equal(back.scales, grid.scales) and torch.equal(back.zeros, grid.zeros)
    with pytest.raises(ValueError, match="needs zero points"):
        Grid.from_tensors(scheme, "model.layers.0.mlp.up_proj", {k: v for k, v in tensors.items() if "scales" in k}, 64)
    with pytest.raises(ValueError, match="float16"):
        Grid.from_tensors(
            scheme,
            "model.layers.0.mlp.up_proj",
            {**tensors, "model.layers.0.mlp.up_proj.weight.scales": grid.scales.float()},
            64,
        )
