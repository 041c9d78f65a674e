"""The walk's dense stream and sequential calibration, checked against the model itself.

A spy method records the statistics each layer is pruned with. They must equal sums computed here
from plain forwards: the dense model's own layer inputs X, and the inputs X~ of a model in which
exactly the layers pruned before this one are pruned.
"""

import copy
from dataclasses import dataclass, field

import pytest
import torch

from eggs_ptp import PruneConfig
from eggs_ptp.methods import Method, build_method, parse_method
from eggs_ptp.models import find_blocks
from eggs_ptp.pattern import Pattern
from eggs_ptp.walk import capture_block_inputs, walk_and_prune
from eggs_ptp.walk.sequential import layer_groups

from helpers import MOE_FAMILIES, random_calibration, tiny_model

PATTERN = Pattern(2, 4)


@dataclass(frozen=True)
class Spy(Method):
    """A real method that also keeps the statistics and result of every layer it prunes, in order."""

    seen: list = field(default_factory=list, compare=False)

    def prune(self, weight, stats, pattern):
        result = super().prune(weight, stats, pattern)
        self.seen.append((weight.clone(), stats, result.weight.clone()))
        return result


def spy(label: str) -> Spy:
    method = build_method(parse_method(label), PATTERN)
    return Spy(**{f: getattr(method, f) for f in method.__dataclass_fields__})


def walk(model, method, windows):
    prefix, blocks = find_blocks(model)
    hidden, calls = capture_block_inputs(model, blocks, windows, progress=False)
    return walk_and_prune(blocks, prefix, calls, hidden, method, PATTERN, progress=False)


def layer_inputs(model, windows, name: str) -> torch.Tensor:
    """Every calibration token's input to module ``name`` in a plain forward of ``model``."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        for window in windows:
            model(window.unsqueeze(0), use_cache=False)
    handle.remove()
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in seen]).double()


def with_pruned(dense, pruned, names: list[str]):
    """``dense`` with the weights of modules ``names`` taken from ``pruned``."""
    hybrid = copy.deepcopy(dense)
    for name in names:
        hybrid.get_submodule(name).weight.data.copy_(pruned.get_submodule(name).weight.data)
    return hybrid


LLAMA = [
    f"model.layers.{b}.{m}"
    for b in range(2)
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]


POSITION_IN_GROUP = {"k_proj": 1, "v_proj": 2, "up_proj": 1}  # q/k/v and gate/up read one input


@pytest.mark.parametrize("label", ["sparsegpt(target=model)", "sparsegpt(target=model, sequential=True)"])
def test_every_layer_sees_the_inputs_of_the_model_pruned_before_it_and_the_dense_models(label):
    """A dense-model target always calibrates sequentially: on the block's already-pruned layers."""
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    windows = random_calibration(nsamples=3, seqlen=16).windows
    method = spy(label)
    sequential = method.sequential
    walk(model, method, windows)
    assert len(method.seen) == len(LLAMA)
    for number, name in enumerate(LLAMA):
        block = name.split(".")[2]
        if sequential:  # every layer of earlier groups: earlier blocks, and its block before its group
            earlier = LLAMA[: number - POSITION_IN_GROUP.get(name.rsplit(".", 1)[1], 0)]
        else:
            earlier = [n for n in LLAMA if int(n.split(".")[2]) < int(block)]
        pruned_inputs = layer_inputs(with_pruned(dense, model, earlier), windows, name)
        dense_inputs = layer_inputs(dense, windows, name)
        _, stats, _ = method.seen[number]
        torch.testing.assert_close(
            stats.hessian.double(), pruned_inputs.T @ pruned_inputs, rtol=1e-5, atol=1e-4, msg=name
        )
        torch.testing.assert_close(
            stats.drift.double(), pruned_inputs.T @ (dense_inputs - pruned_inputs), rtol=1e-4, atol=1e-4, msg=name
        )
        if not earlier:
            assert not stats.drift.any(), name  # nothing pruned before it: the streams agree exactly


def test_the_first_group_of_a_dense_target_is_pruned_as_without_it():
    """q/k/v of block 0 see the same inputs in both streams; everything after them differs."""
    windows = random_calibration(nsamples=3, seqlen=16).windows
    plain, target = tiny_model("llama"), tiny_model("llama")
    walk(plain, build_method(parse_method("sparsegpt"), PATTERN), windows)
    walk(target, build_method(parse_method("sparsegpt(target=model)"), PATTERN), windows)
    for name in LLAMA[:3]:
        assert torch.equal(plain.get_submodule(name).weight, target.get_submodule(name).weight), name
    assert any(not torch.equal(plain.get_submodule(n).weight, target.get_submodule(n).weight) for n in LLAMA[3:])


