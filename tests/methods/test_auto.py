"""Per-layer automatic EGGS settings: valid for what they record, never worse than the default."""

import dataclasses

import pytest
import torch

from eggs_ptp import EggsConfig, PruneConfig, prune
from eggs_ptp.methods import build_method, method_config
from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors import EggsSelector, check_guarantee
from eggs_ptp.selectors.auto import EggsSettingSearch
from eggs_ptp.stats import LayerStats
from eggs_ptp.updates import output_error

from helpers import QUIET, random_calibration, tiny_model


def layer(seed: int, rows: int = 64, cols: int = 32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, cols, generator=generator) * torch.rand(cols, generator=generator) * 3
    stats = LayerStats(cols, with_hessian=True)
    stats.add(x)
    return torch.randn(rows, cols, generator=generator), stats


def test_candidates_start_with_the_default_and_are_unique():
    default = EggsSelector("repair", 1, 256)
    candidates = EggsSettingSearch(default).candidates(Pattern(2, 4))
    assert candidates[0] == default and len(set(candidates)) == len(candidates)
    assert {c.b for c in candidates} == {1, 2} and {c.tile_height for c in candidates} == {4, 16, 64, 256}
    assert EggsSelector("matching", 2, 4) in candidates
    wide = EggsSettingSearch(EggsSelector("repair", 1, 8)).candidates(Pattern(4, 8))
    assert all(c.rule != "matching" for c in wide)  # M = 8 would need a Hungarian solve per tile


@pytest.mark.parametrize("method", ["eggs", "eggs+update"])
@pytest.mark.parametrize("seed", range(3))
def test_auto_never_loses_to_the_default_and_meets_its_recorded_guarantee(method, seed):
    weight, stats = layer(seed)
    pattern = Pattern(2, 4)
    config = method_config(method, tile_height=16)
    fixed = build_method(config, pattern).prune(weight, stats, pattern)
    auto = build_method(dataclasses.replace(config, auto=True), pattern).prune(weight, stats, pattern)
    settings = auto.settings
    check_guarantee(auto.mask, 2, 4, settings["b"], settings["tile_height"])
    fixed_error = float(output_error(weight - fixed.weight, stats.hessian).sum())
    auto_error = float(output_error(weight - auto.weight, stats.hessian).sum())
    assert auto_error <= fixed_error * (1 + 1e-6)
    assert settings["recon_error"] <= settings["default_recon_error"]


def test_auto_records_each_layers_choice_in_the_report():
    config = PruneConfig(method=EggsConfig(tile_height=4, auto=True), pattern="2:4", nsamples=4, seqlen=16)
    model, report = prune(tiny_model("llama"), None, config, calibration=random_calibration(), run=QUIET)
    for entry in report.pruned_layers:
        assert entry.settings["rule"] in ("repair", "diagonal", "matching"), entry.name
        assert 1 <= entry.settings["b"] <= 2
    assert "settings" in report.to_dict()["layers"][0]


def test_auto_is_refused_for_methods_without_eggs_settings():
    with pytest.raises(ValueError, match="method 'wanda' has no setting auto"):
        method_config("wanda", auto=True)
