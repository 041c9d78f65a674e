"""Grids on disk: one safetensors file of every quantized layer's scales (and zero points).

Written beside a quantized checkpoint as ``quantization.safetensors`` (the dense weights stay
loadable by any transformers tool; the grid is what packing to integers and checking need), and
per block into a run's resume progress. Each grid's scheme and width ride in the metadata
(``schemes``; ``quantization`` holds the pruned layers' scheme, all that files before the output
head could be rounded held).
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
    """Write ``grids`` (layer name -> grid; the first one's scheme is the file's ``quantization``) to ``path``."""
    if not grids:
        raise ValueError("a grid file holds at least one grid")
    tensors = {key: value.cpu() for name, grid in grids.items() for key, value in grid.tensors(name).items()}
    metadata = {
        "format": "pt",
        "quantization": json.dumps(next(iter(grids.values())).scheme.to_dict()),
        "schemes": json.dumps({name: grid.scheme.to_dict() for name, grid in grids.items()}),
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
    schemes = {
        name: QuantScheme.from_dict(record) for name, record in json.loads(metadata.get("schemes", "{}")).items()
    }
    columns = json.loads(metadata["columns"])
    return {name: Grid.from_tensors(schemes.get(name, scheme), name, tensors, cols) for name, cols in columns.items()}


__all__ = ["GRID_FILE", "load_grids", "save_grids"]