def test_a_dense_target_fits_the_dense_models_outputs_better():
    """Down to the last block's output, the dense-model target tracks the dense model more closely."""
    dense = tiny_model("llama", num_hidden_layers=4)
    windows = random_calibration(nsamples=8, seqlen=32).windows
    errors = {}
    for label in ("sparsegpt", "sparsegpt(target=model)"):
        model = copy.deepcopy(dense)
        walk(model, build_method(parse_method(label), PATTERN), windows)
        with torch.no_grad():
            got = model(windows, output_hidden_states=True, use_cache=False).hidden_states[-1]
            want = dense(windows, output_hidden_states=True, use_cache=False).hidden_states[-1]
        errors[label] = float((got - want).norm() / want.norm())
    assert errors["sparsegpt(target=model)"] < errors["sparsegpt"]


def test_layer_groups_follow_the_block_without_a_table():
    model = tiny_model("llama")
    prefix, blocks = find_blocks(model)
    hidden, calls = capture_block_inputs(model, blocks, random_calibration(1, 16).windows, progress=False)
    from eggs_ptp.models.layers import find_layers

    targets = find_layers(blocks[0], f"{prefix}.0").prunable
    groups = layer_groups(blocks[0], 0, calls[0], hidden[0], targets)
    assert [[layer.name.split(".")[-1] for layer in group] for group in groups] == [
        ["q_proj", "k_proj", "v_proj"],
        ["o_proj"],
        ["gate_proj", "up_proj"],
        ["down_proj"],
    ]


@pytest.mark.parametrize("family", ["gpt2", "mixtral", "qwen2_moe"])
def test_layer_groups_of_other_layouts(family):
    model = tiny_model(family)
    prefix, blocks = find_blocks(model)
    hidden, calls = capture_block_inputs(model, blocks, random_calibration(1, 16).windows, progress=False)
    from eggs_ptp.models.layers import find_layers

    targets = find_layers(blocks[0], f"{prefix}.0").prunable
    groups = layer_groups(blocks[0], 0, calls[0], hidden[0], targets)
    assert sorted(layer.name for group in groups for layer in group) == sorted(layer.name for layer in targets)
    names = [[layer.name.removeprefix(f"{prefix}.0.") for layer in group] for group in groups]
    if family == "gpt2":
        assert names == [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]]
    else:  # every expert's up projection in one group, before every expert's down projection
        ups = [i for i, group in enumerate(names) if all(".gate_up_proj." in n for n in group)]
        downs = [i for i, group in enumerate(names) if all(".down_proj." in n and "experts" in n for n in group)]
        assert len(ups) == 1 and len(downs) == 1 and ups[0] < downs[0]
        assert len(names[ups[0]]) == model.config.num_local_experts if family == "mixtral" else True


@pytest.mark.parametrize("family", sorted(MOE_FAMILIES))
def test_moe_families_prune_with_a_dense_target_sequentially(family):
    model = tiny_model(family)
    windows = random_calibration(nsamples=3, seqlen=16).windows
    reports = walk(model, build_method(parse_method("sparsegpt(target=model, sequential=True)"), PATTERN), windows)
    experts = [r for r in reports if r.expert]
    assert experts and all(r.kept_fraction == 0.5 for r in reports if r.skipped is None)
    # each token counted once per expert, however many groups the sequential walk calibrates
    for report in experts:
        assert report.expert["routed_tokens"] <= 3 * 16


def test_permute_and_sequential_are_refused_together():
    with pytest.raises(ValueError, match="--permute or --sequential"):
        PruneConfig(method=parse_method("sparsegpt(sequential=True)"), permute=True)


@pytest.mark.parametrize("target", ["layer", "model"])
def test_block_reconstruction_brings_the_last_block_closer_to_the_dense_model(target):
    dense = tiny_model("llama", num_hidden_layers=3)
    windows = random_calibration(nsamples=16, seqlen=32).windows
    held_out = random_calibration(nsamples=8, seqlen=32, seed=5).windows
    errors = {}
    for epochs in (0, 3):
        model = copy.deepcopy(dense)
        reports = walk(
            model, build_method(parse_method(f"sparsegpt(target={target}, reconstruct={epochs})"), PATTERN), windows
        )
        with torch.no_grad():
            got = model(held_out, output_hidden_states=True).hidden_states[-1]
            want = dense(held_out, output_hidden_states=True).hidden_states[-1]
        errors[epochs] = float((got - want).norm() / want.norm())
        for name in LLAMA:
            weight = model.get_submodule(name).weight
            assert float((weight == 0).float().mean()) == 0.5, name  # the masks stayed as pruned
    assert errors[3] < errors[0]
    record = reports[0].settings["block_reconstruction"]
    assert record["held_out_error_after"] <= record["held_out_error_before"]
    assert record["train_windows"] + record["held_out_windows"] == 16


def test_block_reconstruction_refuses_several_processes():
    model = tiny_model("llama")
    prefix, blocks = find_blocks(model)
    hidden, calls = capture_block_inputs(model, blocks, random_calibration(2, 16).windows, progress=False)
    method = build_method(parse_method("sparsegpt(reconstruct=1)"), PATTERN)
    with pytest.raises(ValueError, match="drop --nproc"):
        walk_and_prune(blocks, prefix, calls, hidden, method, PATTERN, progress=False, ranks=object())
