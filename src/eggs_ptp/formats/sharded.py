"""Write a checkpoint pruned block by block as a standard sharded safetensors folder.

One shard per decoder block (the pruned tensors, under the source checkpoint's key names), then
everything else copied from the source in the compute dtype in shards of at most 64 MiB (a larger
tensor alone), plus ``model.safetensors.index.json``; ``from_pretrained`` loads it like any
sharded checkpoint. Memory holds one shard's tensors at a time.
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
REST_SHARD_BYTES = 2**26  # 64 MiB


def _shard_name(number: int, total: int) -> str:
    return f"model-{number:05d}-of-{total:05d}.safetensors"


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _rest_groups(lazy: LazyModel, keys: list[str]) -> list[list[str]]:
    """Split the tensors outside the blocks into shards of at most ``REST_SHARD_BYTES`` (a larger
    tensor, such as the embedding, alone), sized from the file headers without reading data."""
    groups: list[list[str]] = []
    size = REST_SHARD_BYTES
    for key in keys:
        with safe_open(str(lazy.checkpoint.folder / lazy.checkpoint.weight_map[key]), framework="pt") as handle:
            numel = 1
            for extent in handle.get_slice(key).get_shape():
                numel *= extent
        nbytes = numel * lazy.dtype.itemsize
        if size + nbytes > REST_SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    return groups


def write_sharded(folder: Path, lazy: LazyModel, block_files: list[Path], progress: bool = True) -> None:
    """Write the pruned blocks (one safetensors file each, keyed by model parameter names) and the
    rest of ``lazy``'s source checkpoint into ``folder``."""
    block_keys: dict[Path, dict[str, list[str]]] = {}  # model-side names -> the checkpoint's
    for path in block_files:
        with safe_open(str(path), framework="pt") as handle:
            block_keys[path] = {key: lazy.stored_keys(key) for key in handle.keys()}
    written = {renamed for keys in block_keys.values() for names in keys.values() for renamed in names}
    rest = _rest_groups(lazy, [key for key in lazy.checkpoint.weight_map if key not in written])
    total = len(block_files) + len(rest)
    weight_map: dict[str, str] = {}
    number = 0
    for path in tqdm(block_files, desc="write shards", disable=not progress, leave=False):
        number += 1
        name, keys = _shard_name(number, total), block_keys[path]
        if all([key] == renamed for key, renamed in keys.items()):
            _link_or_copy(path, folder / name)  # already under the checkpoint's names
        else:
            with safe_open(str(path), framework="pt") as handle:
                stored = {k: v for key in keys for k, v in lazy.stored(key, handle.get_tensor(key)).items()}
            save_file(stored, str(folder / name), metadata=_METADATA)
        weight_map.update({renamed: name for names in keys.values() for renamed in names})
    for group in rest:  # one shard in memory at a time: safetensors serialises through a bytes copy
        number += 1
        name = _shard_name(number, total)
        tensors = {key: lazy.checkpoint.read(key) for key in group}
        save_file(
            {key: t.to(lazy.dtype) if t.is_floating_point() else t for key, t in tensors.items()},
            str(folder / name),
            metadata=_METADATA,
        )
        weight_map.update({key: name for key in group})
    size = sum((folder / name).stat().st_size for name in set(weight_map.values()))
    index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


__all__ = ["REST_SHARD_BYTES", "write_sharded"]
