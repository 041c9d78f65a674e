"""A read-only pass through the dense model, block by block, for decisions that need every block's
statistics before the first one is pruned (such as OWL's per-block sparsity)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from eggs_ptp.models.layers import PrunableLinear, find_linears
from eggs_ptp.stats import LayerStats
from eggs_ptp.walk.capture import BlockCall
from eggs_ptp.walk.sequential import run_block

BlockMeasure = Callable[[list[tuple[PrunableLinear, LayerStats]]], float]


@torch.no_grad()
def survey_blocks(
    blocks: nn.ModuleList,
    prefix: str,
    calls: list[BlockCall],
    hidden: list[torch.Tensor],
    measure: BlockMeasure,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    progress: bool = True,
) -> list[float]:
    """``measure`` of every block's linear layers and their input statistics, on dense activations.

    ``hidden`` is left untouched; the pass carries its own copy forward.
    """
    values = []
    for index in tqdm(range(len(blocks)), desc="survey", disable=not progress):
        layers = find_linears(blocks[index], f"{prefix}.{index}", include, exclude)
        stats = [(layer, LayerStats(layer.in_features)) for layer in layers]
        handles = [
            layer.module.register_forward_hook(lambda module, inputs, output, s=layer_stats: s.add(inputs[0]))
            for layer, layer_stats in stats
        ]
        try:
            hidden = run_block(blocks[index], calls[index], hidden, index, "survey")
        finally:
            for handle in handles:
                handle.remove()
        values.append(measure(stats) if stats else 0.0)
    return values
