"""The compiled CPU kernel against dense matmul: hand-checked answers, every N:M, odd shapes, both dtypes."""

import ctypes
import mmap
import sys

import pytest
import torch
import torch.nn.functional as F

from eggs_ptp.formats.codec import compress, decompress
from eggs_ptp.kernels import kernel_info, nm_decompress, nm_linear
from eggs_ptp.pattern import Pattern

ISAS = kernel_info()["isas"]  # every code path this CPU can run: generic, and avx2/avx512 where present
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16}


def random_nm(rows, cols, n, m, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    keep = (torch.rand(rows, cols // m, m, generator=generator).argsort(dim=-1) < n).reshape(rows, cols)
    return torch.where(keep, torch.randn(rows, cols, generator=generator), 0.0).to(dtype)  # (out, in)


def test_kernel_is_available_with_a_compiler():
    info = kernel_info()
    assert info["available"] and "generic" in info["isas"] and info["isa"] == info["isas"][-1]


@pytest.mark.parametrize("isa", ISAS)
def test_hand_checked_2_of_4(isa):
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 4.0, 0.0, -1.0], [0.0, 3.0, 0.0, -1.0, 5.0, 0.0, 0.0, 0.0]])
    values, bitmask = compress(weight, Pattern(2, 4))
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    out = nm_linear(x, values, bitmask, 8, torch.tensor([0.5, -0.5]), isa=isa)
    # row 0: 1 + 2 + 4 - 1 = 6 and 1 + 6 + 24 - 8 = 23; row 1: 3 - 1 + 5 = 7 and 6 - 4 + 25 = 27
    assert out.tolist() == [[6.5, 6.5], [23.5, 26.5]]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "n, m, rows, cols",
    [
        (2, 4, 7, 12),
        (2, 4, 33, 100),
        (4, 8, 5, 40),
        (1, 4, 3, 20),
        (3, 8, 9, 72),
        (2, 3, 4, 33),
        (5, 16, 6, 48),
        (2, 4, 1, 4),
    ],
)
def test_matches_dense_linear(isa, dtype, n, m, rows, cols):
    weight = random_nm(rows, cols, n, m, dtype, seed=rows * cols)
    values, bitmask = compress(weight, Pattern(n, m))
    generator = torch.Generator().manual_seed(1)
    bias = torch.randn(rows, generator=generator)
    for tokens in (1, 3, 8, 9, 17):
        x = torch.randn(tokens, cols, generator=generator)
        expected = F.linear(x, weight.float(), bias)
        for with_bias in (bias, None):
            out = nm_linear(x, values, bitmask, cols, with_bias, isa=isa)
            reference = expected if with_bias is not None else expected - bias
            torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decompress_is_bit_exact(isa, dtype):
    for n, m, rows, cols in [(2, 4, 7, 100), (4, 8, 3, 24), (1, 4, 5, 36)]:
        weight = random_nm(rows, cols, n, m, dtype, seed=cols)
        values, bitmask = compress(weight, Pattern(n, m))
        dense = nm_decompress(values, bitmask, cols, isa=isa)
        assert dense.dtype == dtype
        assert torch.equal(
            dense.view(BITS[dtype]), decompress(values, bitmask, (rows, cols), Pattern(n, m)).view(BITS[dtype])
        )


