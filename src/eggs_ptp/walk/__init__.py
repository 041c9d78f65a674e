"""The sequential layer walk: captures block inputs once, then prunes block after block."""

from eggs_ptp.walk.capture import BlockCall, capture_block_inputs
from eggs_ptp.walk.sequential import (
    BlockAccess,
    InMemory,
    LayerReport,
    NonFiniteActivationError,
    walk_and_prune,
)
from eggs_ptp.walk.survey import survey_blocks

__all__ = [
    "BlockAccess",
    "BlockCall",
    "InMemory",
    "LayerReport",
    "NonFiniteActivationError",
    "capture_block_inputs",
    "survey_blocks",
    "walk_and_prune",
]
