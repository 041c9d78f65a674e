"""Block reconstruction: train a pruned block's kept weights so its outputs match the dense block's.

The layer-wise updates (OBS, the least-squares re-fit) match each layer's outputs on its own inputs;
the error they leave compounds through the block's attention and nonlinearities. Here the masks stay
fixed and the kept weights of every layer in the block are trained together by Adam against the
dense block's outputs (as in BRECQ and EBFT), on the inputs the block sees inside the already pruned
model, so the block also absorbs part of the error of the blocks before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BlockReconstruction:
    """Args:
    epochs: most passes over the training windows. One costs about three plain forwards over
        them (forward and backward), and the per-block budget is small: keep it to a few.
    learning_rate: Adam's; each step moves a kept weight by about this much, whatever the loss scale.
        1e-3 measured best-but-safe on SmolLM2-135M blocks (3e-3 fails on tiny random ones, 1e-2 on both).
    holdout: the windows held out for early stopping, the last ones: a fraction of the windows or a
        count; at least one and at most all but one when there are two or more windows.
    patience: epochs without a held-out improvement before stopping.
    seed: the order of the training windows in each epoch.
    """

    epochs: int = 2
    learning_rate: float = 1e-3
    holdout: float | int = 0.125
    patience: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer of at least 1, got {self.epochs!r}")
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)):
            raise ValueError(f"learning_rate must be a number, got {self.learning_rate!r}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)):
            raise ValueError(f"holdout must be a fraction in (0, 1) or a count of windows, got {self.holdout!r}")
        if isinstance(self.holdout, int) and self.holdout < 1:
            raise ValueError(f"holdout must hold out at least 1 window, got {self.holdout}")
        if isinstance(self.holdout, float) and not 0 < self.holdout < 1:
            raise ValueError(f"holdout as a fraction must lie in (0, 1), got {self.holdout}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience must be an integer of at least 1, got {self.patience!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def held_out(self, windows: int) -> int:
        """How many of ``windows`` are held out: none of a single window, which then also selects
        the weights it trained."""
        if windows < 2:
            return 0
        count = self.holdout if isinstance(self.holdout, int) else round(self.holdout * windows)
        return min(max(count, 1), windows - 1)

    def apply(
        self,
        forward: Forward,
        parameters: list[tuple[torch.nn.Parameter, torch.Tensor]],
        inputs: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
    ) -> dict[str, Any]:
        """Train the kept entries of ``parameters`` in place, each given with its bool kept mask of
        its own shape, so that ``forward(inputs[i])`` matches ``targets[i]``.

        ``forward`` runs the block on one window; it is called with gradients enabled, also inside
        ``torch.no_grad()``. Pruned entries stay +0.0 and the block's other parameters are only
        read. The weights left are the best seen on the held-out windows, the starting ones
        included, so the held-out error never rises. Returns a record of the run.
        """
        masks = _check(parameters, inputs, targets)
        weights = [parameter for parameter, _ in parameters]
        held = self.held_out(len(inputs))
        train = list(range(len(inputs) - held))
        selection = list(range(len(train), len(inputs))) if held else train
        scales = [_mean_square(target, i) for i, target in enumerate(targets)]

        def loss(i: int) -> torch.Tensor:
            """Window ``i``'s squared error relative to its target's mean square."""
            output = forward(inputs[i])
            if output.shape != targets[i].shape:
                raise ValueError(
                    f"forward returned shape {list(output.shape)} for window {i} but its target has "
                    f"shape {list(targets[i].shape)}"
                )
            target = targets[i].to(device=output.device, dtype=torch.float32)
            return (output.float() - target).pow(2).mean() / scales[i]

        def error(windows: list[int], epoch: int) -> float:
            """The mean relative squared error over ``windows``."""
            with torch.no_grad():
                value = sum(float(loss(i)) for i in windows) / len(windows)
            _check_finite(value, epoch)
            return value

        start = _snapshot(weights)
        requires_grad = [weight.requires_grad for weight in weights]
        # Adam steps an fp32 master copy: bf16 cannot hold steps much smaller than its weights.
        # Masters and their gradients contiguous: fused Adam silently mixes up the entries of a parameter
        # and a gradient whose strides differ (a Conv1D weight's mask is often a transposed view).
        masters = [_contiguous(weight.detach()).masked_fill_(~mask, 0.0) for weight, mask in zip(weights, masks)]
        keep = [_contiguous(mask) for mask in masks]  # multiplies faster than a bool mask selects
        fused = all(master.device.type in ("cpu", "cuda") for master in masters)  # 4x the for-loop Adam on CPU
        optimizer = torch.optim.Adam(masters, lr=self.learning_rate, fused=fused)
        generator = torch.Generator().manual_seed(self.seed)
        try:
            held_before = best = error(selection, 0)
            train_before = error(train, 0) if held else held_before
            best_epoch, best_weights, stale, epoch = 0, start, 0, 0
            for weight in weights:
                weight.requires_grad_(True)
            for epoch in range(1, self.epochs + 1):
                for position in torch.randperm(len(train), generator=generator).tolist():
                    with torch.enable_grad():
                        value = loss(train[position])
                        _check_finite(float(value.detach()), epoch)
                        if not value.requires_grad:
                            raise RuntimeError("forward's output has no gradient; does forward disable grad?")
                        grads = torch.autograd.grad(value, weights, allow_unused=True)  # for these weights only
                    with torch.no_grad():
                        for master, grad, kept in zip(masters, grads, keep):
                            # A pruned entry's gradient is zeroed, so Adam's moments there stay exactly 0
                            # and its step is 0 / (0 + eps): the entry stays +0.0.
                            master.grad = None if grad is None else grad.float().contiguous().mul_(kept)
                        optimizer.step()
                        for weight, master in zip(weights, masters):
                            weight.copy_(master)
                held_error = error(selection, epoch)
                if held_error < best:
                    best, best_epoch, best_weights, stale = held_error, epoch, _snapshot(weights), 0
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
            if best_epoch != epoch:
                _write(weights, best_weights)
            train_after = error(train, epoch) if held else best
        except BaseException:
            _write(weights, start)
            raise
        finally:
            for weight, flag in zip(weights, requires_grad):
                weight.requires_grad_(flag)
        return {
            "epochs": epoch,
            "best_epoch": best_epoch,
            "stopped_early": epoch < self.epochs,
            "train_windows": len(train),
            "held_out_windows": held,
            "held_out_error_before": math.sqrt(held_before) if held else None,
            "held_out_error_after": math.sqrt(best) if held else None,
            "train_error_before": math.sqrt(train_before),
            "train_error_after": math.sqrt(train_after),
        }


def _check(
    parameters: list[tuple[torch.nn.Parameter, torch.Tensor]],
    inputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Validate the arguments; returns the masks on their parameters' devices."""
    if len(inputs) == 0:
        raise ValueError("block reconstruction needs at least one input window, got none")
    if len(inputs) != len(targets):
        raise ValueError(f"got {len(inputs)} input windows but {len(targets)} targets")
    for i, (x, y) in enumerate(zip(inputs, targets)):
        if x.shape != y.shape:
            raise ValueError(f"input window {i} has shape {list(x.shape)} but its target has {list(y.shape)}")
    if not parameters:
        raise ValueError("block reconstruction needs at least one parameter to train, got none")
    masks, seen = [], set()
    for i, (parameter, mask) in enumerate(parameters):
        if id(parameter) in seen:
            raise ValueError(f"parameter {i} is given twice; pass it once with the union of its masks")
        seen.add(id(parameter))
        if not parameter.is_floating_point():
            raise ValueError(f"parameter {i} has dtype {parameter.dtype}; only floating-point weights can be trained")
        if mask.dtype != torch.bool or mask.shape != parameter.shape:
            raise ValueError(
                f"parameter {i}'s mask must be bool of its shape {list(parameter.shape)}, "
                f"got {mask.dtype} of shape {list(mask.shape)}"
            )
        mask = mask.to(parameter.device)
        if bool((parameter.detach()[~mask] != 0).any()):
            raise ValueError(f"parameter {i} has nonzero weights where its mask prunes them; apply the mask first")
        masks.append(mask)
    return masks


def _mean_square(target: torch.Tensor, i: int) -> float:
    value = float(target.detach().float().pow(2).mean())
    if not 0 < value < math.inf:
        raise ValueError(f"target window {i} has mean square {value}; it must be positive and finite")
    return value


def _check_finite(value: float, epoch: int) -> None:
    if not math.isfinite(value):
        kind = "NaN" if math.isnan(value) else "Inf"
        raise RuntimeError(
            f"{kind} in the block reconstruction loss at epoch {epoch}; lower learning_rate, or load in float32"
        )


def _contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous fp32 copy."""
    return tensor.to(torch.float32, memory_format=torch.contiguous_format, copy=True)


def _snapshot(weights: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [weight.detach().clone() for weight in weights]


def _write(weights: list[torch.nn.Parameter], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for weight, value in zip(weights, values):
            weight.copy_(value)


__all__ = ["BlockReconstruction", "Forward"]
