import pytest
import torch

from eggs_ptp import PruneConfig
from eggs_ptp.data import sample_windows
from eggs_ptp.methods import build_method
from eggs_ptp.models import find_blocks
from eggs_ptp.models.layers import find_linears
from eggs_ptp.permute import Fold, permute_block, propose_folds
from eggs_ptp.permute import fold as fold_module
from eggs_ptp.stats import LayerStats
from eggs_ptp.walk import capture_block_inputs

from helpers import FAMILIES, VOCAB, tiny_model

# The layers whose inputs fold into their producers, per family (local names in a block).
CONSUMERS = {
    "opt": {"self_attn.out_proj": ["self_attn.v_proj"], "fc2": ["fc1"]},
    "gpt2": {"attn.c_proj": ["attn.c_attn"], "mlp.c_proj": ["mlp.c_fc"]},
    "gpt_neox": {"attention.dense": ["attention.query_key_value"], "mlp.dense_4h_to_h": ["mlp.dense_h_to_4h"]},
    "phi3": {"self_attn.o_proj": ["self_attn.qkv_proj"], "mlp.down_proj": ["mlp.gate_up_proj"]},
}
LLAMA_LIKE = {"self_attn.o_proj": ["self_attn.v_proj"], "mlp.down_proj": ["mlp.gate_proj", "mlp.up_proj"]}


def windows(nsamples=2, seqlen=16):
    tokens = torch.randint(2, VOCAB, (200,), generator=torch.Generator().manual_seed(0))
    return sample_windows(tokens, nsamples, seqlen, 0, "random").windows


def block_stats(block, prefix, call, hidden):
    """Calibration statistics (with Hessians) of every linear layer in one block."""
    layers = find_linears(block, prefix)
    stats = {layer.name: LayerStats(layer.in_features, with_hessian=True) for layer in layers}
    handles = [
        layer.module.register_forward_hook(lambda module, inputs, output, s=stats[layer.name]: s.add(inputs[0]))
        for layer in layers
    ]
    with torch.no_grad():
        for state in hidden:
            call(block, state)
    for handle in handles:
        handle.remove()
    return stats


def permute_dense(model, method="magnitude", pattern="2:4"):
    """Permute every block of a dense model as the walk would, without pruning.

    Returns:
        Per block, the records by local name and the (permuted) statistics by full name.
    """
    config = PruneConfig(method=method, pattern=pattern)
    prefix, blocks = find_blocks(model)
    hidden, calls = capture_block_inputs(model, blocks, windows(), progress=False)
    records, stats = [], []
    for index, block in enumerate(blocks):
        name = f"{prefix}.{index}"
        stats.append(block_stats(block, name, calls[index], hidden) if method != "magnitude" else {})
        found = permute_block(
            block,
            name,
            find_linears(block, name),
            stats[-1],
            build_method(config.method, config.parsed_pattern),
            config.parsed_pattern,
            calls[index],
            hidden[0],
        )
        records.append({key[len(name) + 1 :]: value for key, value in found.items()})
        with torch.no_grad():
            hidden = [calls[index](block, state) for state in hidden]
    return records, stats


def logits(model):
    with torch.no_grad():
        return model(windows(), use_cache=False).logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fold_leaves_dense_logits_unchanged(family):
    model = tiny_model(family)
    before = logits(model)
    records, _ = permute_dense(model)
    expected = CONSUMERS.get(family, LLAMA_LIKE)
    for block in records:
        assert {name for name, record in block.items() if record["applied"]} == set(expected), block
        for consumer, producers in expected.items():
            folded = block[consumer]["folded_into"]
            assert len(folded) == len(producers) and all(f.endswith("." + p) for f, p in zip(folded, producers))
            assert block[consumer]["kept_score"] > block[consumer]["identity_kept_score"]
    torch.testing.assert_close(logits(model), before, rtol=1e-5, atol=1e-5)


