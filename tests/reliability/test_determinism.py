"""Calibration statistics, and so masks, do not depend on window order, process split or thread count."""

import pytest
import torch

import eggs_ptp.stats as stats_module
from eggs_ptp import PruneConfig, prune
from eggs_ptp.stats import LayerStats

from helpers import QUIET, random_calibration, tiny_model

WIDTH = 48
SLICED = WIDTH * 16  # product elements that make LayerStats add X^T X in 3 slices of 16 rows


def windows(count: int = 32, tokens: int = 64) -> list[torch.Tensor]:
    """Seeded (1, tokens, in) windows with channels of very different scales, like real activations."""
    generator = torch.Generator().manual_seed(0)
    scales = torch.logspace(-2, 2, WIDTH)
    return [torch.randn(1, tokens, WIDTH, generator=generator) * scales for _ in range(count)]


def accumulated(parts: list[list[torch.Tensor]]) -> LayerStats:
    """One LayerStats per part, summed into the first as ``Ranks.reduce_stats`` does."""
    total, *others = [LayerStats(WIDTH, with_hessian=True) for _ in parts]
    for stats, part in zip([total, *others], parts):
        for window in part:
            stats.add(window)
    for other in others:
        for mine, theirs in zip(total.sums(), other.sums()):
            mine += theirs
        total.tokens += other.tokens
    return total


def test_window_order_and_split_give_identical_fp32_statistics():
    data = windows()
    ways = {
        "in order": [data],
        "reversed": [data[::-1]],
        "2 ranks": [data[0::2], data[1::2]],
        "3 ranks": [data[0::3], data[1::3], data[2::3]],
        "halves, second first": [data[16:], data[:16]],
    }
    results = {name: accumulated(parts) for name, parts in ways.items()}
    reference = results.pop("in order")
    for name, stats in results.items():
        assert stats.tokens == reference.tokens
        assert stats.sq_norm.dtype == stats.hessian.dtype == torch.float32
        assert torch.equal(stats.sq_norm, reference.sq_norm), name
        assert torch.equal(stats.hessian, reference.hessian), name
    # The data is hard enough: summed in fp32, the two orders already disagree.
    forward = sum((w.reshape(-1, WIDTH) ** 2).sum(0) for w in data)
    backward = sum((w.reshape(-1, WIDTH) ** 2).sum(0) for w in data[::-1])
    assert not torch.equal(forward, backward)


@pytest.mark.parametrize("slice_elements", [2**22, SLICED])
def test_thread_count_gives_identical_statistics(monkeypatch, slice_elements):
    monkeypatch.setattr(stats_module, "_PRODUCT_ELEMENTS", slice_elements)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(accumulated([windows(8, 256)]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0].sq_norm, results[1].sq_norm)
    assert torch.equal(results[0].hessian, results[1].hessian)


def test_sliced_product_is_the_full_product(monkeypatch):
    full = accumulated([windows(4)])
    monkeypatch.setattr(stats_module, "_PRODUCT_ELEMENTS", SLICED)
    sliced = accumulated([windows(4)])
    x = torch.cat(windows(4), dim=1).reshape(-1, WIDTH).double()
    exact = x.T @ x
    scale = exact.diag().sqrt()  # |H_ij| <= sqrt(H_ii H_jj): off-diagonal sums cancel, so measure against that
    for hessian in (full.hessian, sliced.hessian):
        assert ((hessian.double() - exact).abs() <= 1e-5 * torch.outer(scale, scale)).all()


def test_statistics_are_rounded_once_and_then_closed():
    stats = accumulated([windows(2)])
    assert stats.sq_norm is stats.sq_norm  # rounded once, not on every read
    with pytest.raises(RuntimeError, match="already read"):
        stats.add(windows(1)[0])
    with pytest.raises(RuntimeError, match="already read"):
        stats.sums()


# Not sparsegpt: MKL's Cholesky factor of the same Hessian changes with the thread count.
@pytest.mark.parametrize("method", ["eggs", "ria", "wanda"])
def test_thread_count_gives_identical_pruned_weights(method):
    threads = torch.get_num_threads()
    states = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            config = PruneConfig(method=method, pattern="2:4", nsamples=8, seqlen=32)
            model, _ = prune(
                tiny_model("llama", num_hidden_layers=3), None, config, QUIET, calibration=random_calibration(8, 32)
            )
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    for key, tensor in states[0].items():
        assert torch.equal(tensor, states[1][key]), key
