"""The opt-in int16-activation kernel: bit for bit the integer arithmetic it documents (inputs rounded
to 16 bits per token, products exact, groups summed in double), which layers and inputs take it, and
the exact kernel wherever they do not."""

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
    "int4-g64": QuantScheme(4, True, 64),
    "int4-g128-asym": QuantScheme(4, False, 128),
}


def int16_reference(x: torch.Tensor, layer: QuantSparseNMLinear) -> torch.Tensor:
    """What the kernel computes, from its definition: xq = round(x * (32767 / max|x|)) per token in
    fp32, each group's sum of (q - z) * xq exact, scaled by the group's scale and summed over groups
    in order in float64, times max|x| / 32767, rounded to fp32, plus the bias."""
    weight, scales = layer.dense_weight(), layer.scales.float()
    size = layer.group_size or layer.in_features
    integers = weight / scales.repeat_interleave(size, dim=1)[:, : layer.in_features]  # q - z, exact
    top = x.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(top > 0, torch.tensor(32767.0) / top, torch.zeros(()))
    xq = torch.round(x * inverse).double()
    total = torch.zeros(x.shape[0], layer.out_features, dtype=torch.float64)
    for start in range(0, layer.in_features, size):
        columns = slice(start, start + size)
        exact = xq[:, columns] @ integers[:, columns].double().T  # integers below 2**53: exact
        total = total + scales[:, start // size].double() * exact
    out = (total * (top / 32767.0).double()).float()
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
    """A QuantSparseNMLinear pruned n:m (m need not divide 64: its 64-column steps then hold odd
    numbers of values) with its kept weights on a grid, and the dense layer it equals."""
    torch.manual_seed(seed)
    linear = nn.Linear(cols, rows)
    kept = (torch.rand(rows, cols // m, m).argsort(dim=-1) < n).reshape(rows, cols)
    grid = scheme.fit(linear.weight.detach(), kept)
    with torch.no_grad():
        linear.weight.copy_(torch.where(kept, grid.round(linear.weight), 0.0))
    return QuantSparseNMLinear.from_linear(linear, f"{n}:{m}", grid=grid, **options), linear


@needs_vnni
@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES)
def test_steps_that_start_inside_a_byte_of_nibbles(scheme):
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
    [QuantScheme(4, True, 32), QuantScheme(4, False, 96)],
    ids=["groups-of-32", "groups-of-96"],
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


def test_load_sparse_sets_it_on_every_quantized_layer_and_refuses_float_folders(tmp_path):
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
    with pytest.raises(ValueError, match="int16 activations need a quantized folder"):
        load_sparse(fp, int16_activations=True)
