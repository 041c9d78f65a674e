"""A read-only pass through the dense model, block by block, for decisions that need every block's
statistics before the first one is pruned (such as OWL's per-block sparsity)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from eggs_ptp.models.experts import ROUTED
from eggs_ptp.models.layers import Prunable, find_layers
from eggs_ptp.stats import LayerStats
from eggs_ptp.walk.activations import ActivationStore
from eggs_ptp.walk.block import BlockAccess, BlockCall, InMemory, run_block
from eggs_ptp.walk.distributed import Ranks

BlockMeasure = Callable[[list[tuple[Prunable, LayerStats]]], float]


@torch.no_grad()
def survey_blocks(
    blocks: nn.ModuleList,
    prefix: str,
    calls: list[BlockCall],
    hidden: ActivationStore,
    measure: BlockMeasure,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    progress: bool = True,
    access: BlockAccess | None = None,
    ranks: Ranks | None = None,
    experts: str = ROUTED,
) -> list[float]:
    """``measure`` of every block's linear layers and their input statistics, on dense activations.

    ``hidden`` is left untouched; the pass carries its own copy forward (beside it when on disk).
    """
    access = access or InMemory()
    values = []
    current = hidden
    for index in tqdm(range(len(blocks)), desc="survey", disable=not progress):
        access.load(index)
        layers = find_layers(blocks[index], f"{prefix}.{index}", include, exclude, experts).prunable
        stats = {layer.name: LayerStats(layer.in_features) for layer in layers}
        handles = [layer.observe_inputs(stats[layer.name].add) for layer in layers]
        following = current.sibling(f"survey-{index + 1:05d}")
        try:
            run_block(blocks[index], calls[index], current, index, "survey", following)
        finally:
            for handle in handles:
                handle.remove()
        if current is not hidden:
            current.release()
        current = following
        if ranks:
            ranks.reduce_stats(stats)
        values.append(measure([(layer, stats[layer.name]) for layer in layers]) if layers else 0.0)
        access.unload(index)
    current.release()
    return values


__all__ = ["survey_blocks"]
