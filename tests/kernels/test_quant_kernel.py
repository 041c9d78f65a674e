"""The quantized CPU kernel (int8 / int4 kept values, fp16 group scales) against a pure-torch reference."""

import ctypes
import mmap
import sys

import pytest
import torch
import torch.nn.functional as F

from eggs_ptp.formats.codec import pack_bits, unpack_bits
from eggs_ptp.kernels.cpu import QuantCompactLayer, kernel_info, nm_qdecompress, nm_qlinear

ISAS = kernel_info()["isas"]  # every code path this CPU can run
GROUPS = [32, 64, 128, None]  # None: one group per row
# (rows, cols, pattern): "n:m", or "random k" for k columns anywhere in each row. Odd kept counts
# (1:8 at 72, 5:16, random 37) make 16- and 32-column chunks start at a high nibble; 576 is 4.5
# groups of 128; 2:4 and 4:8 rows take the whole-byte path, 104 and 48 of them with a 16-column
# chunk or a tail after it; 100, 104 and 72 leave a tail of under 16 columns.
SHAPES = [
    (7, 576, "2:4"),
    (5, 72, "1:8"),
    (6, 80, "5:16"),
    (9, 100, "random 37"),
    (4, 72, "3:4"),
    (3, 8, "2:4"),
    (5, 104, "2:4"),
    (3, 48, "4:8"),
]
TOKENS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 33)


def random_stored(rows, cols, pattern, generator):
    """(rows, cols) bool: the stored positions, the same count in every row."""
    if pattern.startswith("random"):
        kept = int(pattern.split()[1])
        return torch.rand(rows, cols, generator=generator).argsort(dim=-1).argsort(dim=-1) < kept
    n, m = map(int, pattern.split(":"))
    return (torch.rand(rows, cols // m, m, generator=generator).argsort(dim=-1) < n).reshape(rows, cols)


def pack_nibbles(values):
    """(rows, kept) ints in 0..15 -> (rows, ceil(kept / 2)) uint8, even values in the low nibble; an
    odd count fills the last high nibble with 15, which the kernel must ignore."""
    if values.shape[1] % 2:
        values = torch.cat([values, torch.full((values.shape[0], 1), 15, dtype=values.dtype)], dim=1)
    return (values[:, 0::2] | values[:, 1::2] << 4).to(torch.uint8)


def unpack_nibbles(packed, kept):
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)[:, :kept].to(torch.int32)


def quantized_layer(rows, cols, pattern, bits, group_size, with_zeros, seed):
    """Random qvalues, bitmask, scales (fp16, both signs, some tiny) and zero points for a layer."""
    generator = torch.Generator().manual_seed(seed)
    stored = random_stored(rows, cols, pattern, generator)
    kept = int(stored[0].sum())
    groups = -(-cols // (cols if group_size is None else group_size))
    if bits == 8:
        qvalues = torch.randint(-128, 128, (rows, kept), generator=generator, dtype=torch.int8)
    else:
        qvalues = pack_nibbles(torch.randint(0, 16, (rows, kept), generator=generator))
    scales = (torch.rand(rows, groups, generator=generator) * 0.02 + 1e-4) * (torch.randint(0, 4, (rows, groups)) - 0.5)
    zeros = torch.randint(0, 1 << bits, (rows, groups), generator=generator, dtype=torch.uint8) if with_zeros else None
    return qvalues, pack_bits(stored), scales.half(), zeros


def reference_weight(qvalues, bits, bitmask, cols, scales, zeros, group_size):
    """The dense fp32 weight in torch: values unpacked, scattered to their columns, dequantized."""
    rows = qvalues.shape[0]
    stored = unpack_bits(bitmask, cols)
    kept = int(stored[0].sum())
    q = qvalues.to(torch.int32) if bits == 8 else unpack_nibbles(qvalues, kept)
    group = torch.arange(cols) // (cols if group_size is None else group_size)  # (cols,) group of each column
    z = torch.full(scales.shape, 0 if bits == 8 else 8, dtype=torch.uint8) if zeros is None else zeros
    dense_q = torch.zeros(rows, cols, dtype=torch.int32).masked_scatter_(stored, q)
    weight = (dense_q.float() - z[:, group].float()) * scales[:, group].float()
    return torch.where(stored, weight, torch.zeros(()))


def assert_matches(out, x, weight, bias):
    """Within fp32 rounding of the float64 product, scaled to the magnitudes summed."""
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    scale = x.double().abs() @ weight.double().abs().T + (0.0 if bias is None else bias.double().abs())
    error = (out.double() - expected).abs()
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert (error <= 1e-5 * scale + 1e-30).all(), f"worst error {float((error / (scale + 1e-30)).max())} of the scale"


@pytest.mark.parametrize("isa", ISAS)
def test_hand_checked_int8_per_channel(isa):
    # one row, 8 columns, columns 0, 2, 5, 7 stored (bits 0b10100101), q = 3, -2, 5, 1, scale 0.5
    qvalues, bitmask = torch.tensor([[3, -2, 5, 1]], dtype=torch.int8), torch.tensor([[0b10100101]], dtype=torch.uint8)
    scales = torch.tensor([[0.5]], dtype=torch.float16)
    weight = nm_qdecompress(qvalues, 8, bitmask, 8, scales, isa=isa)
    assert weight.tolist() == [[1.5, 0.0, -1.0, 0.0, 0.0, 2.5, 0.0, 0.5]]
    x = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8], [1.0] * 8])
    out = nm_qlinear(x, qvalues, 8, bitmask, 8, scales, bias=torch.tensor([0.25]), isa=isa)
    # 1.5 * 1 - 1 * 3 + 2.5 * 6 + 0.5 * 8 = 17.5 and 1.5 - 1 + 2.5 + 0.5 = 3.5, each + 0.25
    assert out.tolist() == [[17.75], [3.75]]


