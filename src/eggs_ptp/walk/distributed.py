"""Data-parallel calibration over ``torch.distributed`` (gloo on CPU, NCCL on GPU, started by
``torchrun``).

Each rank runs the block forwards on its share of the calibration windows. The statistics the
methods read are sums over tokens, kept in fp64 until read (:mod:`eggs_ptp.stats`), so an
all-reduce gives every rank the single-process values: the order of an fp64 sum moves it far
below what its fp32 rounding keeps, and the pruned model matches one process bit for bit (for
the Hessian methods, at the same thread count: MKL's Cholesky factor depends on it). Rank 0 then
prunes and broadcasts the block, so every rank continues with identical weights, and only rank 0
writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from eggs_ptp.stats import LayerStats
from eggs_ptp.walk.block import ErrorMeter

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the process group.

    Args:
        device: where collectives run (NCCL reduces CUDA tensors only; gloo CPU tensors).
    """

    rank: int
    world: int
    device: torch.device

    @classmethod
    def from_environment(cls, device: torch.device | str = "cpu") -> "Ranks | None":
        """Join the group ``torchrun`` describes in the environment; None when not launched by it."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        device = torch.device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world])

    def local_count(self, first: int) -> int:
        """How many of this rank's items are among the first ``first`` overall."""
        return len(range(self.rank, first, self.world))

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        on_device = tensor.to(self.device)
        dist.all_reduce(on_device)
        tensor.copy_(on_device)

    def reduce_stats(self, stats: dict[str, LayerStats]) -> None:
        """Sum every layer's statistics over the ranks: their fp64 sums, before anything rounds them to fp32."""
        for layer_stats in stats.values():
            for tensor in layer_stats.sums():
                self._all_reduce(tensor)
            tokens = torch.tensor([layer_stats.tokens], dtype=torch.float64)
            self._all_reduce(tokens)
            layer_stats.tokens = int(tokens.item())

    def reduce_counts(self, counts: torch.Tensor) -> None:
        """Sum integer counts (tokens routed to each expert) over the ranks, in place."""
        self._all_reduce(counts)

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        for tensor in tensors:
            on_device = tensor.to(self.device).contiguous()
            dist.broadcast(on_device, src=0)
            tensor.copy_(on_device)

    def broadcast_module(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers of ``module``."""
        self.broadcast_tensors([*module.parameters(), *module.buffers()])

    def reduce_meters(self, meters: list[ErrorMeter]) -> None:
        sums = torch.tensor([value for meter in meters for value in (meter.diff, meter.ref)], dtype=torch.float64)
        self._all_reduce(sums)
        for number, meter in enumerate(meters):
            meter.diff, meter.ref = float(sums[2 * number]), float(sums[2 * number + 1])

    def barrier(self) -> None:
        dist.barrier()


__all__ = ["Ranks"]
