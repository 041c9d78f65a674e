"""Mixture-of-experts: every expert matrix pruned N:M with statistics from the model's own routing,
routers dense, and the checkpoint's per-expert layout read back by verify, inspect, pack and --low-memory."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from eggs_ptp.api import prune
from eggs_ptp.config import PruneConfig
from eggs_ptp.formats.checkpoint import save_pruned
from eggs_ptp.formats.compact import load_compact, pack_checkpoint
from eggs_ptp.formats.verify import VerifyError, verify_checkpoint
from eggs_ptp.graph.masks import open_masks
from eggs_ptp.kernels import load_sparse
from eggs_ptp.models.experts import ExpertLayoutError, find_expert_groups
from eggs_ptp.models.layers import find_blocks, find_layers
from eggs_ptp.options import RunOptions
from eggs_ptp.pattern import Pattern, pattern_violations

from helpers import (
    MOE_FAMILIES,
    VOCAB,
    Killed,
    assert_same_weights,
    kill_after_block,
    prune_args,
    python,
    random_calibration,
    run_cli,
    tiny_model,
)

DONE_WHEN = ["mixtral", "qwen3_moe", "gpt_oss", "deepseek_v3"]


def _prune(family, method="ria", experts="routed", **overrides):
    model = tiny_model(family, **overrides)
    config = PruneConfig(method=method, nsamples=4, seqlen=16, experts=experts)
    return prune(model, None, config, RunOptions(progress=False), calibration=random_calibration(4, 16))


def _fused_matrices(model):
    """(name, expert, (out, in) weight) of every expert matrix in ``model``."""
    for name, parameter in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        if parameter.dim() == 3 and hasattr(owner, "is_transposed"):
            for expert in range(parameter.shape[0]):
                weight = parameter.data[expert]
                yield name, expert, weight.T if owner.is_transposed else weight


@pytest.mark.parametrize("family", list(MOE_FAMILIES))
def test_every_expert_matrix_is_pruned_and_routers_stay_dense(family):
    dense = tiny_model(family)
    model, report = _prune(family)
    record = report.to_dict()["layers"]
    experts = [layer for layer in record if layer["expert"]]
    matrices = list(_fused_matrices(model))
    assert matrices and len(experts) == len(matrices)
    for name, expert, weight in matrices:
        assert pattern_violations(weight, Pattern.parse("2:4")) is None, (name, expert)
        assert float((weight != 0).float().mean()) == 0.5
    routers = [layer for layer in record if layer["skipped"] and layer["skipped"].startswith("router")]
    assert routers  # named in the report, and untouched
    for layer in routers:
        assert torch.equal(
            model.get_parameter(f"{layer['name']}.weight"), dense.get_parameter(f"{layer['name']}.weight")
        )
    for layer in experts:  # per expert: how many calibration tokens it was routed, and what it learned from
        info = layer["expert"]
        assert info["calibrated_on"] in ("routed", "all") and isinstance(info["routed_tokens"], int)
        assert info["tokens"] == (info["routed_tokens"] if info["calibrated_on"] == "routed" else 64)
    # top-2 routing over 64 tokens: each block's experts share 128 routed token slots
    per_block = {}
    for layer in experts:
        if layer["name"].endswith(".down_proj." + str(layer["expert"]["index"])):
            block = layer["name"].split(".layers.")[1].split(".")[0]
            per_block[block] = per_block.get(block, 0) + layer["expert"]["routed_tokens"]
    assert set(per_block.values()) == {128}


def test_qwen2_moe_shared_expert_is_pruned_and_its_scalar_gate_is_not():
    model, report = _prune("qwen2_moe")
    layers = {layer["name"]: layer for layer in report.to_dict()["layers"]}
    assert layers["model.layers.0.mlp.shared_expert_gate"]["skipped"] == "gate: one score per token"
    assert layers["model.layers.0.mlp.shared_expert.down_proj"]["kept_fraction"] == 0.5


def test_expert_statistics_are_the_inputs_of_the_models_own_forward():
    """The eager per-expert path sees exactly what the model's experts compute: recombined with the
    routing weights, its per-expert down_proj outputs give the experts module's own output."""
    for family in ("mixtral", "gpt_oss", "qwen3_moe"):
        model = tiny_model(family)
        _, blocks = find_blocks(model)
        found = find_layers(blocks[0], "model.layers.0")
        (group,) = found.groups
        captured, outputs = {}, {}
        group.module.register_forward_pre_hook(lambda m, a, k, c=captured: c.update(args=a), with_kwargs=True)
        group.module.register_forward_hook(lambda m, a, o, c=captured: c.update(output=o))
        downs = [m for m in found.prunable if getattr(m, "parameter", None) == "down_proj"]
        for matrix in downs:
            matrix.observe_outputs(lambda x, y, e=matrix.expert, seen=outputs: seen.__setitem__(e, y))
        with torch.no_grad():
            model(torch.randint(0, 200, (1, 12)))
        hidden, indices, weights = captured["args"][:3]
        rebuilt = torch.zeros_like(captured["output"])
        bias = getattr(group.module, "down_proj_bias", None)
        for expert, y in outputs.items():
            tokens, slot = torch.where(indices == expert)
            y = y + (bias[expert] if bias is not None else 0)
            rebuilt.index_add_(0, tokens, y * weights[tokens, slot, None])
        torch.testing.assert_close(rebuilt, captured["output"], atol=1e-5, rtol=1e-4)


