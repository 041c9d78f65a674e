"""The sequential layer walk: captures block inputs once, then prunes block after block."""

from eggs_ptp.walk.block import (
    BlockAccess,
    BlockCall,
    ErrorMeter,
    InMemory,
    LayerReport,
    NonFiniteActivationError,
    run_block,
)
from eggs_ptp.walk.capture import capture_block_inputs
from eggs_ptp.walk.sequential import prunable_layers, walk_and_prune
from eggs_ptp.walk.survey import survey_blocks

__all__ = [
    "BlockAccess",
    "BlockCall",
    "ErrorMeter",
    "InMemory",
    "LayerReport",
    "NonFiniteActivationError",
    "capture_block_inputs",
    "prunable_layers",
    "run_block",
    "survey_blocks",
    "walk_and_prune",
]
