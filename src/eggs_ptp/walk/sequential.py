"""Prune decoder blocks in order, each calibrated on the outputs of the already-pruned blocks.

Per block: one forward collects every prunable layer's input statistics (skipped when the method
needs none); the method prunes each layer; a second forward through the pruned block produces the
next block's inputs and measures each layer's reconstruction error ``||WX - W'X|| / ||WX||`` on
the inputs it sees inside the pruned model (the first ``ERROR_WINDOWS`` windows). With ``permute``,
layers whose input permutation folds exactly into their producers are permuted between the
statistics pass and pruning
(:mod:`eggs_ptp.permute`). A method fitting the dense model's outputs has the walk carry a second
stream, the dense model's activations, beside the pruned model's: each window runs through the
dense block on it too, and its layers' inputs are paired token for token with the pruned ones. A
sequential method calibrates and prunes one group of layers at a time (:func:`layer_groups`), each
on the block as pruned so far. The walk knows nothing about methods beyond
:class:`~eggs_ptp.methods.Method`'s ``prune`` and its needs.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from eggs_ptp.methods import Method
from eggs_ptp.models.experts import ROUTED, ExpertMatrix
from eggs_ptp.models.layers import Prunable, PrunableLinear, find_layers
from eggs_ptp.pattern import Pattern
from eggs_ptp.permute import permute_block
from eggs_ptp.stats import LayerStats
from eggs_ptp.walk.activations import ActivationStore, Streams
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
    streams: Streams,
    targets: list[Prunable],
    stats: dict[str, LayerStats],
    ranks: Ranks | None,
    twin: nn.Module | None = None,
    dense_outputs: ActivationStore | None = None,
    outputs: ActivationStore | None = None,
) -> None:
    """Add every target's inputs over the windows to its statistics (summed over ranks), and the
    block's outputs on the pruned stream to ``outputs`` when given (no dense stream only).

    With a dense stream, each window first runs through ``twin`` (the block with its dense
    weights) on the dense model's activations, so that every paired layer's statistics see its
    dense inputs beside its pruned ones, token for token; the twin's outputs, the next block's
    dense inputs, go to ``dense_outputs``.
    """
    paired = [layer for layer in targets if stats[layer.name].with_drift]
    if streams.dense is None or (not paired and dense_outputs is None):
        observers = [stats[layer.name].add for layer in targets]
        _observed_run(targets, observers, block, call, streams.pruned, index, "calibration", outputs)
    else:
        _calibrate_paired(block, index, call, streams, targets, stats, twin or block, paired, dense_outputs)
    if ranks:
        ranks.reduce_stats({layer.name: stats[layer.name] for layer in targets})


def _calibrate_paired(
    block: nn.Module,
    index: int,
    call: BlockCall,
    streams: Streams,
    targets: list[Prunable],
    stats: dict[str, LayerStats],
    twin: nn.Module,
    paired: list[Prunable],
    dense_outputs: ActivationStore | None,
) -> None:
    same = twin is block and streams.dense is streams.pruned  # the first block: one forward serves both
    queues: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in paired}
    twins = [_twin_of(layer, block, twin) for layer in paired]

    def observer(layer: Prunable) -> Callable[[torch.Tensor], None]:
        if layer.name not in queues:
            return stats[layer.name].add
        queue = queues[layer.name]
        return lambda x: stats[layer.name].add(x, x if same else queue.pop(0))

    for window in range(len(streams.pruned)):
        if not same:  # observers are attached per pass, so that neither pass feeds the other's
            _observed_run(
                twins,
                [queues[layer.name].append for layer in paired],
                twin,
                call,
                [streams.dense[window]],
                index,
                "dense calibration",
                dense_outputs,
            )
        _observed_run(
            targets,
            [observer(layer) for layer in targets],
            block,
            call,
            [streams.pruned[window]],
            index,
            "calibration",
            dense_outputs if same else None,
        )


def _observed_run(
    layers: list[Prunable],
    observers: list[Callable[[torch.Tensor], None]],
    block: nn.Module,
    call: BlockCall,
    windows: Iterable[torch.Tensor],
    index: int,
    stage: str,
    out: ActivationStore | None,
) -> None:
    handles = [layer.observe_inputs(observer) for layer, observer in zip(layers, observers)]
    try:
        run_block(block, call, windows, index, stage, out)
    finally:
        for handle in handles:
            handle.remove()


def _twin_of(layer: Prunable, block: nn.Module, twin: nn.Module) -> PrunableLinear:
    """The layer in ``twin``, a copy of ``block``, that ``layer`` is in ``block``."""
    if twin is block:
        return layer
    local = next(name for name, module in block.named_modules() if module is layer.module)
    return PrunableLinear(layer.name, twin.get_submodule(local))


def _fresh_stats(layers: list[Prunable], method: Method, device: torch.device) -> dict[str, LayerStats]:
    """Empty statistics; linear layers pair their inputs with the dense model's when the method asks.
    Expert matrices never pair: the two streams route different tokens to an expert."""
    return {
        layer.name: LayerStats(
            layer.in_features,
            method.needs_hessian,
            with_drift=method.needs_dense_stream and isinstance(layer, PrunableLinear),
        ).to(device)
        for layer in layers
    }


def _starved(targets: list[Prunable], stats: dict[str, LayerStats]) -> list[Prunable]:
    """Expert matrices no calibration token was routed to, now marked to see every token instead."""
    starved = [layer for layer in targets if isinstance(layer, ExpertMatrix) and stats[layer.name].tokens == 0]
    for layer in starved:
        layer.group.every_token.add(layer.expert)
    return starved


def layer_groups(
    block: nn.Module, index: int, call: BlockCall, window: torch.Tensor, targets: list[Prunable]
) -> list[list[Prunable]]:
    """``targets`` in the order the block computes them, grouped by the input they read: q/k/v,
    then o, then gate/up, then down for a Llama block; one expert parameter of every expert is one
    group. Found by watching one forward, so no family needs a table."""
    keys: dict[str, object] = {}
    order: list[object] = []
    alive: list[torch.Tensor] = []  # inputs stay referenced, so no two keys share a freed address

    def watch(layer: Prunable) -> Callable[[torch.Tensor], None]:
        def observe(x: torch.Tensor) -> None:
            if layer.name in keys:
                return
            if isinstance(layer, ExpertMatrix):
                key: object = (id(layer.group), layer.parameter)
            else:
                alive.append(x)
                key = (x.data_ptr(), tuple(x.shape), x.stride())
            keys[layer.name] = key
            if key not in order:
                order.append(key)

        return observe

    handles = [layer.observe_inputs(watch(layer)) for layer in targets]
    try:
        run_block(block, call, [window], index, "ordering")
    finally:
        for handle in handles:
            handle.remove()
    for layer in targets:  # not called on this window (an expert no token of it visited): by its rule, else last
        if layer.name not in keys:
            keys[layer.name] = (id(layer.group), layer.parameter) if isinstance(layer, ExpertMatrix) else layer.name
            if keys[layer.name] not in order:
                order.append(keys[layer.name])
    return [[layer for layer in targets if keys[layer.name] == key] for key in order]


@torch.no_grad()
def _prune_block(
    block: nn.Module,
    index: int,
    prefix: str,
    call: BlockCall,
    streams: Streams,
    method: Method,
    pattern: Pattern,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    permute: bool = False,
    ranks: Ranks | None = None,
    experts: str = ROUTED,
) -> tuple[Streams, list[LayerReport]]:
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

    dense_outputs = streams.dense.sibling(f"dense-block-{index + 1:05d}") if streams.dense is not None else None
    # The dense weights each layer's error is measured against: as the method saw them, permuted;
    # kept in the model's dtype, in which they are exact.
    references = {layer.name: layer.weight.detach().clone() for layer in targets}
    stats: dict[str, LayerStats] = {}

    def prune(layers: list[Prunable]) -> None:
        """In a distributed run, rank 0 decides and every rank takes its block."""
        if ranks is None or ranks.is_writer:
            _prune_layers(
                block, prefix, layers, stats, method, pattern, call, streams.pruned, permute, reports, references
            )
        if ranks:
            ranks.broadcast_module(block)

    # What block reconstruction matches: the dense model's outputs, or the dense block's on the pruned inputs.
    reference = None
    if method.reconstruct is not None and targets:
        if ranks:
            raise ValueError("block reconstruction trains on every calibration window in one process; drop --nproc")
        reference = dense_outputs if dense_outputs is not None else streams.pruned.sibling(f"dense-out-{index:05d}")
    if method.needs_calibration and targets:
        groups = layer_groups(block, index, call, streams.pruned[0], targets) if method.sequential else [targets]
        twin = copy.deepcopy(block) if dense_outputs is not None and len(groups) > 1 else block
        for number, group in enumerate(groups):  # each group calibrated on the block as pruned so far
            device = block_placement(block)[0]  # accumulate where the activations are, in fp64
            stats.update(_fresh_stats(group, method, device))
            counted = [expert_group.routed.clone() for expert_group in found.groups]
            first = number == 0
            outputs = reference if first and reference is not dense_outputs else None
            _calibrate(
                block, index, call, streams, group, stats, ranks, twin, dense_outputs if first else None, outputs
            )
            for expert_group, before in zip(found.groups, counted):
                if bool(before.any()):  # routed in an earlier group's pass already: count each token once
                    expert_group.routed.copy_(before)
                elif ranks:
                    ranks.reduce_counts(expert_group.routed)
            starved = _starved(group, stats)
            if starved:  # an expert no token visited learns from every token rather than from none
                routed = [expert_group.routed.clone() for expert_group in found.groups]  # the real routing's
                stats.update(_fresh_stats(starved, method, device))
                _calibrate(block, index, call, streams, starved, stats, ranks)
                for expert_group, counts in zip(found.groups, routed):
                    expert_group.routed.copy_(counts)
            prune(group)
        del twin
    else:
        prune(targets)
    if dense_outputs is not None and not len(dense_outputs):  # nothing calibrated: the block is still dense
        run_block(block, call, streams.dense, index, "dense output", dense_outputs)
    if reference is not None:
        _reconstruct(block, call, streams.pruned, reference, targets, method, reports)
        if reference is not dense_outputs:
            reference.release()
    if ranks:
        ranks.broadcast_tensors(list(references.values()))
    meters = {layer.name: ErrorMeter(layer, references[layer.name]) for layer in targets}

    hidden = streams.pruned
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
    return Streams(outputs, dense_outputs), list(reports.values())


def _reconstruct(
    block: nn.Module,
    call: BlockCall,
    inputs: ActivationStore,
    reference: ActivationStore,
    targets: list[Prunable],
    method: Method,
    reports: dict[str, LayerReport],
) -> None:
    """Train the block's pruned linear weights (their zeros fixed) towards ``reference``; expert
    matrices keep their layer-wise weights. The record goes into every trained layer's settings."""
    linears = [layer for layer in targets if isinstance(layer, PrunableLinear)]
    if not linears:
        return
    device, dtype = block_placement(block)
    placed = call.to(device)
    parameters = [(layer.module.weight, layer.module.weight.detach() != 0) for layer in linears]
    record = method.reconstruct.apply(
        lambda hidden: placed(block, hidden.to(device=device, dtype=dtype)), parameters, inputs, reference
    )
    for layer in linears:
        reports[layer.name].settings = {**(reports[layer.name].settings or {}), "block_reconstruction": record}


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
        report.grid = result.grid