def test_an_expert_no_token_reaches_is_calibrated_on_every_token():
    model = tiny_model("mixtral")

    def never_route_to_expert_3(module, inputs, output):  # a router that ranks expert 3 last for every token
        logits = output[0].clone()
        logits[:, 3] = float("-inf")
        top, indices = torch.topk(torch.softmax(logits, dim=-1), 2, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), indices

    model.model.layers[0].mlp.gate.register_forward_hook(never_route_to_expert_3)
    model, report = prune(
        model,
        None,
        PruneConfig(method="wanda", nsamples=4, seqlen=16),
        RunOptions(progress=False),
        calibration=random_calibration(4, 16),
    )
    layers = {layer["name"]: layer for layer in report.to_dict()["layers"]}
    starved = layers["model.layers.0.mlp.experts.gate_up_proj.3"]["expert"]
    assert starved["routed_tokens"] == 0 and starved["calibrated_on"] == "all" and starved["tokens"] == 64
    fed = layers["model.layers.0.mlp.experts.gate_up_proj.0"]["expert"]
    assert fed["calibrated_on"] == "routed" and fed["tokens"] == fed["routed_tokens"] > 0


def test_all_tokens_rule_feeds_every_expert_every_token_and_changes_masks():
    routed, routed_report = _prune("mixtral", method="wanda")
    every, every_report = _prune("mixtral", method="wanda", experts="all")
    for layer in every_report.to_dict()["layers"]:
        if layer["expert"]:
            assert layer["expert"]["calibrated_on"] == "all" and layer["expert"]["tokens"] == 64
    assert PruneConfig(experts="all").to_dict()["experts"] == "all"
    assert any(not torch.equal(a[2] != 0, b[2] != 0) for a, b in zip(_fused_matrices(routed), _fused_matrices(every)))


@pytest.mark.parametrize("family", DONE_WHEN)
def test_verify_inspect_and_pack_read_the_per_expert_checkpoint_layout(family, tmp_path):
    model, report = _prune(family, method="sparsegpt")
    out = save_pruned(model, None, report, tmp_path / "pruned")
    assert verify_checkpoint(out) == report.to_dict()["summary"]["pruned_layers"]
    masks = {mask.name: mask.mask for mask in open_masks(out).masks()}
    for name, expert, weight in _fused_matrices(model):
        assert torch.equal(masks[f"{name}.{expert}"], weight != 0)
    packed = pack_checkpoint(out, tmp_path / "packed")
    assert packed.layers == report.to_dict()["summary"]["pruned_layers"]
    ids = torch.randint(0, 200, (1, 10))
    with torch.no_grad():
        reference = model(ids).logits
        assert torch.equal(
            load_compact(packed.out).state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"]
        )
        for loaded in (load_compact(packed.out), load_sparse(packed.out)):
            pairs = list(zip(_fused_matrices(loaded), _fused_matrices(model)))
            assert pairs and all(torch.equal(ours[2], theirs[2]) for ours, theirs in pairs)
            torch.testing.assert_close(loaded(ids).logits, reference, atol=1e-5, rtol=1e-5)