def guarded(tensor):
    """A copy of ``tensor`` whose last byte sits just before a page the process may not touch, so
    a read past its end kills the test run instead of passing unseen."""
    page, nbytes = mmap.PAGESIZE, tensor.numel() * tensor.element_size()
    pages = -(-nbytes // page) + 1
    memory = mmap.mmap(-1, pages * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(start + (pages - 1) * page, page, 0) == 0  # PROT_NONE
    end = (pages - 1) * page
    copy = torch.frombuffer(memory, dtype=torch.uint8)[end - nbytes : end].view(tensor.dtype).view(tensor.shape)
    copy.copy_(tensor)
    return copy


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages via mprotect")
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_read_past_the_last_value(isa, dtype):
    # last rows shorter than a vector load, 2:4 rows (the AVX2 whole-byte path) with a tail, one value per row
    for n, m, rows, cols in [(1, 8, 3, 24), (2, 4, 2, 36), (2, 4, 3, 40), (1, 16, 2, 16), (3, 8, 5, 72)]:
        weight = random_nm(rows, cols, n, m, dtype, seed=cols)
        values, bitmask = compress(weight, Pattern(n, m))
        values = guarded(values)
        for tokens in (1, 5):
            x = torch.randn(tokens, cols)
            torch.testing.assert_close(nm_linear(x, values, bitmask, cols, isa=isa), F.linear(x, weight.float()))
        assert torch.equal(nm_decompress(values, bitmask, cols, isa=isa), weight)


def test_threads_split_rows_without_changing_a_bit():
    weight = random_nm(260, 512, 2, 4, torch.float32, seed=3)  # enough work for two threads
    values, bitmask = compress(weight, Pattern(2, 4))
    x = torch.randn(5, 512, generator=torch.Generator().manual_seed(2))
    assert torch.equal(nm_linear(x, values, bitmask, 512, threads=1), nm_linear(x, values, bitmask, 512, threads=2))
    assert torch.equal(nm_decompress(values, bitmask, 512, threads=1), nm_decompress(values, bitmask, 512, threads=2))


def test_a_bitmask_that_does_not_match_the_values_is_refused():
    values, bitmask = compress(random_nm(4, 16, 2, 4, torch.float32, seed=0), Pattern(2, 4))
    bitmask[2, 0] |= 0xFF  # row 2 now marks more columns than it has values
    with pytest.raises(ValueError, match="does not mark exactly as many columns"):
        nm_linear(torch.ones(1, 16), values, bitmask, 16)
    with pytest.raises(ValueError, match="does not mark exactly as many columns"):
        nm_decompress(values, bitmask, 16)


def test_bad_arguments_are_refused_in_one_line():
    values, bitmask = compress(random_nm(4, 16, 2, 4, torch.float32, seed=0), Pattern(2, 4))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        nm_linear(torch.ones(1, 16), values.half(), bitmask, 16)
    with pytest.raises(ValueError, match=r"bitmask must be contiguous uint8 \[4, 2\]"):
        nm_linear(torch.ones(1, 16), values, bitmask[:, :1].contiguous(), 16)
    with pytest.raises(ValueError, match=r"x must be a CPU tensor \(\.\.\., 16\), got cpu \[1, 12\]"):
        nm_linear(torch.ones(1, 12), values, bitmask, 16)
    with pytest.raises(ValueError, match="unknown code path 'sse'"):
        nm_linear(torch.ones(1, 16), values, bitmask, 16, isa="sse")


def test_the_environment_can_force_a_code_path(monkeypatch):
    """$EGGS_PTP_KERNEL_ISA makes ``auto`` run another path, so one CPU can measure another's."""
    import eggs_ptp.kernels.cpu as cpu_module

    weight = torch.randn(8, 32) * (torch.rand(8, 8, 4).argsort(-1) < 2).reshape(8, 32)
    values, bitmask = compress(weight, Pattern(2, 4))
    x = torch.randn(3, 32)
    for forced in ("generic", *kernel_info()["isas"]):
        monkeypatch.setenv(cpu_module.ISA_VARIABLE, forced)
        cpu_module._forced_isa.cache_clear()
        info = kernel_info()
        assert info["isa"] == forced and info["forced_by"] == f"EGGS_PTP_KERNEL_ISA={forced}"
        torch.testing.assert_close(nm_linear(x, values, bitmask, 32), x @ weight.T, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv(cpu_module.ISA_VARIABLE, "avx9")
    cpu_module._forced_isa.cache_clear()
    with pytest.raises(ValueError, match="EGGS_PTP_KERNEL_ISA='avx9' is not a code path"):
        nm_linear(x, values, bitmask, 32)
    monkeypatch.delenv(cpu_module.ISA_VARIABLE)
    cpu_module._forced_isa.cache_clear()
    assert kernel_info()["forced_by"] is None
