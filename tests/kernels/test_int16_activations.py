"""The opt-in int16-activation kernel of int8 layers: bit for bit the integer arithmetic it documents
(inputs rounded to 16 bits per token, products exact, groups summed in double), which layers and
inputs take it, and the exact kernel wherever they do not."""

import pytest
import torch
from test_sparse_linear_quant import head_folder, on_grid_layer
from torch import nn

from eggs_ptp.formats.compact import load_compact, pack_checkpoint
from eggs_ptp.kernels import kernel_info, load_sparse
from eggs_ptp.kernels.linear import QuantSparseNMLinear
from eggs_ptp.quant import QuantScheme

from helpers import pruned_checkpoint

VNNI = kernel_info()["int16_activations"]
needs_vnni = pytest.mark.skipif(not VNNI, reason="this CPU has no AVX-512 VNNI / VBMI2")

SCHEMES = {
    "int8": QuantScheme(8),
    "int8-g64": QuantScheme(8, True, 64),
    "int8-g128": QuantScheme(8, True, 128),
}


def int16_reference(x: torch.Tensor, layer: QuantSparseNMLinear) -> torch.Tensor:
    """What the kernel computes, from its definition, in float64 where every step but the noted
    sums is exact: xq = round(x * (32767 / max|x|)) per token in fp32; u = xq + 32768 as bytes
    hi, lo; per group, lane l (columns 4l..4l+3 of each 64-column step) holds H = sum q hi and
    L = sum q lo over its columns; each lane accumulates, group by group, 256 s H, then s L (two
    roundings); the 16 lanes are summed pairwise (l + l+8, then + 4, + 2, + 1); minus
    32768 sum_g s sum q; times max|x| / 32767, rounded to fp32, plus the bias."""
    weight, scales = layer.dense_weight(), layer.scales.double()
    rows, cols = weight.shape
    size = layer.group_size or cols
    integers = (weight / layer.scales.float().repeat_interleave(size, dim=1)[:, :cols]).double()  # q, exact
    top = x.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(top > 0, torch.tensor(32767.0) / top, torch.zeros(()))
    u = (torch.round(x * inverse) + 32768).long()
    padded = -(-cols // 64) * 64

    def steps(t: torch.Tensor) -> torch.Tensor:  # (n, cols) -> (n, 64-column step, lane, 4 columns)
        return torch.nn.functional.pad(t, (0, padded - cols)).reshape(t.shape[0], padded // 64, 16, 4)

    w, hi, lo = steps(integers), steps((u >> 8).double()), steps((u & 255).double())
    lanes = torch.zeros(x.shape[0], rows, 16, dtype=torch.float64)
    offset = torch.zeros(rows, dtype=torch.float64)
    for group, start in enumerate(range(0, cols, size)):
        block = slice(start // 64, -(-min(start + size, cols) // 64))
        s = scales[:, group, None]
        lanes = lanes + 256 * s * torch.einsum("tbly,rbly->trl", hi[:, block], w[:, block])
        lanes = lanes + s * torch.einsum("tbly,rbly->trl", lo[:, block], w[:, block])
        offset = offset + scales[:, group] * integers[:, start : start + size].sum(dim=1)
    half = lanes[..., :8] + lanes[..., 8:]
    quarter = half[..., :4] + half[..., 4:]
    eighth = quarter[..., :2] + quarter[..., 2:]
    total = eighth[..., 0] + eighth[..., 1]
    out = ((total - 32768 * offset) * (top / 32767.0).double()).float()
    return out if layer.bias is None else out + layer.bias


@needs_vnni
@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES)
@pytest.mark.parametrize("cols", [128, 192, 200, 576])
@pytest.mark.parametrize("tokens", [1, 3, 9])
def test_the_kernel_is_bit_for_bit_its_integer_arithmetic(scheme, cols, tokens):
    linear, grid = on_grid_layer(40, cols, scheme, seed=cols + tokens)
    layer = QuantSparseNMLinear.from_linear(linear, "2:4", grid=grid, int16_activations=True)
    assert layer._prepare().int16_activations
    x = torch.randn(tokens, cols) * torch.rand(tokens, 1) * 4
    x[0, 5] = 40.0  # an outlier sets the token's scale
    with torch.no_grad():
        out = layer(x)
        assert torch.equal(out, int16_reference(x, layer))
        exact = linear(x)
    # Rounding the inputs is all that differs from the dequantized dense layer: each input moves by
    # at most max|x| / 65534, so each output by at most that times the row's sum of |w|.
    moved = x.abs().amax(dim=-1, keepdim=True) / 65534 * linear.weight.abs().sum(dim=1)
    assert ((out - exact).abs() <= moved + 1e-5).all()


def nm_layer(rows, cols, n, m, scheme, seed=0, **options):
    """A QuantSparseNMLinear pruned n:m (m need not divide 64: its 64-column steps then hold varying,
    odd numbers of values) with its kept weights on a grid, and the dense layer it equals."""
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows)
    kept = (torch.rand(rows, cols // m, m).argsort(dim=-1) < n).reshape(rows, cols)
    grid = scheme.fit(linear.weight.detach(), kept)
    with torch.no_grad():
        linear.weight.copy_(torch.where(kept, grid.round(linear.weight), 0.0))
    return QuantSparseNMLinear.from_linear(linear, f"{n}:{m}", grid=grid, **options), linear


@needs_vnni
@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES)
def test_steps_that_hold_odd_numbers_of_values(scheme):
    layer, linear = nm_layer(24, 384, 3, 6, scheme, int16_activations=True)
    assert layer._prepare().int16_activations
    x = torch.randn(2, 384)
    with torch.no_grad():
        assert torch.equal(layer(x), int16_reference(x, layer))


@needs_vnni
def test_a_head_that_stores_every_weight():
    torch.manual_seed(1)
    weight = torch.randn(64, 256)
    grid = QuantScheme(8).fit(weight, torch.ones_like(weight, dtype=torch.bool))
    head = QuantSparseNMLinear.from_dense(grid.round(weight), None, grid=grid, int16_activations=True)
    x = torch.randn(1, 256)
    with torch.no_grad():
        assert torch.equal(head(x), int16_reference(x, head))


@pytest.mark.parametrize(
    "scheme",
    [QuantScheme(8, True, 32), QuantScheme(8, True, 96), QuantScheme(4, True, 64), QuantScheme(4, False, 128)],
    ids=["int8-groups-of-32", "int8-groups-of-96", "int4", "int4-asym"],
)
def test_layers_it_cannot_take_run_the_exact_kernel(scheme):
    layer, linear = nm_layer(16, 192, 2, 4, scheme, int16_activations=True)
    assert not layer._prepare().int16_activations
    x = torch.randn(1, 192)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=1e-5)


@needs_vnni
def test_non_finite_inputs_and_other_code_paths_run_the_exact_kernel():
    layer, linear = nm_layer(16, 128, 2, 4, QuantScheme(8), int16_activations=True)
    exact, _ = nm_layer(16, 128, 2, 4, QuantScheme(8))
    fast, slow = layer._prepare(), exact._prepare()
    x = torch.randn(3, 128)
    x[1, 7], x[2, 9] = float("inf"), float("nan")
    torch.testing.assert_close(fast.linear(x), slow.linear(x), equal_nan=True, atol=0, rtol=0)
    finite = torch.randn(1, 128)
    assert not torch.equal(fast.linear(finite), slow.linear(finite))  # the int16 kernel did run
    assert torch.equal(fast.linear(finite, isa="avx2"), slow.linear(finite, isa="avx2"))


def test_the_setting_is_part_of_the_layer():
    layer, _ = nm_layer(16, 128, 2, 4, QuantScheme(8))
    assert not layer._prepare().int16_activations
    layer.int16_activations = True  # rebuilds the kernel arguments on the next call
    assert layer._prepare().int16_activations == VNNI
    assert "int16 activations" in repr(layer)


def test_load_sparse_sets_it_on_every_quantized_layer_and_refuses_folders_without_int8(tmp_path):
    folder = head_folder(tmp_path / "int8", "llama", QuantScheme(8), tie_word_embeddings=True)
    dense, fast = load_compact(folder), load_sparse(folder, int16_activations=True)
    layers = [m for m in fast.modules() if isinstance(m, QuantSparseNMLinear)]
    assert len(layers) == 15 and all(m.int16_activations for m in layers)  # 14 pruned layers and the head
    ids = torch.randint(2, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        step = fast(ids[:, :1]).logits, dense(ids[:, :1]).logits
    torch.testing.assert_close(*step, atol=1e-3, rtol=1e-3)
    if VNNI:
        assert not torch.equal(*step)  # the int16 kernel computed it
    fp = pack_checkpoint(pruned_checkpoint(tmp_path / "fp")[0], tmp_path / "fp-compact").out
    with pytest.raises(ValueError, match="has no int8 layer; int16 activations run int8 layers only"):
        load_sparse(fp, int16_activations=True)


def test_in_an_int4_folder_only_its_int8_head_takes_it(tmp_path):
    folder = head_folder(tmp_path, "llama", QuantScheme(4, True, 64))
    model = load_sparse(folder, int16_activations=True)
    head = model.get_output_embeddings()
    taken = {m.bits: m._prepare().int16_activations for m in model.modules() if isinstance(m, QuantSparseNMLinear)}
    assert taken == {4: False, 8: VNNI} and head.bits == 8