@pytest.mark.parametrize("isa", ISAS)
def test_hand_checked_int4_with_a_zero_point(isa):
    # u = 9, 6, 13, 8 packed low nibble first: bytes 9 | 6 << 4 = 105 and 13 | 8 << 4 = 141; z = 7, scale 0.25
    qvalues, bitmask = torch.tensor([[105, 141]], dtype=torch.uint8), torch.tensor([[0b10100101]], dtype=torch.uint8)
    scales, zeros = torch.tensor([[0.25]], dtype=torch.float16), torch.tensor([[7]], dtype=torch.uint8)
    weight = nm_qdecompress(qvalues, 4, bitmask, 8, scales, zeros, isa=isa)
    assert weight.tolist() == [[0.5, 0.0, -0.25, 0.0, 0.0, 1.5, 0.0, 0.25]]  # (u - 7) / 4
    out = nm_qlinear(torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8]]), qvalues, 4, bitmask, 8, scales, zeros, isa=isa)
    assert out.tolist() == [[10.75]]  # 0.5 * 1 - 0.25 * 3 + 1.5 * 6 + 0.25 * 8


@pytest.mark.parametrize("isa", ISAS)
def test_hand_checked_two_groups(isa):
    # 64 columns in groups of 32, columns 0 and 32 stored: (2 - 1) * 0.25 and (3 - 0) * 4
    bitmask = torch.tensor([[1, 0, 0, 0, 1, 0, 0, 0]], dtype=torch.uint8)
    qvalues, zeros = torch.tensor([[2, 3]], dtype=torch.int8), torch.tensor([[1, 0]], dtype=torch.uint8)
    scales = torch.tensor([[0.25, 4.0]], dtype=torch.float16)
    x = torch.arange(1.0, 65.0).unsqueeze(0)
    assert nm_qlinear(x, qvalues, 8, bitmask, 64, scales, zeros, 32, isa=isa).tolist() == [[0.25 * 1 + 12.0 * 33]]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("with_zeros", [False, True])