BlockDone = Callable[[int, list[LayerReport], Streams], None]


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
    dense: ActivationStore | None = None,
) -> list[LayerReport]:
    """Prune blocks ``start``, ``start + 1``, ... in order; return one report per linear layer found.

    Args:
        hidden: the inputs of block ``start``, one window each; released as the walk moves on.
        dense: block ``start``'s inputs inside the dense model, for a method fitting the dense
            model's outputs; ``hidden`` itself when the walk starts at block 0.
        pattern: one pattern for every block, or one per block (a non-uniform allocation).
        on_block: called after each block with its reports and the next block's inputs (both
            streams), while the block is still loaded (to persist progress).
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
    if method.needs_dense_stream and dense is None:
        if start:
            raise ValueError(f"method {method.name} needs the dense model's inputs of block {start}")
        dense = hidden
    streams = Streams(hidden, dense if method.needs_dense_stream else None)
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
            streams,
            method,
            per_block[index],
            include,
            exclude,
            permute,
            ranks,
            experts,
        )
        streams.release()
        streams = outputs
        reports.extend(block_reports)
        if on_block:
            on_block(index, block_reports, streams)
        access.unload(index)
    streams.release()
    return reports


__all__ = ["ERROR_WINDOWS", "BlockDone", "layer_groups", "prunable_layers", "walk_and_prune"]
