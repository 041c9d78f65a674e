"""The selector interface: scores in, a kept mask obeying the pattern out; and selection in row
chunks, so a large layer's selection never holds more than a few chunk-sized temporaries."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from eggs_ptp.pattern import Pattern


class Selector(Protocol):
    name: ClassVar[str]

    def select(self, scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        """Return a boolean mask (out, in), True = kept, for scores (out, in)."""
        ...

    def rows_together(self, pattern: Pattern) -> int:
        """How many consecutive rows are selected together (1 when each row is on its own)."""
        ...


# Rows per chunk are sized so that one fp32 temporary holds about this many elements (16 MiB).
CHUNK_ELEMENTS = 2**22


def select_in_chunks(
    selector: Selector, scores: torch.Tensor, pattern: Pattern, chunk_elements: int = CHUNK_ELEMENTS
) -> torch.Tensor:
    """``selector.select(scores, pattern)``, computed on blocks of whole row groups.

    Selection never couples rows of different groups, so the mask is identical; a 28672 x 8192
    layer then needs about 16 MiB per temporary instead of 1 GiB.
    """
    together = selector.rows_together(pattern)
    rows = max(together, chunk_elements // max(scores.shape[1], 1) // together * together)
    if rows >= scores.shape[0]:
        return selector.select(scores, pattern)
    return torch.cat([selector.select(chunk, pattern) for chunk in scores.split(rows)])


__all__ = ["CHUNK_ELEMENTS", "Selector", "select_in_chunks"]
