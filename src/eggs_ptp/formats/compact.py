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

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from eggs_ptp.formats.checkpoint import (
    check_output_target,
    read_report,
    staged_folder,
    write_json_atomic,
)
from eggs_ptp.formats.verify import pattern_violations, tensor_files
from eggs_ptp.pattern import Pattern

COMPACT_FILE = "compact.json"
COMPACT_TYPE = "eggs-ptp/compact"
COMPACT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")


def _check_pattern(pattern: Pattern, in_features: int) -> tuple[int, int]:
    if not pattern.structured:
        raise ValueError(f"the compact format is N:M only; pattern {pattern} is unstructured")
    if in_features % pattern.m:
        raise ValueError(f"{in_features} input columns do not split into groups of {pattern.m} for pattern {pattern}")
    return pattern.n, pattern.m


def _negative_zeros(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor == 0) & tensor.signbit()


def compress(weight: torch.Tensor, pattern: Pattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``weight`` (out, in) into ``values`` (out, in*N/M) and ``bitmask`` (out, ceil(in/8)) uint8.

    Raises ValueError when a group holds more than N non-zeros (-0.0 counts as zero).
    """
    if weight.dim() != 2:
        raise ValueError(f"compress needs a 2-D (out, in) weight, got shape {list(weight.shape)}")
    rows, cols = weight.shape
    n, m = _check_pattern(pattern, cols)
    violation = pattern_violations(weight, pattern)
    if violation:
        raise ValueError(
            f"weight breaks pattern {pattern}: {violation.count} groups hold more than {n} non-zeros "
            f"(first at row {violation.row}, group {violation.group})"
        )
    groups = weight.reshape(rows, cols // m, m)  # (out, groups, M)
    # Rank each slot: non-zeros, then -0.0, then +0.0, each by position; store the first N.
    rank = torch.full(groups.shape, 2 * m, dtype=torch.int64, device=weight.device)
    rank = rank.masked_fill(_negative_zeros(groups), m).masked_fill(groups != 0, 0)
    rank += torch.arange(m, device=weight.device)
    stored = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    stored.scatter_(-1, rank.topk(n, dim=-1, largest=False).indices, True)
    stored = stored.reshape(rows, cols)  # (out, in)
    values = weight[stored].reshape(rows, cols // m * n)  # boolean indexing keeps row-major order
    return values, _pack_bits(stored)


def check_compact(values: torch.Tensor, bitmask: torch.Tensor, shape: tuple[int, int] | list[int],
                  pattern: Pattern) -> torch.Tensor:
    """Check that ``values`` and ``bitmask`` describe an (out, in) weight at ``pattern``.

    Returns the unpacked (out, in) bool mask of stored positions; raises ValueError otherwise.
    """
    rows, cols = shape
    n, m = _check_pattern(pattern, cols)
    if list(values.shape) != [rows, cols // m * n]:
        raise ValueError(f"values shape {list(values.shape)} is not [{rows}, {cols // m * n}] for {rows}x{cols} at {pattern}")
    if bitmask.dtype != torch.uint8 or list(bitmask.shape) != [rows, -(-cols // 8)]:
        raise ValueError(f"bitmask must be uint8 [{rows}, {-(-cols // 8)}], got {bitmask.dtype} {list(bitmask.shape)}")
    stored = unpack_bits(bitmask, cols)  # (out, in)
    if not (stored.reshape(rows, cols // m, m).sum(dim=-1) == n).all():
        raise ValueError(f"bitmask does not mark exactly {n} of every {m} columns")
    return stored


def decompress(values: torch.Tensor, bitmask: torch.Tensor, shape: tuple[int, int] | list[int],
               pattern: Pattern) -> torch.Tensor:
    """Rebuild the dense (out, in) weight, bit for bit, with +0.0 at positions not stored."""
    return scatter_stored(values, check_compact(values, bitmask, shape, pattern))


def scatter_stored(values: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """The dense weight from ``values`` placed, row-major, at the True positions of ``stored`` (out, in)."""
    weight = torch.zeros(stored.shape, dtype=values.dtype, device=values.device)
    return weight.masked_scatter_(stored, values)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(out, in) bool -> (out, ceil(in/8)) uint8, column 8k+j in bit j of byte k."""
    rows, cols = mask.shape
    padded = torch.nn.functional.pad(mask, (0, -cols % 8)).reshape(rows, -1, 8).to(torch.uint8)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=mask.device)
    return (padded * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    """(out, ceil(in/8)) uint8 -> (out, in) bool, the inverse of :func:`_pack_bits`; padding bits past
    ``cols`` are dropped."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (out, bytes, 8)
    return bits.reshape(bitmask.shape[0], -1)[:, :cols].bool()


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
        return {"out": str(self.out), "pattern": self.pattern, "layers": self.layers,
                "pruned_dense_bytes": self.pruned_dense_bytes, "pruned_compact_bytes": self.pruned_compact_bytes,
                "pruned_ratio": self.pruned_ratio, "file_dense_bytes": self.file_dense_bytes,
                "file_compact_bytes": self.file_compact_bytes, "file_ratio": self.file_ratio,
                "signed_zeros_cleared": self.signed_zeros_cleared}


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
    if out.resolve() == src.resolve():
        raise ValueError("the output folder must differ from the checkpoint being packed")
    check_output_target(out, overwrite)
    files = tensor_files(src)
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    layers, pruned_dense, pruned_compact, cleared = [], 0, 0, 0
    for layer in (l for l in report["layers"] if l["skipped"] is None):
        name, key = layer["name"], f"{layer['name']}.weight"
        if key not in tensors:
            raise ValueError(f"{name}: weight {key} is missing from {src}")
        stored = tensors.pop(key)
        weight = stored.T if layer["transposed"] else stored  # (out, in)
        if list(weight.shape) != list(layer["shape"]):
            raise ValueError(f"{name}: shape {list(weight.shape)} is not the recorded {layer['shape']}")
        try:
            values, bitmask = compress(weight, pattern)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        tensors[f"{key}.values"], tensors[f"{key}.bitmask"] = values, bitmask
        pruned_dense += _nbytes(stored)
        pruned_compact += _nbytes(values) + _nbytes(bitmask)
        cleared += int(_negative_zeros(weight).sum() - _negative_zeros(values).sum())
        layers.append({"name": name, "shape": list(layer["shape"]), "transposed": layer["transposed"],
                       "dtype": str(stored.dtype).removeprefix("torch.")})
    record = {"type": COMPACT_TYPE, "schema_version": COMPACT_VERSION, "pattern": str(pattern),
              "layers": layers, "bitmask_bit_order": "little"}
    with staged_folder(out) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        for path in src.iterdir():  # config, generation config, tokenizer files, sparsity.json
            if path.is_file() and not path.name.startswith(".") and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(path, staging / path.name)
        write_json_atomic(staging / COMPACT_FILE, record)
        file_compact = (staging / WEIGHTS_FILE).stat().st_size
    return PackResult(out, str(pattern), len(layers), pruned_dense, pruned_compact,
                      sum(path.stat().st_size for path in files), file_compact, cleared)


def read_compact(folder: Path) -> dict[str, Any]:
    path = Path(folder) / COMPACT_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {COMPACT_FILE}; is it a folder written by eggs-ptp pack?")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("type") != COMPACT_TYPE or record.get("schema_version") != COMPACT_VERSION:
        raise ValueError(f"{path} is not an eggs-ptp compact record of schema version {COMPACT_VERSION}")
    return record


def _load_record(folder: Path) -> tuple[dict[str, Any], Pattern, dict[str, torch.Tensor]]:
    record = read_compact(folder)
    state = load_file(str(folder / WEIGHTS_FILE))
    for layer in record["layers"]:
        key = f"{layer['name']}.weight"
        if f"{key}.values" not in state or f"{key}.bitmask" not in state:
            raise ValueError(f"{layer['name']}: {key}.values or {key}.bitmask is missing from {folder / WEIGHTS_FILE}")
    return record, Pattern.parse(record["pattern"]), state


def load_compact_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The dense-with-zeros state dict (as stored, Conv1D layers (in, out)) of a packed folder."""
    folder = Path(folder)
    record, pattern, state = _load_record(folder)
    for layer in record["layers"]:
        key = f"{layer['name']}.weight"
        try:
            weight = decompress(state.pop(f"{key}.values"), state.pop(f"{key}.bitmask"), layer["shape"], pattern)
        except ValueError as error:
            raise ValueError(f"{layer['name']}: {error}") from None
        state[key] = weight.T.contiguous() if layer["transposed"] else weight
    return state


def _swap_in_sparse(model: PreTrainedModel, record: dict[str, Any], pattern: Pattern,
                    state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> None:
    """Replace each packed layer of ``model`` by a SparseNMLinear holding its compact tensors, and
    rename their keys in ``state`` to the new module's buffers (same tensors, so loading copies nothing)."""
    from eggs_ptp.kernels import SparseNMLinear

    for layer in record["layers"]:
        name = layer["name"]
        values, bitmask = state.pop(f"{name}.weight.values"), state.pop(f"{name}.weight.bitmask")
        bias = state.get(f"{name}.bias")
        if dtype is not None:
            values, bias = values.to(dtype), None if bias is None else bias.to(dtype)
        try:
            module = SparseNMLinear(values, bitmask, layer["shape"][1], pattern, bias)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        model.set_submodule(name, module)
        state[f"{name}.values"], state[f"{name}.bitmask"] = module.values, module.bitmask
        if bias is not None:
            state[f"{name}.bias"] = module.bias


def load_compact(folder: Path, dtype: torch.dtype | None = None, sparse_modules: bool = False) -> PreTrainedModel:
    """A working causal LM (eval mode) from a packed folder, in ``dtype`` or the saved one.

    By default the pruned layers are rebuilt as dense weights with zeros, bit for bit. With
    ``sparse_modules=True`` they become :class:`eggs_ptp.kernels.SparseNMLinear` modules that keep
    only the compact form in memory and compute from it (inference only).
    """
    folder = Path(folder)
    if sparse_modules:
        record, pattern, state = _load_record(folder)
    else:
        state = load_compact_state_dict(folder)
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    if sparse_modules:
        _swap_in_sparse(model, record, pattern, state, dtype)
    expected = model.state_dict()
    # save_pretrained leaves out weights tied to another (GPT-2's lm_head is its wte); fill them
    # from the tensor they share storage with, so strict loading still checks everything else.
    present = {expected[key].data_ptr(): key for key in state if key in expected}
    tied = {key: present[expected[key].data_ptr()] for key in expected.keys() - state.keys()
            if expected[key].data_ptr() in present}
    missing = sorted(expected.keys() - state.keys() - tied.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{folder} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict({**state, **{key: state[source] for key, source in tied.items()}}, strict=True)
    if tied:
        model.tie_weights()
    return model.eval()
