"""A saved checkpoint's weights, read by the layer names its ``sparsity.json`` uses, one at a time.

A linear layer is one tensor, ``NAME.weight``. An expert's matrix is rows of a fused parameter that
``save_pretrained`` writes per expert (Mixtral's ``block_sparse_moe.experts.E.w1.weight``, Qwen3-MoE's
``mlp.experts.E.gate_proj.weight``) or keeps fused (gpt-oss). Where its rows lie comes from
transformers' own conversion (:func:`~eggs_ptp.models.experts.stored_pieces`), run on a meta-device
model of the folder's config, so no family is special-cased and nothing large is loaded.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from eggs_ptp.errors import reading
from eggs_ptp.models.conversion import (
    StoredPiece,
    gather_fused,
    is_fused_expert,
    matrices_shape,
    stored_names,
    stored_pieces,
    swap_layout,
)
from eggs_ptp.models.loading import load_config
from eggs_ptp.quant import GRID_FILE


def tensor_files(folder: Path) -> list[Path]:
    """The model's weight files: every ``*.safetensors`` but a quantized run's grids."""
    files = sorted(path for path in Path(folder).glob("*.safetensors") if path.name != GRID_FILE)
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights")
    return files


class CheckpointTensors:
    """The safetensors files of one folder, indexed from their headers."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files = tensor_files(self.folder)
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, list[int]] = {}
        for path in self.files:
            with reading(path), safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    self.where[key] = path
                    self.shapes[key] = handle.get_slice(key).get_shape()
        self._fused: tuple[str, torch.Tensor] | None = None  # the last fused parameter read

    def read(self, key: str) -> torch.Tensor:
        with reading(self.where[key]), safe_open(str(self.where[key]), framework="pt") as handle:
            return handle.get_tensor(key)

    @cached_property
    def _meta_model(self) -> torch.nn.Module:
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(load_config(self.folder))

    def pieces(self, parameter: str) -> list[StoredPiece]:
        """Where this checkpoint stores the rows of fused expert ``parameter``."""
        return stored_pieces(self._meta_model, parameter, self.shapes, lambda key: key if key in self.where else None)

    def fused(self, parameter: str) -> torch.Tensor:
        """The (experts, out, in) matrices of fused expert ``parameter``; the last one read stays cached."""
        if self._fused is None or self._fused[0] != parameter:
            self._fused = None  # free the previous one first
            self._fused = (
                parameter,
                gather_fused(self.pieces(parameter), self.read, matrices_shape(self._meta_model, parameter)),
            )
        return self._fused[1]

    def model_side(self) -> dict[str, torch.Tensor]:
        """Every stored tensor under the model's own parameter names, as ``from_pretrained`` would load
        it (fused experts fused, renamed keys renamed); weights tied to another and left out by
        ``save_pretrained`` stay out."""
        tensors = {}
        for name in self._meta_model.state_dict():
            if is_fused_expert(self._meta_model, name):
                tensors[name] = swap_layout(self._meta_model, name, self.fused(name)).contiguous()
                continue
            keys = [key for key in stored_names(self._meta_model, name) if key in self.where]
            if len(keys) == 1:
                tensors[name] = self.read(keys[0])
        return tensors

    def matrix(self, layer: dict[str, Any]) -> torch.Tensor:
        """The (out, in) weight of a layer record: ``NAME.weight``, or an expert's rows of its fused parameter."""
        expert = layer.get("expert")
        if expert:
            return self.fused(expert["parameter"])[expert["index"]]
        key = f"{layer['name']}.weight"
        if key not in self.where:
            raise ValueError(f"{layer['name']}: weight {key} is missing from the checkpoint in {self.folder}")
        stored = self.read(key)
        return stored.T if layer["transposed"] else stored


__all__ = ["CheckpointTensors", "tensor_files"]
