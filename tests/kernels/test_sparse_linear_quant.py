"""QuantSparseNMLinear: int8 / int4 layers through the kernel, dense and pure-torch paths, their
dtype, copies and state, and quantized packed folders loaded sparse generating like dense."""

import copy
import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from eggs_ptp import PruneConfig, prune
from eggs_ptp.formats import save_pruned
from eggs_ptp.formats.compact import dequantize_compact, load_compact, pack_checkpoint
from eggs_ptp.kernels import SparseNMLinear, cpu, load_sparse
from eggs_ptp.kernels.linear import QUANT_DENSE_ABOVE_TOKENS, QuantSparseNMLinear
from eggs_ptp.methods.configs import method_config
from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import QuantScheme

from helpers import QUIET, random_calibration, tiny_model

SCHEMES = {
    "int8": QuantScheme(8),
    "int4-g32": QuantScheme(4, True, 32),
    "int4-g64-asym": QuantScheme(4, False, 64),
}


def on_grid_layer(rows, cols, scheme, bias=True, seed=0):
    """An nn.Linear pruned 2:4 with its kept weights on a grid fitted to them; and the grid."""
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows, bias=bias)
    kept = (torch.rand(rows, cols // 4, 4).argsort(dim=-1) < 2).reshape(rows, cols)
    grid = scheme.fit(linear.weight.detach(), kept)
    with torch.no_grad():
        linear.weight.copy_(torch.where(kept, grid.round(linear.weight), 0.0))
    return linear, grid


@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES)
def test_kernel_and_dense_paths_match_the_dequantized_layer(scheme):
    linear, grid = on_grid_layer(24, 128, scheme)
    sparse = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid)
    many = QUANT_DENSE_ABOVE_TOKENS[(scheme.bits, torch.float32)] + 1
    assert sparse.path(1) == "kernel" and sparse.path(many) == "dense"
    assert (sparse.bits, sparse.group_size, sparse.dtype) == (scheme.bits, scheme.group_size, torch.float32)
    assert torch.equal(sparse.dense_weight(), linear.weight.detach())  # nm_qdecompress, bit for bit
    for shape in [(1, 128), (2, 1, 128), (1, many, 128)]:
        x = torch.randn(shape)
        with torch.no_grad():
            out = sparse(x)
            assert out.dtype == torch.float32 and out.shape == (*shape[:-1], 24)
            if shape[-2] == many:
                assert torch.equal(out, linear(x))
            else:
                torch.testing.assert_close(out, linear(x), atol=1e-5, rtol=1e-5)


def test_the_kernel_rebuilds_the_weight_the_torch_path_does():
    linear, grid = on_grid_layer(16, 96, SCHEMES["int4-g64-asym"], seed=3)
    sparse = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid)
    torch_weight = dequantize_compact(sparse.qvalues, sparse.bitmask, Pattern(2, 4), sparse.grid)
    assert torch.equal(sparse.dense_weight(), torch_weight)


def test_bfloat16_layers_compute_in_bfloat16_and_keep_their_scales():
    linear, grid = on_grid_layer(16, 64, SCHEMES["int8"])
    sparse = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid)
    scales = sparse.scales.clone()
    converted = sparse.to(torch.bfloat16)
    assert converted is sparse and sparse.dtype == torch.bfloat16 and sparse.bias.dtype == torch.bfloat16
    assert sparse.scales.dtype == torch.float16 and torch.equal(sparse.scales, scales)
    assert sparse.qvalues.dtype == torch.int8
    assert torch.equal(sparse.dense_weight(), linear.weight.detach().to(torch.bfloat16))
    x = torch.randn(3, 64).to(torch.bfloat16)
    reference = linear.to(torch.bfloat16)
    with torch.no_grad():
        assert sparse(x).dtype == torch.bfloat16
        torch.testing.assert_close(sparse(x), reference(x), atol=2e-2, rtol=2e-2)
        sparse.dense_above_tokens = 0
        assert sparse.path(3) == "dense" and torch.equal(sparse(x), reference(x))
    assert sparse.half().dtype == torch.float16 and torch.equal(sparse.scales, scales)


def test_gradients_flow_through_the_dense_path():
    linear, grid = on_grid_layer(8, 32, SCHEMES["int4-g32"])
    sparse = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid)
    x = torch.randn(1, 32, requires_grad=True)
    sparse(x).sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.detach().sum(dim=0, keepdim=True))


