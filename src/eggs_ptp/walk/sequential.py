"""Prune decoder blocks in order, each calibrated on the outputs of the already-pruned blocks.

Per block: one forward collects every prunable layer's input statistics (skipped when the method
needs none); the method prunes each layer; a second forward through the pruned block produces the
next block's inputs and measures each layer's reconstruction error ``||WX - W'X|| / ||WX||`` on
the inputs it sees inside the pruned model (the first ``ERROR_WINDOWS`` windows). With ``permute``,
layers whose input permutation folds exactly into their producers are permuted between the
statistics pass and pruning
(:mod:`eggs_ptp.permute`). The walk knows nothing about methods beyond
:class:`~eggs_ptp.methods.Method`'s ``prune`` and its needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from eggs_ptp.methods import Method
from eggs_ptp.models.experts import ROUTED, ExpertGroup, ExpertMatrix
from eggs_ptp.models.layers import Prunable, PrunableLinear, find_layers
from eggs_ptp.pattern import Pattern
from eggs_ptp.permute import permute_block
from eggs_ptp.stats import LayerStats
from eggs_ptp.walk.activations import ActivationStore
from eggs_ptp.walk.block import (
    BlockAccess,
    BlockCall,
    ErrorMeter,
    InMemory,
    LayerReport,
    NonFiniteActivationError,
    block_placement,
    non_finite_kind,
    run_block,
)
from eggs_ptp.walk.distributed import Ranks

log = logging.getLogger(__name__)


# Reconstruction error is measured on this many calibration windows: a dense re-computation of
# every layer on all of them would cost about as much as the block forward itself.
ERROR_WINDOWS = 8

EXPERTS_NOT_PERMUTED = "expert matrices are not permuted: no exact fold is implemented for fused experts"


def _skip_reason(layer: Prunable, pattern: Pattern) -> str | None:
    if pattern.structured and layer.in_features % pattern.m:
        return f"input dimension {layer.in_features} is not divisible by M = {pattern.m}"
    return None


def prunable_layers(
    blocks: Sequence[nn.Module],
    prefix: str,
    pattern: Pattern,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    experts: str = ROUTED,
) -> int:
    """How many layers of ``blocks`` the walk would prune, known from shapes alone (meta tensors
    too), so that a run that could prune nothing fails before any forward."""
    return sum(
        _skip_reason(layer, pattern) is None
        for index, block in enumerate(blocks)
        for layer in find_layers(block, f"{prefix}.{index}", include, exclude, experts).prunable
    )


def _calibrate(
    block: nn.Module,
    index: int,
    call: BlockCall,
    hidden: ActivationStore,
    targets: list[Prunable],
    stats: dict[str, LayerStats],
    ranks: Ranks | None,
) -> None:
    """Add every target's inputs over the windows to its statistics (summed over ranks)."""
    handles = [layer.observe_inputs(stats[layer.name].add) for layer in targets]
    try:
        run_block(block, call, hidden, index, "calibration")
    finally:
        for handle in handles:
            handle.remove()
    if ranks:
        ranks.reduce_stats({layer.name: stats[layer.name] for layer in targets})


def _fresh_stats(layers: list[Prunable], method: Method, device: torch.device) -> dict[str, LayerStats]:
    return {layer.name: LayerStats(layer.in_features, method.needs_hessian).to(device) for layer in layers}


def _starved(groups: list[ExpertGroup], targets: list[Prunable], stats: dict[str, LayerStats]) -> list[Prunable]:
    """Expert matrices no calibration token was routed to, now marked to see every token instead."""
    starved = [layer for layer in targets if isinstance(layer, ExpertMatrix) and stats[layer.name].tokens == 0]
    for layer in starved:
        layer.group.every_token.add(layer.expert)
    return starved


@torch.no_grad()
def _prune_block(
    block: nn.Module,
    index: int,
    prefix: str,
    call: BlockCall,
    hidden: ActivationStore,
    method: Method,
    pattern: Pattern,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    permute: bool = False,
    ranks: Ranks | None = None,
    experts: str = ROUTED,
) -> tuple[ActivationStore, list[LayerReport]]:
    found = find_layers(block, prefix, include, exclude, experts)
    reports = {
        layer.name: LayerReport(layer.name, tuple(layer.weight.shape), layer.transposed) for layer in found.prunable
    }
    reports.update({kept.name: LayerReport(kept.name, kept.shape, False, skipped=kept.reason) for kept in found.dense})
    targets = []
    for layer in found.prunable:
        reason = _skip_reason(layer, pattern)
        if reason:
            reports[layer.name].skipped = reason
            log.warning("skipping %s: %s", layer.name, reason)
        else:
            targets.append(layer)

    stats: dict[str, LayerStats] = {}
    if method.needs_calibration and targets:
        device = block_placement(block)[0]  # accumulate where the activations are, in fp64
        stats = _fresh_stats(targets, method, device)
        _calibrate(block, index, call, hidden, targets, stats, ranks)
        for group in found.groups:
            if ranks:
                ranks.reduce_counts(group.routed)
        starved = _starved(found.groups, targets, stats)
        if starved:  # an expert no token visited learns from every token rather than from none
            routed = [group.routed.clone() for group in found.groups]  # the counts of the real routing
            stats.update(_fresh_stats(starved, method, device))
            _calibrate(block, index, call, hidden, starved, stats, ranks)
            for group, counts in zip(found.groups, routed):
                group.routed.copy_(counts)

    # The dense weights each layer's error is measured against: as the method saw them, permuted;
    # kept in the model's dtype, in which they are exact.
    references = {layer.name: layer.weight.detach().clone() for layer in targets}
    if ranks is None or ranks.is_writer:  # in a distributed run, rank 0 decides and broadcasts
        _prune_layers(block, prefix, targets, stats, method, pattern, call, hidden, permute, reports, references)
    if ranks:
        ranks.broadcast_module(block)
        ranks.broadcast_tensors(list(references.values()))
    meters = {layer.name: ErrorMeter(layer, references[layer.name]) for layer in targets}

    outputs = hidden.sibling(f"block-{index + 1:05d}")
    error_windows = ranks.local_count(ERROR_WINDOWS) if ranks else ERROR_WINDOWS
    handles = [layer.observe_outputs(meters[layer.name]) for layer in targets]
    try:
        run_block(block, call, (hidden[i] for i in range(min(error_windows, len(hidden)))), index, "output", outputs)
    finally:
        for handle in handles:
            handle.remove()
    run_block(block, call, (hidden[i] for i in range(error_windows, len(hidden))), index, "output", outputs)
    if ranks:
        ranks.reduce_meters(list(meters.values()))
    for name, meter in meters.items():
        reports[name].recon_error = meter.relative_error
    for layer in found.prunable:
        if isinstance(layer, ExpertMatrix):
            reports[layer.name].expert = layer.record(stats[layer.name].tokens if layer.name in stats else None)
    return outputs, list(reports.values())


