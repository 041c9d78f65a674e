"""Capture what the model itself passes to each decoder block.

Nothing is rebuilt per family: masks, position ids, rotary embeddings and any other keyword
arguments are recorded from one real forward. They are recorded for every block, not only the
first, because some families (Gemma 2/3) give alternate blocks different attention masks. All
calibration windows have the same length and no padding, so those arguments are the same for
every window; only block 0's hidden states are captured per window, and that forward stops there.
The first window's forward stops after the last block, so nothing after the blocks (final norm,
LM head) ever runs: a lazily opened checkpoint never has to read them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from eggs_ptp.walk.activations import ActivationStore
from eggs_ptp.walk.block import BlockAccess, BlockCall


class _Captured(Exception):
    """Raised inside block 0 once its input is recorded, to skip the rest of the forward."""


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    if args:
        return args[0], BlockCall(tuple(args[1:]), dict(kwargs))
    rest = dict(kwargs)
    return rest.pop("hidden_states"), BlockCall((), rest, hidden_in_kwargs=True)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    blocks: nn.ModuleList,
    windows: torch.Tensor,
    progress: bool = True,
    store: ActivationStore | None = None,
    access: BlockAccess | None = None,
    device: torch.device | None = None,
) -> tuple[ActivationStore, list[BlockCall]]:
    """Run the model on each window (1, seqlen) and record block inputs.

    Args:
        store: where block 0's inputs go (memory in the model's dtype when None).
        access: loads each block before the first window's forward reaches it and unloads it after.
        device: where the token ids go [default: the device of the model's first parameter].

    Returns:
        Block 0's hidden states per window (each (1, seqlen, hidden)), and one :class:`BlockCall`
        per block.
    """
    store = store if store is not None else ActivationStore()
    device = device or next(model.parameters()).device
    calls: list[BlockCall | None] = [None] * len(blocks)
    first_window = True

    def before(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if index == 0 and not first_window:
                store.append(_split_hidden(args, kwargs)[0])
                raise _Captured
            state, call = _split_hidden(args, kwargs)
            if index == 0:
                store.append(state)
            calls[index] = call
            if access:
                access.load(index)

        return hook

    def after(index: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if access:
                access.unload(index)
            if index == len(blocks) - 1:
                raise _Captured

        return hook

    handles = [b.register_forward_pre_hook(before(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(after(i)) for i, b in enumerate(blocks)]
    try:
        for window in tqdm(windows, desc="capture calibration inputs", disable=not progress, leave=False):
            try:
                model(input_ids=window.unsqueeze(0).to(device), use_cache=False)
            except _Captured:
                pass
            first_window = False
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i, call in enumerate(calls) if call is None]
    if missing:
        raise RuntimeError(f"decoder blocks {missing} were never called by the model's forward")
    return store, calls  # type: ignore[return-value]


__all__ = ["capture_block_inputs"]
