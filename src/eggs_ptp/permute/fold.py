"""Permute one decoder block's foldable layers before pruning, leaving the block's function unchanged.

For each layer the method will prune: propose folds (:mod:`eggs_ptp.permute.structure`), search a
permutation on the method's own score (:mod:`eggs_ptp.permute.search`), apply it to the layer's
columns and its producers' rows, and keep it only if a forward of the block on a seeded random
input shows the fold exact. The layer's calibration statistics are permuted with it, so the method
then prunes the permuted layer as usual and its stored weights are N:M in memory order.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from eggs_ptp.methods import Method
from eggs_ptp.models.layers import PrunableLinear
from eggs_ptp.pattern import Pattern
from eggs_ptp.permute.search import search_permutation
from eggs_ptp.permute.structure import Fold, propose_folds
from eggs_ptp.scores import MagnitudeScore, Score, WandaScore
from eggs_ptp.stats import LayerStats

# How the walk calls a block on hidden states (eggs_ptp.walk.BlockCall); permute sits below the
# walk, so it names only the call's shape.
BlockCall = Callable[[nn.Module, torch.Tensor], torch.Tensor]

Search = Callable[[torch.Tensor, Pattern, int, torch.Tensor], torch.Tensor]

# Relative tolerance of the exactness check, at least this many machine epsilons of the block's
# dtype: a fold only moves data, so only the summation order (rounding) may change.
_EPSILONS = 8


def permute_stats(stats: LayerStats, perm: torch.Tensor) -> None:
    """Reorder a layer's input statistics to follow its permuted input channels."""
    perm = perm.to(stats.sq_norm.device)
    stats.sq_norm = stats.sq_norm[perm]
    if stats.hessian is not None:
        stats.hessian = stats.hessian[perm][:, perm]
    if stats.drift is not None:
        stats.drift = stats.drift[perm][:, perm]


