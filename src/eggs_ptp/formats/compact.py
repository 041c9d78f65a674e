"""Compact N:M checkpoints: only the kept values plus a one-bit-per-weight position mask.

A dense-with-zeros checkpoint is no smaller than the model it came from. A packed folder holds
``model.safetensors``, ``compact.json`` and copies of the source's other files (config, tokenizer,
``sparsity.json``). Each pruned layer, seen as (out, in) with ``kept = in * N / M`` stored columns
per row, is stored as

* ``NAME.weight.bitmask``: uint8, shape (out, ceil(in / 8)); bit j of byte k (least significant
  bit first, numpy's ``bitorder="little"``) is set when column 8k + j is stored. Row r's stored
  values are its set columns in increasing order.
* unquantized: ``NAME.weight.values``: the stored values in the layer's dtype, (out, kept), row-major;
* quantized (``compact.json``'s ``quantization`` is not null), in place of the values:

  * ``NAME.weight.qvalues``: the stored integers q, row-major. int8: int8 (out, kept), signed.
    int4: uint8 (out, ceil(kept / 2)), two to a byte: stored value k of a row is the low nibble
    (bits 0-3) of the row's byte k // 2 when k is even, the high nibble (bits 4-7) when k is odd;
    an odd kept leaves each row's last high nibble 0;
  * ``NAME.weight.scales``: float16 (out, groups), ``groups = ceil(in / group_size)`` (1 when
    group_size is null: one scale per output channel);
  * ``NAME.weight.zeros``: uint8 (out, groups), asymmetric int4 only.

  The weight at row r, column c is ``(q - z) * float32(scales[r, g])`` in fp32, ``g = c // group_size``
  (0 when group_size is null), ``z = zeros[r, g]``, else 0 for int8 and 8 for symmetric int4,
  then rounded to the layer's dtype. The product is exact, so every reader gets the same bits.

A quantized run's output head, when it was rounded too (``--quantize-head``), is stored the same
way on its own scheme (int8 per output channel), every weight kept and no bitmask:
``HEAD.weight.qvalues`` int8 (out, in) and ``HEAD.weight.scales``. A head tied to the input embedding
is stored once, under the head's name; the embedding's weight is not stored, and loads as the head's.

Every other tensor is stored as in the source. ``compact.json`` (schema_version 3)::

    {"type": "eggs-ptp/compact", "schema_version": 3, "pattern": "2:4", "bitmask_bit_order": "little",
     "quantization": null | {"bits": 8 | 4, "symmetric": bool, "group_size": int | null},
     "layers": [{"name": str, "shape": [out, in], "transposed": bool, "dtype": "float32" | ...,
                 "expert": {"parameter": str, "index": int}  (expert matrices only)}],
     "head": null | {"name": str, "shape": [vocab, hidden], "dtype": str, "tied": str | null,
                     "quantization": {"bits": 8, "symmetric": true, "group_size": null}}}

``dtype`` is the dense dtype a layer loads back in; ``transposed`` marks a GPT-2 Conv1D, whose
dense weight is stored (in, out). Version 2 is version 3 without a head (and is what a folder
without one records, so older readers read it); version 1 is version 2 without ``quantization``.

This is the layout of compressed-tensors' former ``sparse-24-bitmask`` generalised to N:M, so a
2:4 layer costs 0.5 + 1/16 = 0.5625 of its dense bytes in 16-bit dtypes (0.53125 in fp32). In
int8 it costs 1/8 + 1/32 of its fp32 bytes plus a scale per row (about 0.157 at 576 inputs); in
int4 with groups of 128, 1/16 + 1/32 plus 2 bytes of scale (and 1 of zero point) per group per row.

The bitmask marks *stored* positions, not non-zero ones: a group with fewer than N non-zeros (a
kept weight that is exactly zero) fills its spare slots with zeros, negative zeros first, then
lowest index first, so every group stores exactly N and every stored bit pattern survives.
Positions not stored decode to +0.0; a -0.0 there (``weight * mask`` writes one for every pruned
negative weight) comes back as +0.0, equal in value, and ``pack_checkpoint`` counts them, as it
counts the stored -0.0 of a quantized layer (an integer grid has only +0.0).
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
from eggs_ptp.formats.checkpoint import REPORT_FILE, read_report, staged_folder, write_json_atomic
from eggs_ptp.formats.codec import (
    check_bitmask,
    compress,
    decompress,
    negative_zeros,
    pack_nibbles,
    scatter_stored,
    unpack_bits,
    unpack_nibbles,
)
from eggs_ptp.formats.output import check_output_target, claim_output
from eggs_ptp.formats.tensors import CheckpointTensors, tensor_files
from eggs_ptp.models.loading import load_config
from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import GRID_FILE, Grid, QuantScheme, head_scheme

COMPACT_FILE = "compact.json"
COMPACT_TYPE = "eggs-ptp/compact"
COMPACT_VERSION = 3
HEADLESS_VERSION = 2  # written when no head is stored: every reader of version 2 reads the folder
READABLE_VERSIONS = (1, 2, 3)
WEIGHTS_FILE = "model.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth")


@dataclass(frozen=True)
class PackResult:
    """Sizes in bytes: the pruned layers' tensors (quantized: qvalues, bitmask, scales and zero
    points), and the weight files on disk (a quantized source's grid file is not a weight file)."""

    out: Path
    pattern: str
    layers: int
    pruned_dense_bytes: int
    pruned_compact_bytes: int
    file_dense_bytes: int
    file_compact_bytes: int
    signed_zeros_cleared: int  # -0.0 at positions not stored, or stored on an integer grid: they load as +0.0
    quantization: dict[str, Any] | None = None  # the scheme's record, None when not quantized

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
            "quantization": self.quantization,
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


def quantize_compact(
    weight: torch.Tensor, pattern: Pattern | None, grid: Grid
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``qvalues`` and ``bitmask`` of ``weight`` (out, in), whose stored values must be values of ``grid``
    in the weight's dtype (a spare slot's 0.0 always is: q = z); raises ValueError naming the first row
    that has one off the grid. ``pattern`` None stores every weight (a quantized dense layer such as an
    output head) and gives no bitmask."""
    rows, cols = weight.shape
    if grid.cols != cols or grid.scales.shape[0] != rows:
        raise ValueError(f"its grid is for {grid.scales.shape[0]}x{grid.cols}, not {rows}x{cols}")
    if pattern is None:
        bitmask, stored = None, torch.ones(rows, cols, dtype=torch.bool, device=weight.device)
    else:
        _, bitmask = compress(weight, pattern)
        stored = unpack_bits(bitmask, cols)
    q = grid.quantize(weight)  # (out, in) int16, clamped to the stored range
    off = stored & (grid.dequantize(q).to(weight.dtype) != weight)
    if bool(off.any()):
        row = int(off.nonzero()[0, 0])
        raise ValueError(f"{int(off.sum())} kept weights lie off its {grid.scheme.name} grid (first at row {row})")
    q = q[stored].reshape(rows, -1)
    return (q.to(torch.int8) if grid.scheme.bits == 8 else pack_nibbles(q)), bitmask


def dequantize_compact(
    qvalues: torch.Tensor, bitmask: torch.Tensor | None, pattern: Pattern | None, grid: Grid
) -> torch.Tensor:
    """The dense (out, in) fp32 weight of a quantized compact layer: ``(q - z) * s`` where stored, +0.0
    elsewhere (``pattern`` None: every weight is stored; any bitmask is not read). Bit-exact, as the
    CPU kernel's ``nm_qdecompress`` is."""
    rows, cols = grid.scales.shape[0], grid.cols
    if pattern is None:
        return grid.dequantize(unpack_qvalues(qvalues, grid.scheme.bits, (rows, cols)))
    stored = check_bitmask(bitmask, (rows, cols), pattern)
    q = scatter_stored(unpack_qvalues(qvalues, grid.scheme.bits, (rows, cols // pattern.m * pattern.n)), stored)
    return torch.where(stored, grid.dequantize(q), 0.0)


def check_qvalues(qvalues: torch.Tensor, bits: int, shape: tuple[int, int]) -> None:
    """Raise ValueError unless ``qvalues`` has the int8 or packed int4 layout of ``shape`` (rows, kept)."""
    rows, kept = shape
    expected = (torch.int8, [rows, kept]) if bits == 8 else (torch.uint8, [rows, -(-kept // 2)])
    if (qvalues.dtype, list(qvalues.shape)) != expected:
        dtype = str(expected[0]).removeprefix("torch.")
        raise ValueError(f"int{bits} qvalues must be {dtype} {expected[1]}, got {qvalues.dtype} {list(qvalues.shape)}")


def unpack_qvalues(qvalues: torch.Tensor, bits: int, shape: tuple[int, int]) -> torch.Tensor:
    """The (rows, kept) stored integers (int16) of ``qvalues``, checked against their layout."""
    check_qvalues(qvalues, bits, shape)
    return (qvalues if bits == 8 else unpack_nibbles(qvalues, shape[1])).to(torch.int16)


def pack_checkpoint(src: Path, out: Path, overwrite: bool = False) -> PackResult:
    """Write the compact form of the eggs-ptp checkpoint ``src`` to ``out``, atomically; a quantized
    checkpoint's pruned layers are stored as integers on their grids."""
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


def _source_grids(src: Path, report: dict[str, Any]) -> tuple[QuantScheme | None, Path | None, dict[str, torch.Tensor]]:
    """A quantized checkpoint's scheme, grid file and its tensors (None, None, {} when not quantized)."""
    record = report.get("quantization")
    if record is None:
        return None, None, {}
    scheme = QuantScheme.from_dict(record)
    path = src / record.get("file", GRID_FILE)
    if not path.is_file():
        raise ValueError(f"{src} was quantized ({scheme.name}) but its grid file {path.name} is missing")
    with reading(path):
        return scheme, path, load_file(str(path))


def _model_side_tensors(src: Path, report: dict[str, Any], grid_file: Path | None) -> dict[str, torch.Tensor]:
    """Every tensor of ``src`` under the model's own parameter names, with each fused expert
    parameter split into one ``NAME.weight`` per pruned expert matrix. Checkpoints without experts
    are read as they are stored (their names are the model's), less the grid file's."""
    experts = [layer for layer in report["layers"] if layer["skipped"] is None and layer.get("expert")]
    checkpoint = CheckpointTensors(src)
    if not experts:
        return {key: checkpoint.read(key) for key, path in checkpoint.where.items() if path != grid_file}
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
    scheme, grid_file, grid_tensors = _source_grids(src, report)
    files = [path for path in tensor_files(src) if path != grid_file]
    tensors = _model_side_tensors(src, report, grid_file)
    layers, pruned_dense, pruned_compact, cleared = [], 0, 0, 0
    for layer in (l for l in report["layers"] if l["skipped"] is None):
        name, key = layer["name"], f"{layer['name']}.weight"
        if key not in tensors:
            raise ValueError(f"{name}: weight {key} is missing from {src}")
        stored = tensors.pop(key)
        weight = stored.T if layer["transposed"] and not layer.get("expert") else stored  # (out, in)
        if list(weight.shape) != list(layer["shape"]):
            raise ValueError(f"{name}: shape {list(weight.shape)} is not the recorded {layer['shape']}")
        grid = None if scheme is None else Grid.from_tensors(scheme, name, grid_tensors, weight.shape[1])
        try:
            if grid is None:
                values, bitmask = compress(weight, pattern)
                compact = {f"{key}.values": values}
                cleared += int(negative_zeros(weight).sum() - negative_zeros(values).sum())
            else:
                qvalues, bitmask = quantize_compact(weight, pattern, grid)
                compact = {f"{key}.qvalues": qvalues, **grid.tensors(name)}
                cleared += int(negative_zeros(weight).sum())  # q - z is an integer: every zero loads as +0.0
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        compact[f"{key}.bitmask"] = bitmask
        tensors.update(compact)
        pruned_dense += _nbytes(stored)
        pruned_compact += sum(_nbytes(tensor) for tensor in compact.values())
        layers.append(
            {
                "name": name,
                "shape": list(layer["shape"]),
                "transposed": layer["transposed"],
                "dtype": str(stored.dtype).removeprefix("torch."),
                **({"expert": {k: layer["expert"][k] for k in ("parameter", "index")}} if layer.get("expert") else {}),
            }
        )
    head = None if scheme is None else (report["quantization"] or {}).get("head")
    if head is not None:  # not a pruned layer: its bytes count in the file's, not the pruned layers'
        grid = Grid.from_tensors(head_scheme(head), head["name"], grid_tensors, head["shape"][1])
        head = _pack_head(head, tensors, grid)
    record = {
        "type": COMPACT_TYPE,
        "schema_version": COMPACT_VERSION if head is not None else HEADLESS_VERSION,
        "pattern": str(pattern),
        "quantization": None if scheme is None else scheme.to_dict(),
        "layers": layers,
        "head": head,
        "bitmask_bit_order": "little",
    }
    with staged_folder(out) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        for path in src.iterdir():  # config, generation config, tokenizer files, sparsity.json
            if path.is_file() and not path.name.startswith(".") and not path.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(path, staging / path.name)
        if scheme is not None:  # the grids now live beside the integers, not in a grid file of their own
            write_json_atomic(
                staging / REPORT_FILE, {**report, "quantization": {**report["quantization"], "file": WEIGHTS_FILE}}
            )
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
        record["quantization"],
    )


def _pack_head(head: dict[str, Any], tensors: dict[str, torch.Tensor], grid: Grid) -> dict[str, Any]:
    """Store a rounded output head in ``tensors`` as integers on ``grid`` in place of its weight (and of
    the tied embedding's, which save_pretrained may have kept instead); returns its record."""
    name, tied = head["name"], head.get("tied")
    sources = [key for key in (f"{name}.weight", f"{tied}.weight" if tied else None) if key in tensors]
    if not sources:
        raise ValueError(f"{name}: the run rounded the head, but neither it nor a tied embedding is stored")
    weight = tensors[sources[0]]
    if list(weight.shape) != list(head["shape"]):
        raise ValueError(f"{name}: shape {list(weight.shape)} is not the recorded {head['shape']}")
    try:
        qvalues, _ = quantize_compact(weight, None, grid)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    for key in sources:
        del tensors[key]
    tensors.update({f"{name}.weight.qvalues": qvalues, **grid.tensors(name)})
    dtype = str(weight.dtype).removeprefix("torch.")
    return {
        "name": name,
        "shape": list(head["shape"]),
        "dtype": dtype,
        "tied": tied,
        "quantization": grid.scheme.to_dict(),
    }


def read_compact(folder: Path) -> dict[str, Any]:
    path = Path(folder) / COMPACT_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {COMPACT_FILE}; is it a folder written by eggs-ptp pack?")
    record = read_json(path)
    if (
        not isinstance(record, dict)
        or record.get("type") != COMPACT_TYPE
        or record.get("schema_version") not in READABLE_VERSIONS
    ):
        raise ValueError(f"{path} is not an eggs-ptp compact record of schema version 1, 2 or 3")
    return record


def compact_scheme(record: dict[str, Any]) -> QuantScheme | None:
    """The quantization scheme of a compact record (None for version 1 and unquantized folders)."""
    quantization = record.get("quantization")
    return None if quantization is None else QuantScheme.from_dict(quantization)


def layer_dtype(layer: dict[str, Any]) -> torch.dtype:
    """The dense dtype a packed layer loads back in."""
    dtype = getattr(torch, str(layer["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{layer['name']}: unknown dtype {layer['dtype']!r}")
    return dtype


def read_compact_tensors(folder: Path) -> tuple[dict[str, Any], Pattern, dict[str, torch.Tensor]]:
    """The record, its pattern and the stored tensors of a packed folder, each layer's present."""
    record = read_compact(folder)
    scheme = compact_scheme(record)
    with reading(folder / WEIGHTS_FILE):
        state = load_file(str(folder / WEIGHTS_FILE))

    def integers(scheme: QuantScheme) -> tuple[str, ...]:
        return ("qvalues", "scales") + (() if scheme.symmetric else ("zeros",))

    stored = ("values",) if scheme is None else integers(scheme)
    head = record.get("head")
    expected = [(layer["name"], (*stored, "bitmask")) for layer in record["layers"]]
    for name, parts in expected + ([] if head is None else [(head["name"], integers(head_scheme(head)))]):
        missing = [f"{name}.weight.{part}" for part in parts if f"{name}.weight.{part}" not in state]
        if missing:
            raise ValueError(f"{name}: {', '.join(missing)} missing from {folder / WEIGHTS_FILE}")
    return record, Pattern.parse(record["pattern"]), state


def take_grid(layer: dict[str, Any], scheme: QuantScheme, state: dict[str, torch.Tensor]) -> Grid:
    """A quantized packed layer's grid, checked against its shape; its tensors leave ``state``."""
    rows, cols = layer["shape"]
    grid = Grid.from_tensors(scheme, layer["name"], state, cols)
    for key in grid.tensors(layer["name"]):
        del state[key]
    if grid.scales.shape[0] != rows:
        raise ValueError(f"{layer['name']}: its grid has {grid.scales.shape[0]} rows, not {rows}")
    return grid


def _decompress(
    layer: dict[str, Any], pattern: Pattern, state: dict[str, torch.Tensor], scheme: QuantScheme | None
) -> torch.Tensor:
    """A packed layer's (out, in) dense-with-zeros weight in its dtype; its compact tensors leave ``state``."""
    key = f"{layer['name']}.weight"
    grid = None if scheme is None else take_grid(layer, scheme, state)
    try:
        if grid is None:
            return decompress(state.pop(f"{key}.values"), state.pop(f"{key}.bitmask"), layer["shape"], pattern)
        weight = dequantize_compact(state.pop(f"{key}.qvalues"), state.pop(f"{key}.bitmask"), pattern, grid)
    except ValueError as error:
        raise ValueError(f"{layer['name']}: {error}") from None
    return weight.to(layer_dtype(layer))


def expand_experts(record: dict[str, Any], pattern: Pattern, state: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Rebuild every packed fused expert parameter in ``state``, dense with zeros (transformers
    computes experts from the fused tensor), and return the other packed layers."""
    scheme = compact_scheme(record)
    experts: dict[str, list[dict[str, Any]]] = {}
    for layer in record["layers"]:
        if layer.get("expert"):
            experts.setdefault(layer["expert"]["parameter"], []).append(layer)
    for parameter, members in experts.items():
        members = sorted(members, key=lambda layer: layer["expert"]["index"])
        matrices = torch.stack([_decompress(layer, pattern, state, scheme) for layer in members])  # (experts, out, in)
        state[parameter] = matrices.transpose(1, 2).contiguous() if members[0]["transposed"] else matrices
    return [layer for layer in record["layers"] if not layer.get("expert")]


def load_compact_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The dense-with-zeros state dict (as stored, Conv1D layers (in, out)) of a packed folder;
    quantized layers dequantized in their dtype."""
    folder = Path(folder)
    record, pattern, state = read_compact_tensors(folder)
    scheme = compact_scheme(record)
    for layer in expand_experts(record, pattern, state):
        weight = _decompress(layer, pattern, state, scheme)
        state[f"{layer['name']}.weight"] = weight.T.contiguous() if layer["transposed"] else weight
    head = record.get("head")
    if head is not None:
        weight = dequantize_compact(
            state.pop(f"{head['name']}.weight.qvalues"), None, None, take_grid(head, head_scheme(head), state)
        ).to(layer_dtype(head))
        state.update({f"{name}.weight": weight for name in (head["name"], head["tied"]) if name})
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
    the pruned layers rebuilt as dense weights with zeros, bit for bit (quantized ones dequantized:
    the checkpoint that was packed, bit for bit). For modules that keep
    only the compact form and compute from it, see :func:`eggs_ptp.kernels.load_sparse`."""
    folder = Path(folder)
    return model_from_state(folder, load_compact_state_dict(folder), dtype)


__all__ = [
    "COMPACT_FILE",
    "COMPACT_TYPE",
    "COMPACT_VERSION",
    "READABLE_VERSIONS",
    "WEIGHTS_FILE",
    "PackResult",
    "check_qvalues",
    "compact_scheme",
    "dequantize_compact",
    "expand_experts",
    "layer_dtype",
    "load_compact",
    "load_compact_state_dict",
    "model_from_state",
    "pack_checkpoint",
    "quantize_compact",
    "read_compact",
    "read_compact_tensors",
    "take_grid",
    "unpack_qvalues",
]
