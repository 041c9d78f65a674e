"""Grids on disk: one safetensors file of every quantized layer's scales (and zero points).

Written beside a quantized checkpoint as ``quantization.safetensors`` (the dense weights stay
loadable by any transformers tool; the grid is what packing to integers and checking need), and
per block into a run's resume progress. The scheme and each layer's width ride in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from eggs_ptp.errors import reading
from eggs_ptp.quant.grid import Grid, QuantScheme

GRID_FILE = "quantization.safetensors"


def save_grids(path: Path, grids: dict[str, Grid]) -> None:
    """Write ``grids`` (layer name -> grid, all of one scheme) to ``path``."""
    schemes = {grid.scheme for grid in grids.values()}
    if len(schemes) != 1:
        raise ValueError(f"a grid file holds grids of one scheme, got {len(schemes)}")
    tensors = {key: value.cpu() for name, grid in grids.items() for key, value in grid.tensors(name).items()}
    metadata = {
        "format": "pt",
        "quantization": json.dumps(schemes.pop().to_dict()),
        "columns": json.dumps({name: grid.cols for name, grid in grids.items()}),
    }
    save_file(tensors, str(path), metadata=metadata)


def load_grids(path: Path) -> dict[str, Grid]:
    """The grids of a file written by :func:`save_grids`, each checked against its scheme."""
    with reading(path), safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if "quantization" not in metadata or "columns" not in metadata:
            raise ValueError(f"{path} is not an eggs-ptp grid file (its metadata lacks the scheme)")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    scheme = QuantScheme.from_dict(json.loads(metadata["quantization"]))
    columns = json.loads(metadata["columns"])
    return {name: Grid.from_tensors(scheme, name, tensors, cols) for name, cols in columns.items()}


__all__ = ["GRID_FILE", "load_grids", "save_grids"]