def test_verify_names_the_expert_that_breaks_its_pattern(tmp_path):
    model, report = _prune("mixtral")
    out = save_pruned(model, None, report, tmp_path / "pruned")
    weights = load_file(out / "model.safetensors")
    key = "model.layers.1.block_sparse_moe.experts.2.w3.weight"  # expert 2's up rows of gate_up_proj
    assert key in weights
    weights[key] = torch.ones_like(weights[key])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(VerifyError, match=r"model\.layers\.1\.mlp\.experts\.gate_up_proj\.2 breaks pattern 2:4"):
        verify_checkpoint(out)


def test_experts_in_an_unknown_layout_are_refused_unless_excluded():
    model = tiny_model("mixtral")
    experts = model.model.layers[0].mlp.experts
    del experts.is_transposed  # no longer transformers' declared layout
    with pytest.raises(ExpertLayoutError, match=r"--exclude '\*\.mlp\.experts\*'"):
        find_expert_groups(model.model.layers[0], "model.layers.0")
    groups, dense = find_expert_groups(model.model.layers[0], "model.layers.0", excluded=lambda name: True)
    assert not groups and {kept.name.rpartition(".")[2] for kept in dense} == {"gate_up_proj", "down_proj", "gate"}


@pytest.fixture
def moe_dir(tmp_path, tokenizer):
    folder = tmp_path / "tiny-mixtral"
    tiny_model("mixtral", num_hidden_layers=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_low_memory_on_a_per_expert_checkpoint_equals_the_in_memory_walk(moe_dir, calib, tmp_path):
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    assert run_cli(*prune_args(moe_dir, full, calib, "--method", "sparsegpt")).exit_code == 0
    result = run_cli(*prune_args(moe_dir, lazy, calib, "--method", "sparsegpt", "--low-memory"))
    assert result.exit_code == 0, result.output
    assert_same_weights(full, lazy)  # written back in the checkpoint's own per-expert layout
    assert run_cli("verify", lazy).exit_code == 0
    ids = torch.arange(2, 12).unsqueeze(0)
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(f).eval()(ids).logits for f in (full, lazy)]
    assert torch.equal(*logits)


def test_a_killed_moe_run_resumes_bit_for_bit(moe_dir, calib, tmp_path, monkeypatch):
    extra = ("--method", "eggs+update")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_cli(*prune_args(moe_dir, reference, calib, *extra)).exit_code == 0
    with monkeypatch.context() as patch:
        kill_after_block(patch, 0)
        with pytest.raises(Killed):
            run_cli(*prune_args(moe_dir, resumed, calib, *extra))
    result = run_cli(*prune_args(moe_dir, resumed, calib, *extra, "--resume"))
    assert result.exit_code == 0, result.output
    assert_same_weights(reference, resumed)

    def layers(folder):
        return [
            {k: v for k, v in layer.items() if k != "seconds"}
            for layer in json.loads((folder / "sparsity.json").read_text())["layers"]
        ]

    assert layers(resumed) == layers(reference)


def test_permute_leaves_experts_unpermuted_and_says_why(moe_dir, calib, tmp_path):
    out = tmp_path / "o"
    assert run_cli(*prune_args(moe_dir, out, calib, "--method", "ria", "--permute")).exit_code == 0
    layers = json.loads((out / "sparsity.json").read_text())["layers"]
    expert = next(layer for layer in layers if layer["expert"])
    assert expert["permutation"]["applied"] is False and "fused experts" in expert["permutation"]["reason"]
    assert run_cli("verify", out).exit_code == 0


def test_a_bad_expert_calibration_rule_names_the_choices(moe_dir, calib, tmp_path):
    result = run_cli(*prune_args(moe_dir, tmp_path / "o", calib, "--expert-calibration", "some"))
    assert result.exit_code == 2 and "'some' is not one of 'routed', 'weighted', 'all'" in result.stderr
    with pytest.raises(ValueError, match="expert calibration must be one of routed, weighted, all"):
        PruneConfig(experts="some")


