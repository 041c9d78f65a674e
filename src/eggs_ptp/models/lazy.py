"""Open a safetensors checkpoint without loading it.

The model is built on the meta device (accelerate's ``init_empty_weights``); a module's
parameters are read from disk when it is materialised and dropped back to meta when it is
released, so memory holds one decoder block (plus the embedding) however large the model is.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from eggs_ptp.errors import read_json, reading
from eggs_ptp.memory import return_freed_memory
from eggs_ptp.models.conversion import (
    ConversionError,
    StoredPiece,
    gather_fused,
    is_fused_expert,
    matrices_shape,
    scatter_fused,
    stored_names,
    stored_pieces,
    swap_layout,
)
from eggs_ptp.models.loading import ModelError, check_weight_files, load_config, weights_signature

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class LazyCheckpoint:
    """The tensors of one safetensors checkpoint folder (single file or sharded with an index)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            record = read_json(index)
            if not isinstance(record, dict) or not isinstance(record.get("weight_map"), dict):
                raise ModelError(f"{index} has no weight_map; is it a safetensors index?")
            self.weight_map: dict[str, str] = record["weight_map"]
            check_weight_files(self.folder)
        elif (single := self.folder / SINGLE_FILE).is_file():
            with reading(single), safe_open(str(single), framework="pt") as handle:
                self.weight_map = {key: SINGLE_FILE for key in handle.keys()}
        else:
            raise ModelError(
                f"{self.folder} holds no safetensors weights; low-memory pruning reads safetensors "
                "(load the model once with transformers and save_pretrained it to convert)"
            )

    @property
    def files(self) -> list[Path]:
        return [self.folder / name for name in sorted(set(self.weight_map.values()))]

    @property
    def nbytes(self) -> int:
        """Size of the weight files on disk."""
        return sum(path.stat().st_size for path in self.files)

    def signature(self) -> dict[str, object]:
        return weights_signature(str(self.folder))

    def read(self, key: str) -> torch.Tensor:
        path = self.folder / self.weight_map[key]
        with reading(path), safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key)

    @cached_property
    def shapes(self) -> dict[str, list[int]]:
        """Every tensor's stored shape, from the file headers."""
        shapes = {}
        for path in self.files:
            with reading(path), safe_open(str(path), framework="pt") as handle:
                shapes.update({key: handle.get_slice(key).get_shape() for key in handle.keys()})
        return shapes

    def key_for(self, name: str, base_prefix: str) -> str | None:
        """The checkpoint key holding model parameter ``name``; checkpoints of the bare base model
        (GPT-2's) name parameters without the ``base_prefix.`` the causal-LM wrapper adds."""
        candidates = [name]
        if base_prefix and name.startswith(base_prefix + "."):
            candidates.append(name[len(base_prefix) + 1 :])
        return next((key for key in candidates if key in self.weight_map), None)


