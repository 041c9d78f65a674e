"""Compact N:M checkpoints: only the kept values plus a one-bit-per-weight position mask.

A dense-with-zeros checkpoint is no smaller than the model it came from. Here each pruned layer,
seen as (out, in), is stored as

* ``NAME.weight.values``: exactly N values of every M-group, row-major, in the layer's dtype,
  shape (out, in * N / M);
* ``NAME.weight.bitmask``: uint8, shape (out, ceil(in / 8)); bit j of byte k (least significant
  bit first, numpy's ``bitorder="little"``) is set when column 8k + j is stored.

This is the layout of compressed-tensors' former ``sparse-24-bitmask`` generalised to N:M, so a
2:4 layer costs 0.5 + 1/16 = 0.5625 of its dense bytes in 16-bit dtypes (0.53125 in fp32).

The bitmask marks *stored* positions, not non-zero ones: a group with fewer than N non-zeros (a
kept weight that is exactly zero) fills its spare slots with zeros, negative zeros first, then
lowest index first, so every group stores exactly N and every stored bit pattern survives.
Positions not stored decode to +0.0; a -0.0 there (``weight * mask`` writes one for every pruned
negative weight) comes back as +0.0, equal in value, and ``pack_checkpoint`` counts them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from eggs_ptp.errors import read_json, reading
from eggs_ptp.formats.checkpoint import read_report, staged_folder, write_json_atomic
from eggs_ptp.formats.codec import compress, decompress, negative_zeros
from eggs_ptp.formats.output import check_output_target, claim_output
from eggs_ptp.formats.tensors import CheckpointTensors, tensor_files
from eggs_ptp.models.loading import load_config
from eggs_ptp.pattern import Pattern

COMPACT_FILE = "compact.json"
COMPACT_TYPE = "eggs-ptp/compact"
COMPACT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")


@dataclass(frozen=True)
class PackResult:
    """Sizes in bytes: the pruned layers' tensors, and the weight files on disk."""

    out: Path
    pattern: str
    layers: int
    pruned_dense_bytes: int
    pruned_compact_bytes: int
    file_dense_bytes: int
    file_compact_bytes: int
    signed_zeros_cleared: int  # -0.0 at positions not stored, which load back as +0.0

    @property
    def pruned_ratio(self) -> float:
        return self.pruned_compact_bytes / self.pruned_dense_bytes if self.pruned_dense_bytes else 1.0

    @property
    def file_ratio(self) -> float:
        return self.file_compact_bytes / self.file_dense_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "pattern": self.pattern,
            "layers": self.layers,
            "pruned_dense_bytes": self.pruned_dense_bytes,
            "pruned_compact_bytes": self.pruned_compact_bytes,
            "pruned_ratio": self.pruned_ratio,
            "file_dense_bytes": self.file_dense_bytes,
            "file_compact_bytes": self.file_compact_bytes,
            "file_ratio": self.file_ratio,
            "signed_zeros_cleared": self.signed_zeros_cleared,
        }


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def pack_checkpoint(src: Path, out: Path, overwrite: bool = False) -> PackResult:
    """Write the compact form of the eggs-ptp checkpoint ``src`` to ``out``, atomically."""
    src, out = Path(src), Path(out)
    report = read_report(src)
    if (src / COMPACT_FILE).exists():
        raise ValueError(f"{src} is already packed (it has {COMPACT_FILE})")
    pattern = Pattern.parse(report["pattern"])
    if not pattern.structured:
        raise ValueError(f"{src} was pruned unstructured ({pattern}); the compact format is N:M only")
    check_output_target(out, overwrite, inputs=[src])
    with claim_output(out):
        return _pack(src, out, report, pattern)


