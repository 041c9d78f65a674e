"""Perplexity over the first non-overlapping windows of a token stream.

Each window begins with the tokenizer's sequence start (a BOS, or nothing), as calibration windows do,
followed by the next ``seqlen - len(start)`` text tokens; it is scored on its own (no carried context)
with the loss transformers computes for ``labels=input_ids``, so its first position is never a target.
Perplexity is ``exp`` of the mean window loss. Context length, window count, token count (window
tokens, ``windows x seqlen``, the sequence start included) and the sequence start travel with every
number, because perplexity depends on them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from eggs_ptp.data import NO_START, DataError, SequenceStart


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    mean_loss: float
    seqlen: int
    windows: int
    tokens: int
    text: str
    sequence_start: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "sequence_start": list(self.sequence_start)}


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    seqlen: int,
    windows: int | None = None,
    text: str = "",
    progress: bool = True,
    start: SequenceStart = NO_START,
) -> PerplexityResult:
    """Perplexity of ``model`` on the first ``windows`` windows of ``seqlen`` tokens (all when None),
    each ``start`` followed by text from ``tokens``."""
    if windows is not None and windows < 1:
        raise DataError(f"the number of evaluation windows must be at least 1, got {windows}")
    if seqlen < 1:
        raise DataError(f"the evaluation context length must be at least 1 token, got {seqlen}")
    length = start.text_length(seqlen)
    available = tokens.numel() // length
    if available == 0:
        raise DataError(
            f"evaluation text has {tokens.numel()} tokens, shorter than one window of {length} text tokens; "
            "give more text or a smaller --seqlen"
        )
    count = available if windows is None else min(windows, available)
    if windows is not None and windows > available:
        raise DataError(f"evaluation text holds {available} windows of {seqlen} tokens, not {windows}")
    device = next(model.parameters()).device
    batch = start.prepend(tokens[: count * length].view(count, length))
    losses = []
    for window in tqdm(batch, desc="perplexity", disable=not progress, leave=False):
        output = model(input_ids=window.unsqueeze(0).to(device), labels=window.unsqueeze(0).to(device), use_cache=False)
        losses.append(float(output.loss))
    mean_loss = sum(losses) / len(losses)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"the evaluation loss is {mean_loss}: the model outputs NaN/Inf")
    return PerplexityResult(math.exp(mean_loss), mean_loss, seqlen, count, count * seqlen, text, start.tokens)


__all__ = ["PerplexityResult", "perplexity"]