class _ExactnessCheck:
    """Compares the block on one seeded random input against its output before any fold.

    A fold is exact when the consumer's inputs are the reference inputs permuted, channel by
    channel, and the block's output is unchanged. The per-channel test catches a single misplaced
    channel that a whole-output norm would hide in a wide layer.
    """

    def __init__(self, block: nn.Module, call: BlockCall, like: torch.Tensor, consumers: list[PrunableLinear]) -> None:
        self.block, self.call = block, call
        scale = like.float().pow(2).mean().sqrt().clamp_min(1e-3)
        noise = torch.randn(like.shape, generator=torch.Generator().manual_seed(0))
        self.input = (noise * scale.cpu()).to(device=like.device, dtype=like.dtype)
        self.tolerance = max(1e-4, _EPSILONS * torch.finfo(like.dtype).eps)
        self.output, self.inputs = self._run(consumers)

    def _run(self, consumers: list[PrunableLinear]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seen: dict[str, torch.Tensor] = {}
        handles = [
            layer.module.register_forward_hook(
                lambda module, inputs, output, name=layer.name: seen.__setitem__(
                    name, inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
                )
            )
            for layer in consumers
        ]
        try:
            output = self.call(self.block, self.input).detach().float()
        finally:
            for handle in handles:
                handle.remove()
        return output, seen

    def exact(self, consumer: PrunableLinear, perm: torch.Tensor) -> bool:
        output, seen = self._run([consumer])
        if consumer.name not in seen or consumer.name not in self.inputs:  # never called by the block
            return False
        expected = self.inputs[consumer.name][:, perm.to(output.device)]  # (tokens, in)
        norms = expected.norm(dim=0)
        floor = norms.max() * 1e-3  # channels near zero are compared at a thousandth of the largest
        channels_ok = (seen[consumer.name] - expected).norm(dim=0) <= self.tolerance * norms.clamp_min(floor)
        output_ok = (output - self.output).norm() <= self.tolerance * self.output.norm()
        return bool(channels_ok.all()) and bool(output_ok)


def _score(method: Method, stats: LayerStats | None) -> tuple[Score, str]:
    """The method's own score; a method that chooses its mask inside an update gets Wanda's as a proxy."""
    if method.score is not None:
        return method.score, method.score.name
    proxy = WandaScore() if stats is not None else MagnitudeScore()
    return proxy, f"{proxy.name} (proxy: {method.name} has no score)"


def _kept(method: Method, scores: torch.Tensor, pattern: Pattern) -> float:
    """Score kept by the method's own selector, which may differ from top-k (EGGS)."""
    mask = method.selector.select(scores, pattern)
    return float(scores.masked_fill(~mask, 0).sum(dtype=torch.float64))


def _permute_layer(
    folds: list[Fold],
    stats: LayerStats | None,
    method: Method,
    pattern: Pattern,
    check: _ExactnessCheck,
    search: Search,
) -> dict[str, Any]:
    """Try the candidate folds in order; the first that gains score and proves exact is kept."""
    consumer = folds[0].consumer
    score, score_name = _score(method, stats)
    scores = score(consumer.weight.float(), stats)  # (out, in)
    identity_kept = _kept(method, scores, pattern)
    identity = torch.arange(scores.shape[1], device=scores.device)
    reason = "no permutation keeps more score than the identity"
    perms: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    for fold in folds:
        key = (fold.block, tuple(fold.ties.tolist()))
        if key not in perms:
            perms[key] = search(scores, pattern, fold.block, fold.ties).to(scores.device)
        perm = perms[key]
        if torch.equal(perm, identity):
            continue
        kept = _kept(method, scores[:, perm], pattern)  # scores use column statistics, so they permute with W
        if kept <= identity_kept:
            reason = f"the permutation keeps no more score under {method.selector.name} selection"
            continue
        fold.apply(perm)
        if not check.exact(consumer, perm):
            fold.apply(perm.argsort())
            reason = f"fold not exact: permuting {', '.join(fold.producer_names)} changed the block's output"
            continue
        if stats is not None:
            permute_stats(stats, perm)
        return {
            "applied": True,
            "folded_into": fold.producer_names,
            "score": score_name,
            "kept_score": kept,
            "identity_kept_score": identity_kept,
            "kept_score_gain": kept / identity_kept - 1 if identity_kept else None,
        }
    return {"applied": False, "reason": reason}


@torch.no_grad()
def permute_block(
    block: nn.Module,
    prefix: str,
    layers: list[PrunableLinear],
    stats: dict[str, LayerStats],
    method: Method,
    pattern: Pattern,
    call: BlockCall,
    hidden: torch.Tensor,
    search: Search = search_permutation,
) -> dict[str, dict[str, Any]]:
    """Permute the input channels of every layer in ``layers`` whose permutation folds exactly.

    Mutates the block's weights and biases and the permuted layers' ``stats`` in place; the
    block computes the same function afterwards.

    Args:
        block: one decoder block, called as ``call(block, hidden)``.
        prefix: the block's qualified name, which every layer name starts with.
        layers: the layers the method will prune; only these are permuted.
        stats: calibration statistics by layer name; missing when the method needs none.
        hidden: one window of the block's input (1, seqlen, hidden), for its shape and dtype.
        search: finds the permutation from (scores, pattern, block, ties).

    Returns:
        One record per layer in ``layers``: ``{"applied": True, "folded_into": [...],
        "kept_score_gain": ...}``, or ``{"applied": False, "reason": ...}``. A producer whose
        rows moved records the consumer it followed under ``"rows_follow"``.
    """
    records: dict[str, dict[str, Any]] = {}
    proposals: dict[str, list[Fold]] = {}
    for layer in layers:
        proposal = propose_folds(block, prefix, layer, hidden.shape[-1], pattern.m)
        if isinstance(proposal, str):
            records[layer.name] = {"applied": False, "reason": proposal}
        else:
            proposals[layer.name] = proposal
    if not proposals:
        return records
    check = _ExactnessCheck(block, call, hidden, [folds[0].consumer for folds in proposals.values()])
    for name, folds in proposals.items():
        records[name] = _permute_layer(folds, stats.get(name), method, pattern, check, search)
    for name, record in list(records.items()):
        for producer in record.get("folded_into", []):
            if producer in records:
                records[producer] = {**records[producer], "rows_follow": name}
    return records


__all__ = ["permute_block", "permute_stats"]