@pytest.mark.parametrize("group_size", GROUPS)
def test_matches_the_torch_reference(isa, bits, with_zeros, group_size):
    generator = torch.Generator().manual_seed(7)
    for index, (rows, cols, pattern) in enumerate(SHAPES):
        layer = quantized_layer(rows, cols, pattern, bits, group_size, with_zeros, seed=index)
        weight = reference_weight(layer[0], bits, layer[1], cols, layer[2], layer[3], group_size)
        bias = torch.randn(rows, generator=generator)
        x = torch.randn(max(TOKENS), cols, generator=generator)
        for with_bias in (bias, None):
            compact = QuantCompactLayer(layer[0], bits, layer[1], cols, layer[2], layer[3], group_size, with_bias)
            for tokens in TOKENS:
                assert_matches(compact.linear(x[:tokens], isa=isa, threads=1), x[:tokens], weight, with_bias)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
def test_rows_of_each_path_in_one_layer(isa, bits):
    # A 2:4 row (the pairs path: each nibble marks 2), a 4:8 row whose bytes mark 4 but whose
    # nibbles do not (the expanding path) and a row of 64 columns anywhere (the masked path), in
    # one layer and alone: the mask is classified per layer (2, 1, 0) and per row, every row exact.
    generator = torch.Generator().manual_seed(11)
    cols = 256
    pairs = random_stored(1, cols, "2:4", generator)
    halves = torch.tensor([[True] * 4 + [False] * 4]).repeat(1, cols // 8)  # 0b00001111 in every byte
    anywhere = random_stored(1, cols, "random 128", generator)
    layers = [(pairs.repeat(3, 1), 2), (torch.cat([pairs, halves]), 1), (torch.cat([pairs, halves, anywhere]), 0)]
    for stored, info in layers:
        rows, bitmask = stored.shape[0], pack_bits(stored)
        qvalues, _, scales, zeros = quantized_layer(rows, cols, "2:4", bits, 128, True, seed=rows)
        layer = QuantCompactLayer(qvalues, bits, bitmask, cols, scales, zeros, 128)
        assert layer._layer.mask_info == (info if kernel_info()["isa"] != "generic" else 0)  # classified by auto
        weight = reference_weight(qvalues, bits, bitmask, cols, scales, zeros, 128)
        x = torch.randn(9, cols, generator=generator)
        for tokens in (1, 2, 5, 9):
            assert_matches(layer.linear(x[:tokens], isa=isa, threads=1), x[:tokens], weight, None)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
def test_layers_that_store_every_column_take_the_dense_path(isa, bits):
    # A quantized dense layer (an output head): every bit set, kept == cols. The layer is classified
    # 3 (no mask read but in a group's last columns); 576 is 4.5 groups of 128, 100 and 72 end in tails.
    generator = torch.Generator().manual_seed(5)
    for cols, group_size, with_zeros in [(576, None, False), (576, 128, True), (100, 32, False), (72, None, False)]:
        qvalues, bitmask, scales, zeros = quantized_layer(6, cols, f"random {cols}", bits, group_size, with_zeros, cols)
        assert unpack_bits(bitmask, cols).all()
        layer = QuantCompactLayer(qvalues, bits, bitmask, cols, scales, zeros, group_size)
        assert layer._layer.mask_info == (3 if kernel_info()["isa"] != "generic" else 0)
        weight = reference_weight(qvalues, bits, bitmask, cols, scales, zeros, group_size)
        x = torch.randn(9, cols, generator=generator)
        for tokens in (1, 2, 3, 5, 9):
            assert_matches(layer.linear(x[:tokens], isa=isa, threads=1), x[:tokens], weight, None)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
def test_decompress_is_bit_exact(isa, bits):
    for index, (rows, cols, pattern) in enumerate(SHAPES):
        for group_size in GROUPS:
            for with_zeros in (False, True):
                layer = quantized_layer(rows, cols, pattern, bits, group_size, with_zeros, seed=index)
                dense = nm_qdecompress(*layer[:1], bits, layer[1], cols, *layer[2:], group_size, isa=isa)
                expected = reference_weight(layer[0], bits, layer[1], cols, layer[2], layer[3], group_size)
                assert dense.dtype == torch.float32
                assert torch.equal(dense.view(torch.int32), expected.view(torch.int32))  # -0.0 and +0.0 apart


@pytest.mark.parametrize("isa", ISAS)
def test_every_half_scale_converts_exactly(isa):
    halves = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.float16).reshape(-1, 1)
    ones, bitmask = torch.ones(halves.shape, dtype=torch.int8), torch.ones(halves.shape, dtype=torch.uint8)
    dense, expected = nm_qdecompress(ones, 8, bitmask, 1, halves, isa=isa), halves.float()
    assert torch.equal(dense.isnan(), expected.isnan())
    numbers = ~expected.isnan()
    assert torch.equal(dense[numbers].view(torch.int32), expected[numbers].view(torch.int32))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
