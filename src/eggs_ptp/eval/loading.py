"""Load what ``eggs-ptp eval`` scores: a dense model, a pruned checkpoint, or a compact one.

A compact folder (``eggs-ptp pack``) holds values and bitmasks, not the weights transformers
expects, so ``from_pretrained`` would start from random weights; it is decoded by
:func:`eggs_ptp.formats.compact.load_compact` instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from eggs_ptp.formats.compact import COMPACT_FILE, load_compact
from eggs_ptp.models.loading import LoadedModel, load_model, load_tokenizer


def load_evaluable(spec: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False) -> LoadedModel:
    """A model and tokenizer from a short name, hub id, checkpoint folder or compact folder (compact
    folders of models that ship their own code are not supported)."""
    folder = Path(spec).expanduser()
    if (folder / COMPACT_FILE).is_file():
        return LoadedModel(load_compact(folder, dtype), load_tokenizer(folder), spec, str(folder), None)
    return load_model(spec, dtype, trust_remote_code=trust_remote_code)


__all__ = ["load_evaluable"]
