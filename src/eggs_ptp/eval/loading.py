"""Load what ``eggs-ptp eval`` scores: a dense model, a pruned checkpoint, or a compact one.

A compact folder (``eggs-ptp pack``) holds values and bitmasks, not the weights transformers
expects, so ``from_pretrained`` would start from random weights; it is decoded by
:func:`eggs_ptp.formats.compact.load_compact` instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from eggs_ptp.formats.compact import COMPACT_FILE, load_compact
from eggs_ptp.models.loading import LoadedModel, load_model


def load_evaluable(spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A model and tokenizer from a short name, hub id, checkpoint folder or compact folder."""
    folder = Path(spec).expanduser()
    if (folder / COMPACT_FILE).is_file():
        return LoadedModel(load_compact(folder, dtype), AutoTokenizer.from_pretrained(folder), spec, str(folder), None)
    return load_model(spec, dtype)


__all__ = ["load_evaluable"]
