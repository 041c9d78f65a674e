"""The EGGS settings a per-layer search may choose from, so B and H need no hand tuning.

Every candidate meets its own guarantee (``EggsSelector.select`` checks it), so whichever wins,
the layer's mask is valid for the setting recorded. The caller's default comes first: on equal
reconstruction error the default is kept, then the cheaper setting (listed earlier) wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors.eggs import ENUMERATE_MAX_M, EggsSelector

# Tile heights tried, as multiples of M: from the tightest guarantee to the loosest.
TILE_FACTORS = (1, 4, 16, 64)


@dataclass(frozen=True)
class EggsSettingSearch:
    """Args:
    default: the setting the method would use without a search; always a candidate, tried first.
    """

    default: EggsSelector

    def candidates(self, pattern: Pattern) -> list[EggsSelector]:
        """The default, then repair and diagonal for B in 1..N and H in ``TILE_FACTORS`` x M.

        ``matching`` is tried only where it is enumerated exactly (H == M, M <= 6); elsewhere it
        runs one Hungarian solve per tile, too slow to try on every layer.
        """
        grid = [
            EggsSelector(rule, b, factor * pattern.m)
            for rule in ("repair", "diagonal")
            for b in range(1, pattern.n + 1)
            for factor in TILE_FACTORS
        ]
        if pattern.m <= ENUMERATE_MAX_M:
            grid += [EggsSelector("matching", b, pattern.m) for b in range(1, pattern.n + 1)]
        return [self.default] + [selector for selector in grid if selector != self.default]


__all__ = ["TILE_FACTORS", "EggsSettingSearch"]
