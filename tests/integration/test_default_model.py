"""The real default model (SmolLM2-135M-Instruct) with small calibration: 8 windows x 256 tokens."""

import pytest
import torch

from eggs_ptp import PruneConfig, build_calibration, prune
from eggs_ptp.data import load_text
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import perplexity
from eggs_ptp.formats import save_pruned, verify_checkpoint
from eggs_ptp.models import DEFAULT_MODEL, load_model
from eggs_ptp.pattern import Pattern

from helpers import QUIET

pytestmark = pytest.mark.slow
SEQLEN, WINDOWS = 256, 8


@pytest.fixture(scope="module")
def evaluation(default_model):
    return tokenize(default_model.tokenizer, load_text("wiki", "evaluation").text)


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def dense_state(default_model):
    return {k: v.clone() for k, v in default_model.model.state_dict().items()}


@pytest.fixture(scope="module")
def pruned(default_model, dense_state, evaluation):
    """Perplexity and kept masks per method, each pruned from the same dense weights."""
    model, tokenizer = default_model.model, default_model.tokenizer
    config = PruneConfig(nsamples=8, seqlen=SEQLEN)
    calibration = build_calibration(model, tokenizer, config)
    results = {"dense": perplexity(model, evaluation, SEQLEN, WINDOWS, progress=False).perplexity}
    for name, overrides in {
        "magnitude": {"method": "magnitude"},
        "wanda": {"method": "wanda"},
        "eggs": {"method": "eggs"},
        "eggs-again": {"method": "eggs"},
    }.items():
        model.load_state_dict(dense_state)
        _, report = prune(model, tokenizer, config.replace(**overrides), calibration=calibration, run=QUIET)
        masks = {k: (v != 0) for k, v in model.state_dict().items() if ".layers." in k and v.dim() == 2}
        results[name] = (perplexity(model, evaluation, SEQLEN, WINDOWS, progress=False).perplexity, masks, report)
    model.load_state_dict(dense_state)
    return results


def test_dense_perplexity_lies_in_its_band(pruned):
    assert 10 < pruned["dense"] < 20


def test_calibrated_methods_are_far_better_than_magnitude(pruned):
    magnitude = pruned["magnitude"][0]
    assert magnitude > 500
    for name in ("wanda", "eggs"):
        assert pruned["dense"] < pruned[name][0] < magnitude / 4, name


def test_two_runs_give_identical_masks(pruned):
    first, second = pruned["eggs"][1], pruned["eggs-again"][1]
    assert first.keys() == second.keys() and len(first) == 30 * 7
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_saved_checkpoint_verifies_and_reloads(default_model, dense_state, pruned, tmp_path):
    model = default_model.model
    _, _, report = pruned["eggs"]
    for key, mask in pruned["eggs"][1].items():  # re-apply the eggs masks to the dense weights
        model.state_dict()[key].mul_(mask)
    try:
        out = save_pruned(model, default_model.tokenizer, report, tmp_path / "eggs-2of4")
        assert verify_checkpoint(out) == 210
        reloaded = load_model(str(out)).model
        assert torch.equal(reloaded.model.layers[3].mlp.down_proj.weight, model.model.layers[3].mlp.down_proj.weight)
    finally:
        model.load_state_dict(dense_state)


def test_update_and_refit_never_raise_a_real_blocks_reconstruction_error(default_model):
    """Issue 7: on block 5's real layers, the weight update only ever lowers the calibration error."""
    from eggs_ptp.methods import build_method, method_config
    from eggs_ptp.models import find_blocks, find_linears
    from eggs_ptp.stats import LayerStats
    from eggs_ptp.updates import output_error

    model, tokenizer = default_model.model, default_model.tokenizer
    calibration = build_calibration(model, tokenizer, PruneConfig(nsamples=4, seqlen=SEQLEN))
    prefix, blocks = find_blocks(model)
    layers = find_linears(blocks[5], f"{prefix}.5")
    stats = {layer.name: LayerStats(layer.in_features, with_hessian=True) for layer in layers}
    handles = [layer.module.register_forward_hook(lambda m, i, o, s=stats[layer.name]: s.add(i[0])) for layer in layers]
    try:
        with torch.no_grad():
            model(calibration.windows)
    finally:
        for handle in handles:
            handle.remove()
    mask_only, updated = (build_method(method_config(name), Pattern(2, 4)) for name in ("eggs", "eggs+update"))
    for layer in layers:
        weight, layer_stats = layer.weight.float(), stats[layer.name]
        baseline = output_error(
            weight - mask_only.prune(weight, layer_stats, Pattern(2, 4)).weight, layer_stats.hessian
        )
        result = updated.prune(weight, layer_stats, Pattern(2, 4))
        assert float(output_error(weight - result.weight, layer_stats.hessian).sum()) < float(baseline.sum()), (
            layer.name
        )