def _model_side_tensors(src: Path, report: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of ``src`` under the model's own parameter names, with each fused expert
    parameter split into one ``NAME.weight`` per pruned expert matrix. Checkpoints without experts
    are read as they are stored (their names are the model's)."""
    experts = [layer for layer in report["layers"] if layer["skipped"] is None and layer.get("expert")]
    checkpoint = CheckpointTensors(src)
    if not experts:
        return {key: checkpoint.read(key) for key in checkpoint.where}
    tensors = checkpoint.model_side()
    for parameter in dict.fromkeys(layer["expert"]["parameter"] for layer in experts):
        matrices = checkpoint.fused(parameter)
        packed = {
            layer["expert"]["index"]: layer["name"] for layer in experts if layer["expert"]["parameter"] == parameter
        }
        if len(packed) != matrices.shape[0]:
            raise ValueError(
                f"{parameter}: {len(packed)} of its {matrices.shape[0]} experts were pruned; the compact format "
                "stores a fused expert parameter only when every expert of it is pruned"
            )
        del tensors[parameter]
        tensors.update({f"{name}.weight": matrices[index] for index, name in packed.items()})
    return tensors


def _pack(src: Path, out: Path, report: dict[str, Any], pattern: Pattern) -> PackResult:
    files = tensor_files(src)
    tensors = _model_side_tensors(src, report)
    layers, pruned_dense, pruned_compact, cleared = [], 0, 0, 0
    for layer in (l for l in report["layers"] if l["skipped"] is None):
        name, key = layer["name"], f"{layer['name']}.weight"
        if key not in tensors:
            raise ValueError(f"{name}: weight {key} is missing from {src}")
        stored = tensors.pop(key)
        weight = stored.T if layer["transposed"] and not layer.get("expert") else stored  # (out, in)
        if list(weight.shape) != list(layer["shape"]):
            raise ValueError(f"{name}: shape {list(weight.shape)} is not the recorded {layer['shape']}")
        try:
            values, bitmask = compress(weight, pattern)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        tensors[f"{key}.values"], tensors[f"{key}.bitmask"] = values, bitmask
        pruned_dense += _nbytes(stored)
        pruned_compact += _nbytes(values) + _nbytes(bitmask)
        cleared += int(negative_zeros(weight).sum() - negative_zeros(values).sum())
        layers.append(
            {
                "name": name,
                "shape": list(layer["shape"]),
                "transposed": layer["transposed"],
                "dtype": str(stored.dtype).removeprefix("torch."),
                **({"expert": {k: layer["expert"][k] for k in ("parameter", "index")}} if layer.get("expert") else {}),
            }
        )
    record = {
        "type": COMPACT_TYPE,
        "schema_version": COMPACT_VERSION,
        "pattern": str(pattern),
        "layers": layers,
        "bitmask_bit_order": "little",
    }
    with staged_folder(out) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        for path in src.iterdir():  # config, generation config, tokenizer files, sparsity.json
            if path.is_file() and not path.name.startswith(".") and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(path, staging / path.name)
        write_json_atomic(staging / COMPACT_FILE, record)
        file_compact = (staging / WEIGHTS_FILE).stat().st_size
    return PackResult(
        out,
        str(pattern),
        len(layers),
        pruned_dense,
        pruned_compact,
        sum(path.stat().st_size for path in files),
        file_compact,
        cleared,
    )


def read_compact(folder: Path) -> dict[str, Any]:
    path = Path(folder) / COMPACT_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {COMPACT_FILE}; is it a folder written by eggs-ptp pack?")
    record = read_json(path)
    if (
        not isinstance(record, dict)
        or record.get("type") != COMPACT_TYPE
        or record.get("schema_version") != COMPACT_VERSION
    ):
        raise ValueError(f"{path} is not an eggs-ptp compact record of schema version {COMPACT_VERSION}")
    return record


def read_compact_tensors(folder: Path) -> tuple[dict[str, Any], Pattern, dict[str, torch.Tensor]]:
    """The record, its pattern and the stored tensors of a packed folder, each layer's present."""
    record = read_compact(folder)
    with reading(folder / WEIGHTS_FILE):
        state = load_file(str(folder / WEIGHTS_FILE))
    for layer in record["layers"]:
        key = f"{layer['name']}.weight"
        if f"{key}.values" not in state or f"{key}.bitmask" not in state:
            raise ValueError(f"{layer['name']}: {key}.values or {key}.bitmask is missing from {folder / WEIGHTS_FILE}")
    return record, Pattern.parse(record["pattern"]), state


def _decompress(layer: dict[str, Any], pattern: Pattern, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """A packed layer's (out, in) dense-with-zeros weight; its compact tensors leave ``state``."""
    key = f"{layer['name']}.weight"
    try:
        return decompress(state.pop(f"{key}.values"), state.pop(f"{key}.bitmask"), layer["shape"], pattern)
    except ValueError as error:
        raise ValueError(f"{layer['name']}: {error}") from None


def expand_experts(record: dict[str, Any], pattern: Pattern, state: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Rebuild every packed fused expert parameter in ``state``, dense with zeros (transformers
    computes experts from the fused tensor), and return the other packed layers."""
    experts: dict[str, list[dict[str, Any]]] = {}
    for layer in record["layers"]:
        if layer.get("expert"):
            experts.setdefault(layer["expert"]["parameter"], []).append(layer)
    for parameter, members in experts.items():
        members = sorted(members, key=lambda layer: layer["expert"]["index"])
        matrices = torch.stack([_decompress(layer, pattern, state) for layer in members])  # (experts, out, in)
        state[parameter] = matrices.transpose(1, 2).contiguous() if members[0]["transposed"] else matrices
    return [layer for layer in record["layers"] if not layer.get("expert")]


def load_compact_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The dense-with-zeros state dict (as stored, Conv1D layers (in, out)) of a packed folder."""
    folder = Path(folder)
    record, pattern, state = read_compact_tensors(folder)
    for layer in expand_experts(record, pattern, state):
        weight = _decompress(layer, pattern, state)
        state[f"{layer['name']}.weight"] = weight.T.contiguous() if layer["transposed"] else weight
    return state


def model_from_state(
    folder: Path,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    prepare: Callable[[PreTrainedModel], None] | None = None,
) -> PreTrainedModel:
    """The causal LM of ``folder``'s config with ``state`` loaded strictly (eval mode); ``prepare``
    may first replace modules (and rename their keys in ``state``)."""
    config = load_config(folder)
    model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    if prepare is not None:
        prepare(model)
    expected = model.state_dict()
    # save_pretrained leaves out weights tied to another (GPT-2's lm_head is its wte); fill them
    # from the tensor they share storage with, so strict loading still checks everything else.
    present = {expected[key].data_ptr(): key for key in state if key in expected}
    tied = {
        key: present[expected[key].data_ptr()]
        for key in expected.keys() - state.keys()
        if expected[key].data_ptr() in present
    }
    missing = sorted(expected.keys() - state.keys() - tied.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{folder} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict({**state, **{key: state[source] for key, source in tied.items()}}, strict=True)
    if tied:
        model.tie_weights()
    return model.eval()


def load_compact(folder: Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A working causal LM (eval mode) from a packed folder, in ``dtype`` or the saved one, with
    the pruned layers rebuilt as dense weights with zeros, bit for bit. For modules that keep
    only the compact form and compute from it, see :func:`eggs_ptp.kernels.load_sparse`."""
    folder = Path(folder)
    return model_from_state(folder, load_compact_state_dict(folder), dtype)


__all__ = [
    "COMPACT_FILE",
    "COMPACT_TYPE",
    "COMPACT_VERSION",
    "WEIGHTS_FILE",
    "PackResult",
    "expand_experts",
    "load_compact",
    "load_compact_state_dict",
    "model_from_state",
    "pack_checkpoint",
    "read_compact",
    "read_compact_tensors",
]