def test_the_logit_check_would_see_a_consumer_permuted_alone():
    model = tiny_model("llama")
    before = logits(model)
    layer = next(l for l in find_linears(find_blocks(model)[1][0], "b") if l.name.endswith("down_proj"))
    perm = torch.arange(layer.in_features)
    perm[[0, 1]] = perm[[1, 0]]
    layer.set_weight(layer.weight[:, perm].clone())
    assert (logits(model) - before).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_residual_readers_report_why_they_were_not_permuted(family):
    block0 = permute_dense(tiny_model(family))[0][0]
    expected = CONSUMERS.get(family, LLAMA_LIKE)
    for name, record in block0.items():
        if name not in expected:
            assert record["applied"] is False and "residual stream" in record["reason"], (name, record)
    producers = {p: c for c, ps in expected.items() for p in ps}
    for producer, consumer in producers.items():
        assert block0[producer]["rows_follow"].endswith(consumer)


def test_gqa_heads_share_the_value_permutation_within_heads():
    """Query heads 0, 1 read KV head 0 and heads 2, 3 read KV head 1 (4 heads of 8, 2 KV heads)."""
    model = tiny_model("llama")
    attention = find_blocks(model)[1][0].self_attn
    o_before, v_before = attention.o_proj.weight.detach().clone(), attention.v_proj.weight.detach().clone()
    assert permute_dense(model)[0][0]["self_attn.o_proj"]["applied"]
    o_after, v_after = attention.o_proj.weight, attention.v_proj.weight
    # recover the permutation: each new column is exactly one old column (random weights are distinct)
    perm = (o_after[:, :, None] == o_before[:, None, :]).all(0).float().argmax(1)  # (in,)
    assert torch.equal(o_after, o_before[:, perm])
    local = perm.reshape(4, 8) - torch.arange(4)[:, None] * 8
    assert ((local >= 0) & (local < 8)).all(), "a channel left its head"
    assert torch.equal(local[0], local[1]) and torch.equal(local[2], local[3])
    assert torch.equal(v_after[:8], v_before[:8][local[0]]) and torch.equal(v_after[8:], v_before[8:][local[2]])


def test_stats_follow_the_permuted_inputs():
    """The permuted statistics equal those collected afresh from the permuted block."""
    model = tiny_model("llama")
    records, stats = permute_dense(model, method="wanda")
    assert records[0]["mlp.down_proj"]["applied"] and records[0]["self_attn.o_proj"]["applied"]
    prefix, blocks = find_blocks(model)
    hidden, calls = capture_block_inputs(model, blocks, windows(), progress=False)
    fresh = block_stats(blocks[0], f"{prefix}.0", calls[0], hidden)
    for name in (f"{prefix}.0.mlp.down_proj", f"{prefix}.0.self_attn.o_proj"):
        torch.testing.assert_close(stats[0][name].sq_norm, fresh[name].sq_norm)
        torch.testing.assert_close(stats[0][name].hessian, fresh[name].hessian)


def test_a_fold_that_is_not_exact_is_reverted(monkeypatch):
    """Folding o_proj's permutation into k_proj (not v_proj) changes the block: it must be undone."""
    model = tiny_model("llama")
    attention = find_blocks(model)[1][0].self_attn
    saved = {name: p.detach().clone() for name, p in attention.named_parameters()}

    def wrong(block, prefix, layer, hidden_size, m):
        proposal = propose_folds(block, prefix, layer, hidden_size, m)
        if isinstance(proposal, str) or not layer.name.endswith("o_proj"):
            return proposal
        k_proj = next(l for l in find_linears(block, prefix) if l.name.endswith("k_proj"))
        return [Fold(layer, ((k_proj, proposal[0].producers[0][1]),), proposal[0].block, proposal[0].ties)]

    monkeypatch.setattr(fold_module, "propose_folds", wrong)
    assert permute_dense(model)[0][0]["self_attn.o_proj"] == {
        "applied": False,
        "reason": "fold not exact: permuting model.layers.0.self_attn.k_proj changed the block's output",
    }
    for name, parameter in attention.named_parameters():
        assert torch.equal(parameter, saved[name]), name


def test_head_dim_not_a_multiple_of_m_is_reported():
    records = permute_dense(tiny_model("llama"), pattern="2:16")[0][0]  # head_dim 8 < M = 16
    assert records["self_attn.o_proj"] == {
        "applied": False,
        "reason": "head_dim 8 is not a multiple of M = 16, so no permutation within heads keeps N:M groups",
    }
    assert records["mlp.down_proj"]["applied"]
