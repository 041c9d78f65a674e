"""Joint pruning and quantization: on the grid, pruned stays pruned, and the sweep beats rounding."""

import pytest
import torch

from eggs_ptp.methods import build_method, method_config
from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import QuantScheme
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import ObsUpdate, Quantization, output_error
from eggs_ptp.updates.obs import HessianError


def layer(seed: int, rows: int = 16, cols: int = 96, tokens: int = 512):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=generator) @ torch.randn(cols, cols, generator=generator)
    stats = LayerStats(cols, with_hessian=True)
    stats.add(x)
    return torch.randn(rows, cols, generator=generator), stats


SCHEMES = [QuantScheme.parse("int8"), QuantScheme.parse("int4", 32), QuantScheme.parse("int4", 32, asymmetric=True)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: f"{s.name}-{'sym' if s.symmetric else 'asym'}")
def test_the_sweep_lands_on_the_grid_keeps_the_mask_and_beats_rounding(scheme):
    weight, stats = layer(0)
    pattern = Pattern.parse("2:4")
    # Re-fitted, the fp layer is the least-squares optimum of its mask: any other weights on the
    # mask, quantized ones included, must do worse against the dense layer.
    method = build_method(method_config("sparsegpt+refit"), pattern)
    fp = method.prune(weight, stats, pattern)
    joint, grid, record = Quantization(scheme, ObsUpdate()).apply(weight, fp.weight, fp.mask, stats)
    nearest, _, near_record = Quantization(scheme).apply(weight, fp.weight, fp.mask, stats)
    assert torch.equal(joint != 0, fp.mask & (joint != 0)) and not (joint[~fp.mask] != 0).any()
    assert not joint.signbit()[~fp.mask].any()
    assert not grid.off_grid(joint, fp.mask).any()
    hessian = stats.hessian
    errors = [float(output_error(weight - w, hessian).sum()) for w in (fp.weight, joint, nearest)]
    assert errors[0] < errors[1] < errors[2]  # quantizing costs; spreading the error costs less
    assert record["mode"] == "sweep" and near_record["mode"] == "nearest"
    assert record["recon_error_fp"] < record["recon_error"] < near_record["recon_error"]


def test_every_method_composes_with_quantization_and_records_it():
    weight, stats = layer(1)
    pattern = Pattern.parse("2:4")
    for name, mode in (
        ("magnitude", "nearest"),
        ("wanda", "nearest"),
        ("sparsegpt", "sweep"),
        ("eggs+update", "sweep"),
    ):
        method = build_method(method_config(name, quantize="int4", group_size=32), pattern)
        result = method.prune(weight, stats, pattern)
        assert result.grid is not None and not result.grid.off_grid(result.weight, result.mask).any(), name
        assert result.settings["quantization"]["mode"] == mode
        assert pattern.structured and not (result.weight.reshape(16, -1, 4) != 0).sum(-1).gt(2).any()
    rtn = build_method(method_config("sparsegpt", quantize="int8", rtn=True), pattern)
    assert rtn.quantization.sweep is None


def test_quantized_pruning_is_deterministic_bit_for_bit():
    weight, stats = layer(2)
    pattern = Pattern.parse("2:4")
    method = build_method(method_config("eggs+update", quantize="int4", group_size=32, asymmetric=True), pattern)
    first, second = method.prune(weight, stats, pattern), method.prune(weight, stats, pattern)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.grid.zeros, second.grid.zeros)


def test_unstructured_and_dead_inputs():
    weight, stats = layer(3)
    stats.hessian[:, 5] = 0
    stats.hessian[5, :] = 0
    result = build_method(method_config("sparsegpt", quantize="int8"), Pattern.parse("0.5")).prune(
        weight, stats, Pattern.parse("0.5")
    )
    assert float(result.mask.float().mean()) == pytest.approx(0.5, abs=0.02)
    assert not result.grid.off_grid(result.weight, result.mask).any()
    assert (result.weight[:, 5] == 0).all()


def test_settings_that_cannot_combine_are_refused():
    with pytest.raises(ValueError, match="needs --quantize"):
        method_config("sparsegpt", rtn=True)
    with pytest.raises(ValueError, match="not both"):
        method_config("sparsegpt", quantize="int8", reconstruct=1)
    with pytest.raises(ValueError, match="multiple of 32"):
        method_config("sparsegpt", quantize="int4", group_size=48)


def test_a_singular_hessian_is_named():
    weight, _ = layer(4)
    stats = LayerStats(96, with_hessian=True)
    stats.add(torch.ones(4, 96))
    stats.hessian[0, 0] = -1e9
    with pytest.raises(HessianError):
        ObsUpdate().quantize(weight, stats, torch.ones_like(weight, dtype=torch.bool), SCHEMES[0])
