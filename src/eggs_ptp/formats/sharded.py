"""Write a checkpoint pruned block by block as a standard sharded safetensors folder.

One shard per decoder block (the pruned tensors, under the source checkpoint's key names) and one
for everything else, copied tensor by tensor from the source in the compute dtype, plus
``model.safetensors.index.json``; ``from_pretrained`` loads it like any sharded checkpoint. Memory
holds one shard's tensors at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from eggs_ptp.models.lazy import INDEX_FILE, LazyModel

_METADATA = {"format": "pt"}


def _shard_name(number: int, total: int) -> str:
    return f"model-{number:05d}-of-{total:05d}.safetensors"


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_sharded(folder: Path, lazy: LazyModel, block_files: list[Path], progress: bool = True) -> None:
    """Write the pruned blocks (one safetensors file each, keyed by model parameter names) and the
    rest of ``lazy``'s source checkpoint into ``folder``."""
    total = len(block_files) + 1
    weight_map: dict[str, str] = {}
    size = 0
    for number, path in enumerate(tqdm(block_files, desc="write shards", disable=not progress, leave=False), 1):
        name = _shard_name(number, total)
        with safe_open(str(path), framework="pt") as handle:
            keys = {key: lazy.key_for(key) for key in handle.keys()}
            if all(key == renamed for key, renamed in keys.items()):
                _link_or_copy(path, folder / name)  # already under the checkpoint's names
            else:
                save_file({keys[key]: handle.get_tensor(key) for key in keys}, str(folder / name), metadata=_METADATA)
        weight_map.update({renamed: name for renamed in keys.values()})
        size += (folder / name).stat().st_size
    rest_name = _shard_name(total, total)
    rest = {}
    for key in lazy.checkpoint.weight_map:
        if key not in weight_map:
            tensor = lazy.checkpoint.read(key)
            rest[key] = tensor.to(lazy.dtype) if tensor.is_floating_point() else tensor
    save_file(rest, str(folder / rest_name), metadata=_METADATA)
    weight_map.update({key: rest_name for key in rest})
    size += (folder / rest_name).stat().st_size
    index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
