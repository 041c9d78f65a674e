"""Model adapters: loading any transformers causal LM, and finding its blocks and linear layers."""

from eggs_ptp.models.layers import (
    PrunableLinear,
    context_length,
    find_blocks,
    find_linears,
)
from eggs_ptp.models.loading import DEFAULT_MODEL, LoadedModel, ModelError, load_model

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelError",
    "PrunableLinear",
    "context_length",
    "find_blocks",
    "find_linears",
    "load_model",
]
