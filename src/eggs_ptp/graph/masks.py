"""Kept-weight masks of every prunable layer of a checkpoint or model, one layer at a time.

An eggs-ptp checkpoint names its layers, their orientation and pattern in ``sparsity.json``, so the
weights are read straight from the safetensors files. Any other model (dense, or pruned by another
tool and saved dense with zeros) is loaded with :func:`load_model`, its layers found by walking its
decoder blocks, and a weight counts as kept when it is non-zero (``-0.0`` counts as pruned).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from eggs_ptp.formats.checkpoint import REPORT_FILE, read_report
from eggs_ptp.formats.tensors import CheckpointTensors
from eggs_ptp.models import ModelError, find_blocks, load_model
from eggs_ptp.models.layers import Prunable, find_layers

log = logging.getLogger(__name__)

_NM_CANDIDATES = (4, 8, 16)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    shape: tuple[int, int]  # (out, in)
    transposed: bool  # stored as (in, out), like GPT-2's Conv1D
    recon_error: float | None


@dataclass(frozen=True)
class LayerMask:
    name: str
    mask: torch.Tensor  # (out, in) bool
    transposed: bool
    recon_error: float | None


@dataclass
class MaskSource:
    """The selected layers of one checkpoint or model; :meth:`masks` reads them lazily, in model order.

    ``pattern`` is the recorded one, or for a model without ``sparsity.json`` the N:M its first
    pruned layer keeps exactly (``pattern_inferred``), else None. ``dense`` is True when no
    selected layer has a zero weight: the model was not pruned.
    """

    name: str
    has_report: bool
    method: str | None
    pattern: str | None
    pattern_inferred: bool
    layers: list[LayerInfo]
    skipped: dict[str, str] = field(default_factory=dict)  # left dense by the pruner, and why
    dense: bool = False
    _read: Callable[[LayerInfo], torch.Tensor] | None = field(default=None, repr=False)

    def masks(self) -> Iterator[LayerMask]:
        for info in self.layers:
            yield LayerMask(info.name, self._read(info), info.transposed, info.recon_error)


def infer_nm(mask: torch.Tensor) -> tuple[int, int] | None:
    """``(n, m)`` when every group of ``m`` inputs in every row keeps exactly ``n`` (smallest m first)."""
    for m in _NM_CANDIDATES:
        if mask.shape[1] % m:
            continue
        kept = mask.reshape(mask.shape[0], -1, m).sum(dim=-1)  # (out, groups)
        n = int(kept.min())
        if n == int(kept.max()) and 0 < n < m:
            return n, m
    return None


def select_layers(names: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """Names matching any exact name or glob in ``wanted`` (all when empty), in model order."""
    if not wanted:
        return list(names)
    for pattern in wanted:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise ValueError(f"no layer named or matching {pattern!r}; the {len(names)} layers include {listed}")
    return [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in wanted)]


def source_name(spec: str | Path) -> str:
    """A short name for a checkpoint folder or model id, usable as a folder name."""
    spec = str(spec)
    path = Path(spec).expanduser()
    return path.resolve().name if path.exists() else spec.strip("/").replace("/", "--")


def _from_report(folder: Path, wanted: Sequence[str]) -> MaskSource:
    report = read_report(folder)
    records = {layer["name"]: layer for layer in report["layers"]}
    chosen = select_layers(list(records), wanted)
    tensors = CheckpointTensors(folder)

    def read(info: LayerInfo) -> torch.Tensor:
        weight = tensors.matrix(records[info.name])  # (out, in)
        if tuple(weight.shape) != info.shape:
            raise ValueError(f"{info.name}: shape {tuple(weight.shape)} is not the recorded {list(info.shape)}")
        return weight != 0

    layers = [
        LayerInfo(name, tuple(records[name]["shape"]), bool(records[name]["transposed"]), records[name]["recon_error"])
        for name in chosen
        if records[name]["skipped"] is None
    ]
    skipped = {name: records[name]["skipped"] for name in chosen if records[name]["skipped"] is not None}
    return MaskSource(
        name=source_name(folder),
        has_report=True,
        method=report.get("method"),
        pattern=report.get("pattern"),
        pattern_inferred=False,
        layers=layers,
        skipped=skipped,
        dense=not layers,
        _read=read,
    )


def _from_model(spec: str, wanted: Sequence[str], trust_remote_code: bool) -> MaskSource:
    try:
        # bfloat16 halves memory and has float32's exponent range: no fp16/bf16 non-zero becomes
        # zero, and of float32 values only subnormals below ~1e-40 could.
        model = load_model(spec, torch.bfloat16, trust_remote_code=trust_remote_code).model
    except ModelError:
        raise
    except (OSError, ValueError) as error:  # e.g. a folder saved without its tokenizer
        reason = str(error).strip().splitlines()[0].rstrip(" :")
        raise ModelError(
            f"could not load {spec!r} (it has no {REPORT_FILE}, so the model and its tokenizer are loaded): {reason}"
        ) from error
    prefix, blocks = find_blocks(model)
    linears: dict[str, Prunable] = {
        layer.name: layer for i, block in enumerate(blocks) for layer in find_layers(block, f"{prefix}.{i}").prunable
    }
    chosen = [linears[name] for name in select_layers(list(linears), wanted)]
    first_pruned = next((layer for layer in chosen if (layer.weight == 0).any()), None)
    inferred = infer_nm(first_pruned.weight != 0) if first_pruned is not None else None
    log.info("%s has no %s; masks are its zero weights", spec, REPORT_FILE)
    return MaskSource(
        name=source_name(spec),
        has_report=False,
        method=None,
        pattern=f"{inferred[0]}:{inferred[1]}" if inferred else None,
        pattern_inferred=inferred is not None,
        layers=[LayerInfo(layer.name, tuple(layer.weight.shape), layer.transposed, None) for layer in chosen],
        dense=first_pruned is None,
        _read=lambda info: linears[info.name].weight != 0,
    )


def open_masks(spec: str | Path, layers: Sequence[str] = (), trust_remote_code: bool = False) -> MaskSource:
    """Open a checkpoint folder, model folder, hub id or short name; ``layers`` are names or globs.
    ``trust_remote_code`` lets a model that ships its own code load (checkpoints need no code).

    Raises ValueError (``ModelError`` for a path that is not a model) with one line, naming an
    unknown layer and listing a few valid ones.
    """
    folder = Path(spec).expanduser()
    if (folder / REPORT_FILE).is_file():
        return _from_report(folder, layers)
    return _from_model(str(spec), layers, trust_remote_code)


__all__ = ["LayerInfo", "LayerMask", "MaskSource", "infer_nm", "open_masks", "select_layers", "source_name"]