def test_conv1d_layers_are_read_as_out_by_in():
    linear, grid = on_grid_layer(24, 32, SCHEMES["int8"])
    conv = Conv1D(24, 32)  # GPT-2 layout: weight (in, out)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        conv.bias.copy_(linear.bias)
    sparse = QuantSparseNMLinear.from_linear(conv, "2:4", grid=grid)
    x = torch.randn(2, 32)
    torch.testing.assert_close(sparse(x), conv(x).detach())


def test_layers_that_do_not_fit_their_grid_are_refused():
    linear, grid = on_grid_layer(8, 32, SCHEMES["int4-g32"])
    with pytest.raises(ValueError, match="needs the grid its weights lie on"):
        QuantSparseNMLinear.from_linear(linear, "2:4")
    with pytest.raises(ValueError, match=r"lie off its int4 grid \(first at row 0\)"):
        QuantSparseNMLinear.from_dense(linear.weight * 1.01, "2:4", grid=grid)
    sparse = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid)
    with pytest.raises(ValueError, match=r"int4 qvalues must be uint8 \[8, 8\], got torch.uint8 \[8, 16\]"):
        QuantSparseNMLinear(sparse.qvalues.repeat(1, 2), sparse.bitmask, 32, "2:4", grid)
    wider, wider_grid = on_grid_layer(8, 64, SCHEMES["int4-g32"])
    other = QuantSparseNMLinear.from_linear(wider, "2:4", grid=wider_grid)
    with pytest.raises(ValueError, match=r"float16 scales \[8, 2\] for 64 columns, got torch.float16 \[8, 1\] for 32"):
        QuantSparseNMLinear(other.qvalues, other.bitmask, 64, "2:4", grid)
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        QuantSparseNMLinear(sparse.qvalues, sparse.bitmask | 0b100, 32, "2:4", grid)


def test_copies_reloads_and_state_dicts_behave_like_the_float_layer(tmp_path):
    linear, grid = on_grid_layer(16, 64, SCHEMES["int4-g32"])
    sparse = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid)
    assert isinstance(sparse, SparseNMLinear)
    assert list(sparse.state_dict()) == ["qvalues", "bitmask", "scales", "bias"]  # symmetric: no zeros
    x = torch.randn(1, 64)
    expected = linear(x).detach()
    torch.testing.assert_close(sparse(x), expected)  # prepares the kernel's arguments
    clone = copy.deepcopy(sparse)
    del sparse
    torch.testing.assert_close(clone(x), expected)
    torch.save(clone, tmp_path / "layer.pt")
    torch.testing.assert_close(torch.load(tmp_path / "layer.pt", weights_only=False)(x), expected)
    other_linear, other_grid = on_grid_layer(16, 64, SCHEMES["int4-g32"], seed=1)
    other = QuantSparseNMLinear.from_linear(other_linear, "2:4", grid=other_grid)
    clone.load_state_dict(other.state_dict(), assign=True)
    torch.testing.assert_close(clone(x), other_linear(x).detach())


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A process where the kernel is not built yet and no compiler can be found."""
    monkeypatch.setenv("EGGS_PTP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    cpu.library.cache_clear()
    yield tmp_path
    cpu.library.cache_clear()


def test_without_a_compiler_the_torch_path_runs(no_compiler):
    linear, grid = on_grid_layer(12, 64, SCHEMES["int4-g64-asym"])
    sparse = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid)
    x = torch.randn(1, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sparse.path(1) == "torch"
        outputs = [sparse(x) for _ in range(2)]
    assert len(caught) == 1 and "CPU sparse kernel unavailable" in str(caught[0].message)
    assert torch.equal(sparse.dense_weight(), linear.weight.detach())
    for out in outputs:
        assert torch.equal(out, linear(x).detach())


def quantized_tiny(scheme):
    """A tiny random Llama pruned 2:4 with its kept weights on ``scheme``'s grids; returns (model, report)."""
    settings = {"quantize": scheme.name, "group_size": scheme.group_size or 128, "asymmetric": not scheme.symmetric}
    config = PruneConfig(method=method_config("wanda", **settings), pattern="2:4", nsamples=2, seqlen=16)
    return prune(tiny_model("llama"), None, config, QUIET, calibration=random_calibration(2, 16))


