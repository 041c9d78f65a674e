"""The selector interface: scores in, a kept mask obeying the pattern out."""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from eggs_ptp.pattern import Pattern


class Selector(Protocol):
    name: ClassVar[str]

    def select(self, scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        """Return a boolean mask (out, in), True = kept, for scores (out, in)."""
        ...