class LazyModel:
    """A meta-device causal LM whose modules load from a :class:`LazyCheckpoint` on demand.

    Args:
        dtype: compute dtype; floating tensors are cast to it as they load.
        device: where materialised modules live.
        trust_remote_code: run the Python code the model ships, when it has some.
    """

    def __init__(self, folder: Path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool = False) -> None:
        self.checkpoint = LazyCheckpoint(folder)
        self.dtype = dtype
        self.device = torch.device(device)
        config = load_config(folder, trust_remote_code)
        with init_empty_weights():
            self.model: PreTrainedModel = AutoModelForCausalLM.from_config(
                config, dtype=dtype, trust_remote_code=trust_remote_code
            )
        self.model.eval()
        for name, buffer in list(self.model.named_buffers()):  # rotary tables and such, built on the CPU
            set_module_tensor_to_device(self.model, name, self.device, value=buffer)
        self._names = {module: name for name, module in self.model.named_modules()}
        self._stored_pieces: dict[str, list[StoredPiece] | None] = {}  # by parameter, found once

    def _key(self, name: str) -> str | None:
        return self.checkpoint.key_for(name, self.model.base_model_prefix)

    def _missing(self, parameter: str) -> ModelError:
        return ModelError(
            f"parameter {parameter} has no tensor in {self.checkpoint.folder} (the checkpoint names it "
            "differently); prune this model without --low-memory"
        )

    def _pieces(self, parameter: str) -> list[StoredPiece] | None:
        """Where the checkpoint stores fused expert ``parameter`` in pieces, or None for other parameters."""
        if parameter not in self._stored_pieces:
            pieces = None
            if self._key(parameter) is None and is_fused_expert(self.model, parameter):
                try:
                    pieces = stored_pieces(self.model, parameter, self.checkpoint.shapes, self._key)
                except ConversionError:
                    raise self._missing(parameter) from None
            self._stored_pieces[parameter] = pieces
        return self._stored_pieces[parameter]

    def key_for(self, parameter: str) -> str:
        """The checkpoint key of a parameter stored whole, under its own name or the one transformers
        renames it from."""
        key = self._key(parameter)
        if key is None:
            names = stored_names(self.model, parameter)
            key = self._key(names[0]) if len(names) == 1 else None
        if key is None:
            raise self._missing(parameter)
        return key

    def read(self, parameter: str) -> torch.Tensor:
        """Model parameter ``parameter`` as the model holds it (fused experts assembled from their pieces)."""
        if (pieces := self._pieces(parameter)) is not None:
            matrices = gather_fused(pieces, self.checkpoint.read, matrices_shape(self.model, parameter))
            return swap_layout(self.model, parameter, matrices).contiguous()
        return self.checkpoint.read(self.key_for(parameter))

    def stored_keys(self, parameter: str) -> list[str]:
        """The checkpoint keys holding model parameter ``parameter``."""
        if (pieces := self._pieces(parameter)) is not None:
            return [piece.key for piece in pieces]
        return [self.key_for(parameter)]

    def stored(self, parameter: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model parameter ``parameter`` holding ``value`` as the checkpoint stores it: ``read`` inverted."""
        if (pieces := self._pieces(parameter)) is not None:
            return scatter_fused(swap_layout(self.model, parameter, value), pieces)
        return {self.key_for(parameter): value}

    def materialise(self, module: nn.Module, recurse: bool = True) -> None:
        """Read ``module``'s parameters (and its children's, with ``recurse``) onto the device."""
        prefix = self._names[module]
        for name, _ in list(module.named_parameters(recurse=recurse)):
            full = f"{prefix}.{name}" if prefix else name
            value = self.read(full)
            if value.is_floating_point():
                value = value.to(self.dtype)
            set_module_tensor_to_device(self.model, full, self.device, value=value)

    def release(self, module: nn.Module) -> None:
        prefix = self._names[module]
        for name, _ in list(module.named_parameters()):
            set_module_tensor_to_device(self.model, f"{prefix}.{name}" if prefix else name, "meta")

    def release_outside(self, skip: nn.Module) -> None:
        """Drop every loaded parameter outside ``skip`` (the embedding, once the block inputs are
        captured)."""
        inside = {id(p) for p in skip.parameters()}
        for name, parameter in list(self.model.named_parameters()):
            if id(parameter) not in inside and not parameter.is_meta:
                set_module_tensor_to_device(self.model, name, "meta")

    def materialise_on_call(self, skip: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        """Load every module outside ``skip`` (the decoder blocks) the first time it runs.

        Modules the capture pass never reaches (the final norm, the LM head) are never read.
        """
        inside = {id(module) for module in skip.modules()}
        handles = []
        for module in self.model.modules():
            if id(module) in inside or not any(True for _ in module.parameters(recurse=False)):
                continue
            handles.append(module.register_forward_pre_hook(self._materialise_once(module)))
        return handles

    def _materialise_once(self, module: nn.Module):
        def hook(_module: nn.Module, _args: tuple) -> None:
            if any(p.is_meta for p in module.parameters(recurse=False)):
                self.materialise(module, recurse=False)

        return hook


class LazyBlocks:
    """Block access for a lazily opened checkpoint: read a block's weights in, drop them after."""

    def __init__(self, lazy: LazyModel, blocks: nn.ModuleList) -> None:
        self.lazy, self.blocks = lazy, blocks

    def load(self, index: int) -> None:
        self.lazy.materialise(self.blocks[index])

    def unload(self, index: int) -> None:
        self.lazy.release(self.blocks[index])
        return_freed_memory()  # medium-sized temporaries live on the C heap, which glibc keeps

    def captured(self) -> None:
        self.lazy.release_outside(self.blocks)


__all__ = ["INDEX_FILE", "SINGLE_FILE", "LazyBlocks", "LazyCheckpoint", "LazyModel"]
