"""Capture what the model itself passes to each decoder block.

Nothing is rebuilt per family: masks, position ids, rotary embeddings and any other keyword
arguments are recorded from one real forward. They are recorded for every block, not only the
first, because some families (Gemma 2/3) give alternate blocks different attention masks. All
calibration windows have the same length and no padding, so those arguments are the same for
every window; only block 0's hidden states are captured per window, and that forward stops there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class BlockCall:
    """Everything a block is called with apart from its hidden states."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    hidden_in_kwargs: bool = False

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_in_kwargs:
            output = block(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            output = block(hidden, *self.args, **self.kwargs)
        return output[0] if isinstance(output, (tuple, list)) else output


class _Captured(Exception):
    """Raised inside block 0 once its input is recorded, to skip the rest of the forward."""


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    if args:
        return args[0], BlockCall(tuple(args[1:]), dict(kwargs))
    rest = dict(kwargs)
    return rest.pop("hidden_states"), BlockCall((), rest, hidden_in_kwargs=True)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, windows: torch.Tensor, progress: bool = True
) -> tuple[list[torch.Tensor], list[BlockCall]]:
    """Run the model on each window (1, seqlen) and record block inputs.

    Returns:
        Block 0's hidden states per window (each (1, seqlen, hidden)), and one :class:`BlockCall`
        per block.
    """
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []
    calls: list[BlockCall | None] = [None] * len(blocks)
    stop_early = False

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            state, call = _split_hidden(args, kwargs)
            if index == 0:
                hidden.append(state.detach().clone())
            if calls[index] is None:
                calls[index] = call
            if index == 0 and stop_early:
                raise _Captured

        return hook

    handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for number, window in enumerate(
            tqdm(windows, desc="capture calibration inputs", disable=not progress, leave=False)
        ):
            stop_early = number > 0  # the first window runs through to record every block's call
            try:
                model(input_ids=window.unsqueeze(0).to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i, call in enumerate(calls) if call is None]
    if missing:
        raise RuntimeError(f"decoder blocks {missing} were never called by the model's forward")
    return hidden, calls  # type: ignore[return-value]