def _prune_layers(
    block: nn.Module,
    prefix: str,
    targets: list[Prunable],
    stats: dict[str, LayerStats],
    method: Method,
    pattern: Pattern,
    call: BlockCall,
    hidden: ActivationStore,
    permute: bool,
    reports: dict[str, LayerReport],
    references: dict[str, torch.Tensor],
) -> None:
    linears = [layer for layer in targets if isinstance(layer, PrunableLinear)]
    if permute and linears:  # after calibration, before pruning: the error meter sees permuted weights
        device, dtype = block_placement(block)
        window = hidden[0].to(device=device, dtype=dtype)
        for name, record in permute_block(
            block, prefix, linears, stats, method, pattern, call.to(device), window
        ).items():
            reports[name].permutation = record
    if permute:
        for layer in targets:
            if isinstance(layer, ExpertMatrix):
                reports[layer.name].permutation = {"applied": False, "reason": EXPERTS_NOT_PERMUTED}
    for layer in targets:
        started = time.perf_counter()
        references[layer.name] = layer.weight.detach().clone()
        dense = layer.weight.float().contiguous()
        result = method.prune(dense, stats.get(layer.name), pattern)
        kind = non_finite_kind(result.weight)
        if kind:
            raise NonFiniteActivationError(f"{kind} in the pruned weights of {layer.name}")
        layer.set_weight(result.weight)
        report = reports[layer.name]
        report.pattern = str(pattern)
        report.seconds = time.perf_counter() - started
        report.kept_fraction = float(result.mask.float().mean())
        report.settings = result.settings


BlockDone = Callable[[int, list[LayerReport], ActivationStore], None]


def walk_and_prune(
    blocks: nn.ModuleList,
    prefix: str,
    calls: list[BlockCall],
    hidden: ActivationStore,
    method: Method,
    pattern: Pattern | Sequence[Pattern],
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    progress: bool = True,
    on_block: BlockDone | None = None,
    permute: bool = False,
    access: BlockAccess | None = None,
    start: int = 0,
    ranks: Ranks | None = None,
    experts: str = ROUTED,
) -> list[LayerReport]:
    """Prune blocks ``start``, ``start + 1``, ... in order; return one report per linear layer found.

    Args:
        hidden: the inputs of block ``start``, one window each; released as the walk moves on.
        pattern: one pattern for every block, or one per block (a non-uniform allocation).
        on_block: called after each block with its reports and the next block's inputs, while the
            block is still loaded (to persist progress).
        permute: first permute the input channels of layers where the permutation folds exactly
            into the layers producing them (:func:`eggs_ptp.permute.permute_block`).
        access: loads and unloads block weights around each block (a lazily opened checkpoint).
        ranks: the processes sharing the calibration windows, when distributed.
        experts: how expert matrices of mixture-of-experts blocks are calibrated
            (:data:`~eggs_ptp.models.experts.EXPERT_CALIBRATIONS`).
    """
    access = access or InMemory()
    reports: list[LayerReport] = []
    per_block = list(pattern) if isinstance(pattern, Sequence) else [pattern] * len(blocks)
    if len(per_block) != len(blocks):
        raise ValueError(f"got {len(per_block)} block patterns for {len(blocks)} blocks")
    label = pattern if isinstance(pattern, Pattern) else "per-block"
    bar = tqdm(
        range(start, len(blocks)),
        desc=f"prune {method.name} {label}",
        disable=not progress,
        initial=start,
        total=len(blocks),
    )
    for index in bar:
        access.load(index)
        outputs, block_reports = _prune_block(
            blocks[index],
            index,
            f"{prefix}.{index}",
            calls[index],
            hidden,
            method,
            per_block[index],
            include,
            exclude,
            permute,
            ranks,
            experts,
        )
        hidden.release()
        hidden = outputs
        reports.extend(block_reports)
        if on_block:
            on_block(index, block_reports, hidden)
        access.unload(index)
    hidden.release()
    return reports


__all__ = ["ERROR_WINDOWS", "BlockDone", "prunable_layers", "walk_and_prune"]
