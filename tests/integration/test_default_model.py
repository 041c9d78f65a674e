"""The real default model (SmolLM2-135M-Instruct) with small calibration: 8 windows x 256 tokens."""

import pytest
import torch

from eggs_ptp import PruneConfig, build_calibration, prune
from eggs_ptp.data import load_text
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import perplexity
from eggs_ptp.formats import save_pruned, verify_checkpoint
from eggs_ptp.models import DEFAULT_MODEL, load_model

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
    for name, overrides in {"magnitude": {"method": "magnitude"}, "wanda": {"method": "wanda"},
                            "eggs": {"method": "eggs"}, "eggs-again": {"method": "eggs"}}.items():
        model.load_state_dict(dense_state)
        _, report = prune(model, tokenizer, config.replace(**overrides), calibration=calibration, progress=False)
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
