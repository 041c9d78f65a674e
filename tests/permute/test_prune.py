import json

import pytest
import torch

from eggs_ptp import PruneConfig, prune
from eggs_ptp.formats import save_pruned, verify_checkpoint
from eggs_ptp.methods import build_method, method_config
from eggs_ptp.models import find_blocks
from eggs_ptp.pattern import Pattern
from eggs_ptp.stats import LayerStats

from helpers import QUIET, random_calibration, tiny_model

CONSUMERS = {"llama": ("self_attn.o_proj", "mlp.down_proj"), "opt": ("self_attn.out_proj", "fc2")}


def config(method, **changes):
    settings = {"tile_height": 8} if method.startswith("eggs") else {}
    return PruneConfig(method=method_config(method, **settings), pattern="2:4", nsamples=2, seqlen=16, **changes)


def block0_kept_score(dense, pruned, local, method):
    """Score the unpermuted run kept in block 0's ``local`` layer, from its dense inputs."""
    module = find_blocks(dense)[1][0].get_submodule(local)
    stats = LayerStats(module.in_features)
    handle = module.register_forward_hook(lambda m, inputs, output: stats.add(inputs[0]))
    with torch.no_grad():
        dense(random_calibration(nsamples=2).windows, use_cache=False)
    handle.remove()
    scores = build_method(config(method).method, Pattern(2, 4)).score(module.weight.detach().float(), stats)
    kept = find_blocks(pruned)[1][0].get_submodule(local).weight != 0
    return float(scores[kept].sum(dtype=torch.float64))


@pytest.mark.parametrize("family", sorted(CONSUMERS))
@pytest.mark.parametrize("method", ["eggs", "wanda"])
def test_permuted_prune_verifies_and_keeps_more_score(tmp_path, family, method):
    plain, _ = prune(tiny_model(family), None, config(method), calibration=random_calibration(nsamples=2), run=QUIET)
    model, report = prune(
        tiny_model(family), None, config(method, permute=True), calibration=random_calibration(nsamples=2), run=QUIET
    )
    folder = save_pruned(model, None, report, tmp_path / "out")
    assert verify_checkpoint(folder) == len(report.pruned_layers)

    layers = {layer["name"]: layer for layer in json.loads((folder / "sparsity.json").read_text())["layers"]}
    prefix = find_blocks(model)[0]
    for name, layer in layers.items():
        record = layer["permutation"]
        if name.endswith(CONSUMERS[family]):
            assert record["applied"], (name, record)
            assert record["kept_score"] > record["identity_kept_score"]
        else:
            assert record["applied"] is False and "residual stream" in record["reason"], (name, record)
    for local in CONSUMERS[family]:  # block 0 sees the same inputs in both runs
        record = layers[f"{prefix}.0.{local}"]["permutation"]
        unpermuted = block0_kept_score(tiny_model(family), plain, local, method)
        assert record["identity_kept_score"] == pytest.approx(unpermuted, rel=1e-5)
        assert record["kept_score"] >= unpermuted


def test_a_method_without_a_score_permutes_on_a_proxy(tmp_path):
    model, report = prune(
        tiny_model("llama"),
        None,
        config("sparsegpt", permute=True),
        calibration=random_calibration(nsamples=2),
        run=QUIET,
    )
    assert verify_checkpoint(save_pruned(model, None, report, tmp_path / "out")) == len(report.pruned_layers)
    down = next(layer for layer in report.layers if layer.name.endswith("0.mlp.down_proj"))
    assert down.permutation["applied"] and down.permutation["score"] == "wanda (proxy: sparsegpt has no score)"


def test_without_permute_nothing_is_recorded():
    _, report = prune(tiny_model("llama"), None, config("wanda"), calibration=random_calibration(nsamples=2), run=QUIET)
    assert all(layer.permutation is None for layer in report.layers)