@pytest.fixture(scope="module", params=list(SCHEMES))
def packed(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    scheme = SCHEMES[request.param]
    model, report = quantized_tiny(scheme)
    return scheme, pack_checkpoint(save_pruned(model, None, report, folder / "dense"), folder / "compact").out


def test_quantized_folders_load_sparse_and_generate_like_dense(packed):
    """Greedy tokens equal the dequantized dense model's, from a 32-token prompt: its prefill takes the
    dense path, each decode step the kernel (fp32 sums in another order: logits agree to 1e-4)."""
    scheme, folder = packed
    dense, sparse = load_compact(folder), load_sparse(folder)
    swapped = {name: module for name, module in sparse.named_modules() if isinstance(module, QuantSparseNMLinear)}
    assert len(swapped) == 14 and {module.bits for module in swapped.values()} == {scheme.bits}
    assert all(module.path(1) == "kernel" and module.path(32) == "dense" for module in swapped.values())
    assert all(f"{name}.qvalues" in sparse.state_dict() for name in swapped)
    assert not any(key.endswith((".weight.qvalues", ".values")) for key in sparse.state_dict())
    ids = torch.randint(2, 300, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(sparse(ids).logits, dense(ids).logits)  # the dense path is bit for bit
        torch.testing.assert_close(sparse(ids[:, :4]).logits, dense(ids[:, :4]).logits, atol=1e-4, rtol=1e-4)
        greedy = [model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0) for model in (dense, sparse)]
    assert torch.equal(greedy[0], greedy[1])


def test_quantized_folders_load_sparse_in_bfloat16(packed):
    _, folder = packed
    sparse = load_sparse(folder, torch.bfloat16)
    layers = [m for m in sparse.modules() if isinstance(m, QuantSparseNMLinear)]
    assert layers and all(m.dtype == torch.bfloat16 and m.scales.dtype == torch.float16 for m in layers)
    ids = torch.randint(2, 300, (1, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            sparse(ids).logits, load_compact(folder, torch.bfloat16)(ids).logits, atol=0.05, rtol=0.05
        )


@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES)
def test_a_layer_that_stores_every_weight_matches_its_grid_weight(scheme):
    torch.manual_seed(3)
    linear = nn.Linear(128, 40, bias=False)
    grid = scheme.fit(linear.weight.detach(), torch.ones(40, 128, dtype=torch.bool))
    with torch.no_grad():
        linear.weight.copy_(grid.round(linear.weight))
    dense = QuantSparseNMLinear.from_dense(linear.weight, None, grid=grid)
    assert dense.pattern is None and "pattern=dense" in repr(dense)
    assert torch.equal(dense.dense_weight(), linear.weight.detach())
    with torch.no_grad():
        for tokens in (1, 3, 40):
            x = torch.randn(tokens, 128)
            torch.testing.assert_close(dense(x), linear(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="takes no bitmask"):
        QuantSparseNMLinear(dense.qvalues, dense.bitmask, 128, None, grid)


def head_folder(folder, family, scheme, **overrides):
    """A tiny ``family`` model pruned 2:4 with its head rounded too (--quantize-head), packed."""
    settings = {"quantize": scheme.name, "group_size": scheme.group_size or 128, "asymmetric": not scheme.symmetric}
    method = method_config("wanda", **settings, quantize_head=True)
    config = PruneConfig(method=method, pattern="2:4", nsamples=2, seqlen=16)
    model, report = prune(tiny_model(family, **overrides), None, config, QUIET, calibration=random_calibration(2, 16))
    assert report.head is not None and report.head.name in report.grids
    return pack_checkpoint(save_pruned(model, None, report, folder / "dense"), folder / "compact").out


@pytest.mark.parametrize(
    "family, overrides, embedding",
    [
        ("llama", {"tie_word_embeddings": True}, "QuantEmbedding"),
        ("llama", {}, "Embedding"),
        ("gemma3_text", {}, "Gemma3TextScaledWordEmbedding"),  # tied, but scales its rows: a dense table
    ],
    ids=["tied", "untied", "scaled-embedding"],
)
def test_quantized_heads_load_sparse_and_generate_like_dense(tmp_path, family, overrides, embedding):
    folder = head_folder(tmp_path, family, SCHEMES["int4-g32"], **overrides)
    dense, sparse = load_compact(folder), load_sparse(folder)
    head = sparse.get_output_embeddings()
    assert isinstance(head, QuantSparseNMLinear) and head.pattern is None and head.path(1) == "kernel"
    assert type(sparse.get_input_embeddings()).__name__ == embedding
    assert torch.equal(head.dense_weight(), dense.get_output_embeddings().weight)
    ids = torch.randint(2, 300, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(sparse.get_input_embeddings()(ids), dense.get_input_embeddings()(ids))
        assert torch.equal(sparse(ids).logits, dense(ids).logits)
        torch.testing.assert_close(sparse(ids[:, :4]).logits, dense(ids[:, :4]).logits, atol=1e-4, rtol=1e-4)
        greedy = [model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0) for model in (dense, sparse)]
    assert torch.equal(greedy[0], greedy[1])