def test_threads_split_rows_without_changing_a_bit(isa, bits):
    qvalues, bitmask, scales, zeros = quantized_layer(260, 512, "2:4", bits, 128, True, seed=3)  # two threads' work
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(2))
    one, two = (nm_qlinear(x, qvalues, bits, bitmask, 512, scales, zeros, 128, isa=isa, threads=n) for n in (1, 2))
    assert torch.equal(one, two)
    assert_matches(one, x, reference_weight(qvalues, bits, bitmask, 512, scales, zeros, 128), None)
    assert torch.equal(
        nm_qdecompress(qvalues, bits, bitmask, 512, scales, zeros, 128, isa=isa, threads=1),
        nm_qdecompress(qvalues, bits, bitmask, 512, scales, zeros, 128, isa=isa, threads=2),
    )


def guarded(tensor):
    """A copy of ``tensor`` whose last byte sits just before a page the process may not touch, so
    a read past its end kills the test run instead of passing unseen."""
    page, nbytes = mmap.PAGESIZE, tensor.numel() * tensor.element_size()
    pages = -(-nbytes // page) + 1
    memory = mmap.mmap(-1, pages * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(start + (pages - 1) * page, page, 0) == 0  # PROT_NONE
    end = (pages - 1) * page
    copy = torch.frombuffer(memory, dtype=torch.uint8)[end - nbytes : end].view(tensor.dtype).view(tensor.shape)
    copy.copy_(tensor)
    return copy


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages via mprotect")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
def test_no_read_past_the_last_value(isa, bits):
    for rows, cols, pattern in [(3, 72, "1:8"), (2, 40, "random 13"), (4, 100, "2:4"), (1, 24, "random 1")]:
        qvalues, bitmask, scales, zeros = quantized_layer(rows, cols, pattern, bits, None, False, seed=cols)
        weight = reference_weight(qvalues, bits, bitmask, cols, scales, zeros, None)
        qvalues = guarded(qvalues)
        for tokens in (1, 5):
            x = torch.randn(tokens, cols)
            assert_matches(nm_qlinear(x, qvalues, bits, bitmask, cols, scales, isa=isa), x, weight, None)
        assert torch.equal(nm_qdecompress(qvalues, bits, bitmask, cols, scales, isa=isa), weight)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [8, 4])
def test_a_bitmask_that_does_not_match_the_values_is_refused(isa, bits):
    qvalues, bitmask, scales, zeros = quantized_layer(4, 64, "2:4", bits, 32, True, seed=0)
    bitmask[2, 1] |= 0xFF  # row 2 now marks more columns than it has values
    with pytest.raises(ValueError, match="does not mark exactly as many columns"):
        nm_qlinear(torch.ones(3, 64), qvalues, bits, bitmask, 64, scales, zeros, 32, isa=isa)
    with pytest.raises(ValueError, match="does not mark exactly as many columns"):
        nm_qdecompress(qvalues, bits, bitmask, 64, scales, zeros, 32, isa=isa)


def test_a_bad_group_size_is_refused_with_a_clear_message():
    qvalues, bitmask, scales, _ = quantized_layer(4, 100, "2:4", 8, None, False, seed=0)
    message = r"group_size must be a multiple of 32, or at least cols \(100\) for one group per row; got "
    for group_size in (48, 16, 0, -32):
        with pytest.raises(ValueError, match=f"{message}{group_size}$"):
            nm_qlinear(torch.ones(1, 100), qvalues, 8, bitmask, 100, scales, group_size=group_size)
    with pytest.raises(TypeError):
        nm_qlinear(torch.ones(1, 100), qvalues, 8, bitmask, 100, scales, group_size=32.0)
    # one group as large as the row, or larger, is one group per row
    for group_size in (100, 1000):
        out = nm_qlinear(torch.ones(1, 100), qvalues, 8, bitmask, 100, scales, group_size=group_size)
        torch.testing.assert_close(out, nm_qlinear(torch.ones(1, 100), qvalues, 8, bitmask, 100, scales))


def test_bad_arguments_are_refused_in_one_line():
    qvalues, bitmask, scales, zeros = quantized_layer(4, 64, "2:4", 4, 32, True, seed=0)
    x = torch.ones(1, 64)
    with pytest.raises(ValueError, match="bits must be 8 or 4, got 3"):
        nm_qlinear(x, qvalues, 3, bitmask, 64, scales, zeros, 32)
    with pytest.raises(TypeError, match="4-bit qvalues must be torch.uint8, got torch.int8"):
        nm_qlinear(x, qvalues.view(torch.int8), 4, bitmask, 64, scales, zeros, 32)
    with pytest.raises(TypeError, match="8-bit qvalues must be torch.int8, got torch.uint8"):
        nm_qlinear(x, qvalues, 8, bitmask, 64, scales, zeros, 32)
    with pytest.raises(ValueError, match=r"qvalues must be a contiguous 2-D \(out, stored\) tensor"):
        nm_qlinear(x, qvalues.T.contiguous().T, 4, bitmask, 64, scales, zeros, 32)
    with pytest.raises(ValueError, match=r"4-bit qvalues must have ceil\(kept / 2\) = 16 bytes a row .* got 15"):
        nm_qlinear(x, qvalues[:, :15].contiguous(), 4, bitmask, 64, scales, zeros, 32)
    with pytest.raises(ValueError, match=r"bitmask must be contiguous uint8 \[4, 8\]"):
        nm_qlinear(x, qvalues, 4, bitmask[:, :4].contiguous(), 64, scales, zeros, 32)
    with pytest.raises(ValueError, match=r"scales must be contiguous float16 \[4, 2\], got torch.float32 \[4, 2\]"):
        nm_qlinear(x, qvalues, 4, bitmask, 64, scales.float(), zeros, 32)
    with pytest.raises(ValueError, match=r"scales must be contiguous float16 \[4, 1\], got torch.float16 \[4, 2\]"):
        nm_qlinear(x, qvalues, 4, bitmask, 64, scales, None, None)
    with pytest.raises(ValueError, match=r"zeros must be None or contiguous uint8 \[4, 2\], got torch.int32"):
        nm_qlinear(x, qvalues, 4, bitmask, 64, scales, zeros.int(), 32)
    with pytest.raises(ValueError, match="needs CPU tensors"):
        nm_qlinear(x, qvalues, 4, bitmask, 64, scales.to("meta"), zeros, 32)
    with pytest.raises(ValueError, match=r"bias must have shape \[4\] on the CPU, got cpu \[5\]"):
        nm_qlinear(x, qvalues, 4, bitmask, 64, scales, zeros, 32, bias=torch.ones(5))
    with pytest.raises(ValueError, match=r"x must be a CPU tensor \(\.\.\., 64\), got cpu \[1, 12\]"):
        nm_qlinear(torch.ones(1, 12), qvalues, 4, bitmask, 64, scales, zeros, 32)
    with pytest.raises(ValueError, match="unknown code path 'sse'"):
        nm_qlinear(x, qvalues, 4, bitmask, 64, scales, zeros, 32, isa="sse")


def test_any_float_input_and_leading_dimensions():
    qvalues, bitmask, scales, zeros = quantized_layer(6, 64, "2:4", 8, 32, False, seed=1)
    layer = QuantCompactLayer(qvalues, 8, bitmask, 64, scales, zeros, 32)
    x = torch.randn(2, 3, 64).bfloat16()
    out = layer.linear(x)
    assert out.shape == (2, 3, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, layer.linear(x.float().reshape(6, 64)).reshape(2, 3, 6), rtol=0, atol=0)
