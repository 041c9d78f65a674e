"""SparseNMLinear: the kernel and dense paths, the pure-torch fallback, and models loaded sparse."""

import copy
import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from eggs_ptp.formats import save_pruned
from eggs_ptp.formats.codec import compress
from eggs_ptp.formats.compact import load_compact, pack_checkpoint
from eggs_ptp.kernels import DENSE_ABOVE_TOKENS, SparseNMLinear, cpu, load_sparse
from eggs_ptp.pattern import Pattern

from helpers import pruned_tiny


def pruned_linear(rows, cols, n=2, m=4, bias=True, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows, bias=bias)
    keep = (torch.rand(rows, cols // m, m).argsort(dim=-1) < n).reshape(rows, cols)
    with torch.no_grad():
        linear.weight.mul_(keep)
    return linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_cpu_paths_match_the_dense_layer(dtype):
    linear = pruned_linear(24, 40, 4, 8).to(dtype)
    sparse = SparseNMLinear.from_linear(linear, "4:8")
    many = DENSE_ABOVE_TOKENS[dtype] + 1
    assert sparse.path(1) == "kernel" and sparse.path(many) == "dense"
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for shape in [(1, 40), (2, 1, 40), (1, many, 40)]:
        x = torch.randn(shape).to(dtype)
        with torch.no_grad():
            out = sparse(x)
            assert out.dtype == dtype and out.shape == (*shape[:-1], 24)
            torch.testing.assert_close(out, linear(x), **tolerance)


def test_dense_path_is_bit_exact():
    linear = pruned_linear(16, 32)
    sparse = SparseNMLinear.from_linear(linear, "2:4", dense_above_tokens=0)
    x = torch.randn(3, 32)
    assert sparse.path(1) == "dense"
    assert torch.equal(sparse(x), linear(x).detach())
    assert torch.equal(sparse.dense_weight(), linear.weight.detach())


def test_conv1d_layers_are_read_as_out_by_in():
    conv = Conv1D(24, 16)  # GPT-2 layout: weight (in, out)
    with torch.no_grad():
        conv.weight.copy_(pruned_linear(24, 16).weight.T)
    sparse = SparseNMLinear.from_linear(conv, "2:4")
    x = torch.randn(2, 16)
    torch.testing.assert_close(sparse(x), conv(x).detach())


def test_gradients_flow_through_the_dense_path():
    linear = pruned_linear(8, 16)
    sparse = SparseNMLinear.from_linear(linear, "2:4")
    x = torch.randn(1, 16, requires_grad=True)
    sparse(x).sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.detach().sum(dim=0, keepdim=True))


def test_weights_and_bitmasks_that_break_the_pattern_are_refused():
    weight = torch.zeros(2, 8)
    weight[1, :3] = 1.0
    with pytest.raises(ValueError, match=r"breaks pattern 2:4: 1 groups .* \(first at row 1, group 0\)"):
        SparseNMLinear.from_dense(weight, "2:4")
    values, bitmask = compress(torch.ones(2, 8) * torch.tensor([1, 1, 0, 0, 0, 0, 1, 1]), Pattern(2, 4))
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        SparseNMLinear(values, bitmask | 0b100, 8, "2:4")
    with pytest.raises(ValueError, match=r"bias must have shape \[2\]"):
        SparseNMLinear(values, bitmask, 8, "2:4", bias=torch.zeros(3))
    with pytest.raises(ValueError, match="expected inputs with 8 features"):
        SparseNMLinear(values, bitmask, 8, "2:4")(torch.ones(1, 4))


def test_float16_has_no_kernel_and_rebuilds_the_weight_in_torch():
    linear = pruned_linear(8, 16)
    sparse = SparseNMLinear.from_linear(linear, "2:4").to(torch.float16)
    assert sparse.path(1) == "torch" and sparse.values.dtype == torch.float16 and sparse.bitmask.dtype == torch.uint8
    x = torch.randn(1, 16)
    torch.testing.assert_close(sparse(x.half()).float(), linear(x).detach(), atol=1e-2, rtol=1e-2)


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A process where the kernel is not built yet and no compiler can be found."""
    monkeypatch.setenv("EGGS_PTP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    cpu.library.cache_clear()
    yield tmp_path
    cpu.library.cache_clear()


def test_without_a_compiler_the_torch_path_runs_after_one_warning(no_compiler):
    linear = pruned_linear(12, 16)
    sparse = SparseNMLinear.from_linear(linear, "2:4")
    x = torch.randn(1, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sparse.path(1) == "torch"
        outputs = [sparse(x) for _ in range(3)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "CPU sparse kernel unavailable (no C compiler found" in messages[0]
    for out in outputs:
        torch.testing.assert_close(out, linear(x).detach())
    assert not list(no_compiler.rglob("*.so"))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def packed(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model, report = pruned_tiny(request.param)
    return request.param, pack_checkpoint(save_pruned(model, None, report, folder / "dense"), folder / "compact").out


def test_load_compact_with_sparse_modules_generates_like_dense(packed):
    family, folder = packed
    dense, sparse = load_compact(folder), load_sparse(folder)
    swapped = [name for name, module in sparse.named_modules() if isinstance(module, SparseNMLinear)]
    assert len(swapped) == (14 if family == "llama" else 8)
    assert not any(isinstance(m, (nn.Linear, Conv1D)) for n, m in sparse.named_modules() if n in swapped)
    assert all(f"{name}.values" in sparse.state_dict() for name in swapped)
    ids = torch.randint(2, 300, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits, dense(ids).logits)
        greedy = [model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0) for model in (dense, sparse)]
    assert torch.equal(greedy[0], greedy[1])


def test_sparse_modules_keep_only_the_compact_bytes(packed):
    _, folder = packed
    sparse = load_sparse(folder, torch.bfloat16)
    layers = [m for m in sparse.modules() if isinstance(m, SparseNMLinear)]
    assert all(m.values.dtype == torch.bfloat16 and m.bitmask.dtype == torch.uint8 for m in layers)
    dense_bytes = sum(m.out_features * m.in_features * 2 for m in layers)
    compact_bytes = sum(m.values.nbytes + m.bitmask.nbytes for m in layers)
    assert compact_bytes / dense_bytes == pytest.approx(0.5625)  # bf16 2:4: 1/2 + 1/16
    ids = torch.randint(2, 300, (1, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            sparse(ids).logits, load_compact(folder, torch.bfloat16)(ids).logits, atol=0.05, rtol=0.05
        )


def test_copies_and_reloads_never_reuse_stale_pointers(tmp_path):
    linear = pruned_linear(16, 32)
    sparse = SparseNMLinear.from_linear(linear, "2:4")
    x = torch.randn(1, 32)
    expected = linear(x).detach()
    torch.testing.assert_close(sparse(x), expected)  # prepares the kernel's arguments
    clone = copy.deepcopy(sparse)
    del sparse
    torch.testing.assert_close(clone(x), expected)
    torch.save(clone, tmp_path / "layer.pt")
    torch.testing.assert_close(torch.load(tmp_path / "layer.pt", weights_only=False)(x), expected)
    other = SparseNMLinear.from_linear(pruned_linear(16, 32, seed=1), "2:4")
    clone.load_state_dict(other.state_dict(), assign=True)
    torch.testing.assert_close(clone(x), other(x))
