"""The CUDA 2:4 path. Everything but the first test needs a GPU and is skipped without one."""

import pytest
import torch
import torch.nn.functional as F

from eggs_ptp.kernels import SparseNMLinear, gpu
from eggs_ptp.pattern import Pattern

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def random_2_of_4(rows, cols, dtype, device="cpu"):
    generator = torch.Generator().manual_seed(rows + cols)
    keep = (torch.rand(rows, cols // 4, 4, generator=generator).argsort(dim=-1) < 2).reshape(rows, cols)
    return torch.where(keep, torch.randn(rows, cols, generator=generator), 0.0).to(device=device, dtype=dtype)


def test_only_2_of_4_in_16_bit_on_cuda_qualifies():
    assert not gpu.supports(Pattern(4, 8), torch.float16)
    assert not gpu.supports(Pattern(2, 4), torch.float32)
    assert gpu.supports(Pattern(2, 4), torch.bfloat16) == gpu.semi_structured_available()
    sparse = SparseNMLinear.from_dense(random_2_of_4(8, 16, torch.bfloat16), "2:4")
    assert sparse.path(10_000) != "semi-structured"  # a CPU layer never takes it


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows, cols", [(64, 128), (40, 72), (8, 4)])  # one fits the tiles, two need padding
def test_semi_structured_weight_matches_dense(dtype, rows, cols):
    weight = random_2_of_4(rows, cols, dtype, "cuda")
    bias = torch.randn(rows, device="cuda", dtype=dtype)
    semi = gpu.SemiStructuredWeight(weight, bias)
    for tokens in (1, 17, 256):
        x = torch.randn(tokens, cols, device="cuda", dtype=dtype)
        torch.testing.assert_close(semi.linear(x), F.linear(x, weight, bias), atol=2e-2, rtol=2e-2)


@cuda
def test_module_uses_dense_for_few_tokens_and_semi_structured_for_many():
    weight = random_2_of_4(96, 256, torch.float16)
    sparse = SparseNMLinear.from_dense(weight, "2:4", sparse_from_tokens=64).cuda()
    assert sparse.path(1) == "dense" and sparse.path(64) == "semi-structured"
    for tokens in (1, 64):
        x = torch.randn(2, tokens, 256, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(sparse(x), F.linear(x, weight.cuda()), atol=2e-2, rtol=2e-2)
    four_of_eight = SparseNMLinear.from_dense(random_2_of_4(96, 256, torch.float16), "4:8").cuda()
    assert four_of_eight.path(10_000) == "dense"
    back = sparse.cpu()  # moving drops the CUDA copies; fp16 has no CPU kernel
    assert back._dense is None and back._semi is None and back.path(1) == "torch"
