"""Input-channel permutations that raise the score N:M selection keeps.

RIA's channel permutation (Zhang et al., "Plug-and-Play: An Efficient Post-training Pruning
Method for Large Language Models", ICLR 2024): N:M keeps N of every M consecutive inputs per row,
so heavy channels that share a group compete for the same N slots. Spread them over the groups
first, then refine by linear assignment: with M - 1 slots of every group held fixed, deal the
channels of the remaining slot back to the groups by an optimal assignment, slot after slot.

A permutation is a LongTensor ``perm`` (in,) read as "new column j is old column perm[j]".
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from eggs_ptp.pattern import Pattern

# Largest number of groups one assignment problem covers; wider layers are refined in windows of
# consecutive groups, which bounds the (rows x window x window) gain tensor and the solver's cost.
WINDOW = 256
SWEEPS = 2  # a third sweep gained under 0.01% of kept score on random layers
_CHUNK = 1 << 22  # elements per slice of the gain computation (16 MiB in fp32, cache-friendly)


def _check(scores: torch.Tensor, pattern: Pattern) -> None:
    if not pattern.structured:
        raise ValueError(f"channel permutation needs an N:M pattern such as 2:4, not {pattern}")
    if scores.dim() != 2 or scores.shape[1] % pattern.m:
        raise ValueError(
            f"scores must be (out, in) with in divisible by M = {pattern.m}, got shape {tuple(scores.shape)}"
        )


def kept_score(scores: torch.Tensor, pattern: Pattern) -> float:
    """Total score that N:M top-k keeps: per row, the N largest of each group of M along ``in``."""
    _check(scores, pattern)
    groups = scores.reshape(scores.shape[0], -1, pattern.m)  # (out, G, M)
    return float(groups.topk(pattern.n, dim=-1).values.sum(dtype=torch.float64))


def _spread(scores: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's allocation: rank channels by total score and give every group one channel from each
    of the M rank bands, snaking through alternate bands so the group totals stay balanced.

    Returns:
        (G, M) channel indices: group g holds columns ``arrangement[g]``.
    """
    order = torch.sort(scores.sum(0, dtype=torch.float64), descending=True, stable=True).indices
    bands = order.reshape(m, -1).clone()  # (M, G): band b holds ranks b*G .. (b+1)*G - 1
    bands[1::2] = bands[1::2].flip(-1)
    return bands.T.contiguous()


def _insert_gain(threshold: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Score gained by putting each moving channel into each group's free slot.

    With M - 1 fixed scores per group and N < M, the top-N sum with one more score ``c`` is the
    fixed top-N sum plus ``max(0, c - t)``, where ``t`` is the N-th largest fixed score.

    Args:
        threshold: (R, K) the N-th largest fixed score of each of K groups, per row.
        moving: (R, K) the scores of the K channels to deal out, per row.

    Returns:
        (K groups, K channels) gain, summed over rows in fp64.
    """
    rows, k = threshold.shape
    gain = torch.zeros(k, k, dtype=torch.float64, device=threshold.device)
    step = max(1, _CHUNK // (k * k))
    for start in range(0, rows, step):  # slices bound memory; each slice is one vectorised op
        t, c = threshold[start : start + step], moving[start : start + step]
        gain += (c[:, None, :] - t[:, :, None]).clamp_min_(0).sum(0)  # fp32 per slice is 4x faster
    return gain


def _refine(scores: torch.Tensor, arrangement: torch.Tensor, n: int, sweeps: int, window: int) -> torch.Tensor:
    """Re-deal one slot at a time by linear assignment until a sweep over all slots gains nothing."""
    groups, m = arrangement.shape
    arrangement = arrangement.clone()
    for _ in range(sweeps):
        improved = False
        for slot in range(m):
            others = [s for s in range(m) if s != slot]
            fixed = scores[:, arrangement[:, others]]  # (R, G, M-1)
            threshold = fixed.topk(n, dim=-1).values[..., -1]  # (R, G)
            moving = scores[:, arrangement[:, slot]]  # (R, G)
            for start in range(0, groups, window):
                stop = min(start + window, groups)
                gain = _insert_gain(threshold[:, start:stop], moving[:, start:stop]).cpu()
                current = float(gain.diagonal().sum())
                rows, cols = linear_sum_assignment(gain.numpy(), maximize=True)
                best = float(gain[rows, cols].sum())
                if best > current + 1e-9 * abs(current):  # a strict gain, not rounding noise
                    dealt = torch.as_tensor(cols, device=arrangement.device)
                    arrangement[start:stop, slot] = arrangement[start:stop, slot][dealt]
                    improved = True
        if not improved:
            break
    return arrangement


def _search_one(scores: torch.Tensor, pattern: Pattern, sweeps: int, window: int) -> torch.Tensor:
    identity = torch.arange(scores.shape[1], device=scores.device)
    arrangement = _refine(scores, _spread(scores, pattern.m), pattern.n, sweeps, window)
    perm = arrangement.reshape(-1)
    if kept_score(scores[:, perm], pattern) > kept_score(scores, pattern):
        return perm
    return identity


def search_permutation(
    scores: torch.Tensor,
    pattern: Pattern,
    block: int | None = None,
    ties: torch.Tensor | None = None,
    sweeps: int = SWEEPS,
    window: int = WINDOW,
) -> torch.Tensor:
    """Find an input-channel permutation that keeps more score under N:M top-k than the identity.

    Comparison group: per output row, groups of M along ``in``. The permutation acts within
    contiguous blocks of ``block`` inputs (an attention head), and blocks with the same tie id share
    one permutation (query heads that read one KV head), so their rows are searched as one stacked
    matrix. Each tie group falls back to the identity unless the permutation keeps strictly more,
    so the result never keeps less than the identity. Deterministic: ties in rank go to the lower
    index, and the assignment solver is deterministic.

    Args:
        scores: (out, in) finite scores; ``in`` divisible by ``block``, ``block`` by M.
        pattern: the N:M pattern.
        block: inputs per block; None means one block of all inputs.
        ties: (in // block,) tie id per block; None means every block moves on its own.
        sweeps: most passes over the M slots of assignment refinement.
        window: most groups in one assignment problem.

    Returns:
        (in,) LongTensor ``perm``: new column j is old column ``perm[j]``.
    """
    _check(scores, pattern)
    out_features, in_features = scores.shape
    block = block or in_features
    if in_features % block or block % pattern.m:
        raise ValueError(f"block {block} must divide in = {in_features} and be a multiple of M = {pattern.m}")
    blocks = in_features // block
    ties = torch.arange(blocks) if ties is None else torch.as_tensor(ties).cpu()
    if ties.shape != (blocks,):
        raise ValueError(f"ties must give one id per block ({blocks}), got shape {tuple(ties.shape)}")
    tiles = scores.detach().float().reshape(out_features, blocks, block)
    perm = torch.arange(in_features, device=scores.device).reshape(blocks, block)
    for tie in torch.unique(ties).tolist():  # one search per head or KV head
        members = (ties == tie).nonzero().flatten().to(scores.device)
        stacked = tiles[:, members].transpose(0, 1).reshape(-1, block)  # (members * out, block)
        local = _search_one(stacked, pattern, sweeps, window)
        perm[members] = members[:, None] * block + local
    return perm.reshape(-1)


__all__ = ["SWEEPS", "WINDOW", "kept_score", "search_permutation"]