def test_llama4_experts_are_refused_until_excluded_and_then_named_dense_with_their_router():
    """Llama-4's experts are fused but declare no layout: refused, never silently left dense."""
    config = AutoConfig.for_model(
        "llama4_text",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=64,
        intermediate_size_mlp=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    settings = dict(method="wanda", nsamples=2, seqlen=16)
    with pytest.raises(ExpertLayoutError, match=r"--exclude '\*\.feed_forward\.experts\*'"):
        prune(model, None, PruneConfig(**settings), RunOptions(progress=False), calibration=random_calibration(2, 16))
    dense = {name: p.clone() for name, p in model.named_parameters()}
    config = PruneConfig(**settings, exclude=("*.feed_forward.experts*",))
    model, report = prune(model, None, config, RunOptions(progress=False), calibration=random_calibration(2, 16))
    skipped = {layer["name"]: layer["skipped"] for layer in report.to_dict()["layers"] if layer["skipped"]}
    assert skipped["model.layers.0.feed_forward.router"] == "router: scores the experts"
    assert "excluded" in skipped["model.layers.0.feed_forward.experts.gate_up_proj"]
    for name in ("model.layers.0.feed_forward.router.weight", "model.layers.0.feed_forward.experts.down_proj"):
        assert torch.equal(model.get_parameter(name), dense[name])
    assert report.to_dict()["summary"]["pruned_layers"] > 0  # attention and the shared expert


@pytest.mark.slow
def test_two_gloo_processes_prune_experts_as_one_does(moe_dir, calib, tmp_path, monkeypatch):
    """Routed token counts and expert statistics are summed over ranks: the same bits as one process
    (at one thread each: SparseGPT's Cholesky factor depends on the thread count, see stats.py)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ("--method", "sparsegpt", "--nsamples", 6)
    for n in (1, 2):
        finished = python("-m", "eggs_ptp", *prune_args(moe_dir, tmp_path / f"n{n}", calib, *args, "--nproc", n))
        assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_weights(tmp_path / "n1", tmp_path / "n2")
    records = [json.loads((tmp_path / f"n{n}" / "sparsity.json").read_text()) for n in (1, 2)]
    assert records[0]["summary"]["routed_tokens_per_expert"] == records[1]["summary"]["routed_tokens_per_expert"]
    assert [layer["expert"] for layer in records[0]["layers"]] == [layer["expert"] for layer in records[1]["layers"]]


def test_weighted_calibration_scales_each_routed_token_by_its_routing_weight():
    model = tiny_model("mixtral")
    _, blocks = find_blocks(model)
    found = find_layers(blocks[0], "model.layers.0", experts="weighted")
    (group,) = found.groups
    captured, seen = {}, []
    group.module.register_forward_pre_hook(lambda m, a, k: captured.update(args=a), with_kwargs=True)
    up = next(m for m in found.prunable if getattr(m, "parameter", None) == "gate_up_proj" and m.expert == 1)
    up.observe_inputs(seen.append)
    with torch.no_grad():
        model(torch.randint(0, 200, (1, 12)))
    hidden, indices, weights = captured["args"][:3]
    rows = (indices == 1).any(dim=-1)
    expected = hidden[rows] * (weights * (indices == 1)).sum(dim=-1)[rows, None]
    assert rows.any() and (expected != hidden[rows]).all()
    torch.testing.assert_close(seen[0], expected)
    _, report = _prune("mixtral", method="sparsegpt", experts="weighted")
    assert {layer["expert"]["calibrated_on"] for layer in report.to_dict()["layers"] if layer["expert"]} == {"weighted"}


def test_expert_errors_are_measured_on_the_tokens_routed_to_the_expert_whatever_the_rule():
    """Under ``all``, statistics see every token but the reconstruction error counts only the tokens the
    expert serves, so errors compare across rules."""
    model = tiny_model("mixtral")
    _, blocks = find_blocks(model)
    found = find_layers(blocks[0], "model.layers.0", experts="all")
    (group,) = found.groups
    captured, fed, measured = {}, [], []
    group.module.register_forward_pre_hook(lambda m, a, k: captured.update(args=a), with_kwargs=True)
    down = next(m for m in found.prunable if getattr(m, "parameter", None) == "down_proj" and m.expert == 2)
    down.observe_inputs(fed.append)
    down.observe_outputs(lambda x, y: measured.append(x))
    with torch.no_grad():
        model(torch.randint(0, 200, (1, 12)))
    indices = captured["args"][1]
    assert fed[0].shape[0] == 12 and measured[0].shape[0] == int((indices == 2).any(dim=-1).sum())
