"""Check a saved checkpoint against its ``sparsity.json``: the record against itself, then every
pruned layer's stored weight against the record, and, for a quantized run, every weight against
its layer's grid.

Reads the safetensors files directly, one layer at a time; expert matrices are found through a
meta-device model of the folder's config (:mod:`eggs_ptp.formats.tensors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eggs_ptp.errors import FileError
from eggs_ptp.formats.checkpoint import read_report
from eggs_ptp.formats.compact import COMPACT_FILE
from eggs_ptp.formats.tensors import CheckpointTensors
from eggs_ptp.pattern import Pattern, pattern_violations
from eggs_ptp.quant import GRID_FILE, Grid, QuantScheme, head_scheme, load_grids


class VerifyError(ValueError):
    """A pruned layer breaks its recorded pattern, or is missing."""


_LAYER_FIELDS = {"name": str, "shape": list, "transposed": bool}


def _parse_pattern(text: Any, where: str) -> Pattern:
    try:
        return Pattern.parse(str(text))
    except ValueError as error:
        raise VerifyError(f"{where} records an unreadable pattern {text!r}: {error}") from None


def check_record(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Check that a record agrees with itself; return its pruned layers.

    Its layer list must be well formed, name each layer once, hold at least one pruned layer, and
    add up to the counts its summary states; every pattern in it must parse.
    """
    layers = report.get("layers")
    if not isinstance(layers, list):
        raise VerifyError("the record has no list of layers")
    for number, layer in enumerate(layers):
        if not isinstance(layer, dict) or any(not isinstance(layer.get(k), t) for k, t in _LAYER_FIELDS.items()):
            raise VerifyError(f"layer entry {number} of the record lacks a name, shape or transposed flag")
        if layer.get("skipped") is None and len(layer["shape"]) != 2:
            raise VerifyError(f"{layer['name']}: recorded shape {layer['shape']} is not (out, in)")
        expert = layer.get("expert")
        if expert is not None and not (
            isinstance(expert, dict)
            and isinstance(expert.get("parameter"), str)
            and isinstance(expert.get("index"), int)
        ):
            raise VerifyError(f"{layer['name']}: its expert entry lacks its fused parameter's name or expert index")
        if layer.get("pattern") is not None:
            _parse_pattern(layer["pattern"], layer["name"])
    names = [layer["name"] for layer in layers]
    if len(set(names)) != len(names):
        raise VerifyError("the record names a layer more than once")
    pruned = [layer for layer in layers if layer.get("skipped") is None]
    summary = report.get("summary") or {}
    for field, actual in (("pruned_layers", len(pruned)), ("skipped_layers", len(layers) - len(pruned))):
        if summary.get(field) != actual:
            raise VerifyError(
                f"the record lists {actual} {field.replace('_', ' ')} but its summary says {summary.get(field)}"
            )
    weights = sum(layer["shape"][0] * layer["shape"][1] for layer in pruned)
    if summary.get("pruned_weights") not in (None, weights):
        raise VerifyError(
            f"the record's layers hold {weights} pruned weights but its summary says {summary['pruned_weights']}"
        )
    if not pruned:
        raise VerifyError("the record lists no pruned layer")
    return pruned


def verify_checkpoint(folder: Path) -> int:
    """Raise :class:`VerifyError` naming the first inconsistency or offending layer; return how
    many layers were checked."""
    folder = Path(folder)
    if (folder / COMPACT_FILE).is_file():
        raise VerifyError(
            f"{folder} is packed ({COMPACT_FILE}); verify checks the dense checkpoint it was packed from, "
            "and load_compact checks a packed one's masks as it loads"
        )
    report = read_report(folder)
    pattern = _parse_pattern(report.get("pattern"), "the record")
    layers = check_record(report)
    try:
        tensors = CheckpointTensors(folder)
    except FileError:  # an unreadable file is a failure to read, not a broken pattern
        raise
    except ValueError as error:
        raise VerifyError(str(error)) from None
    grids = _grids(folder, report)
    for layer in layers:  # in walk order, so "first" means first in the model
        try:
            weight = tensors.matrix(layer)
        except FileError:
            raise
        except ValueError as error:
            raise VerifyError(str(error)) from None
        if list(weight.shape) != list(layer["shape"]):
            raise VerifyError(f"{layer['name']}: shape {list(weight.shape)} is not the recorded {layer['shape']}")
        layer_pattern = Pattern.parse(layer["pattern"]) if layer.get("pattern") else pattern
        violation = pattern_violations(weight, layer_pattern)
        if violation:
            where = f"row {violation.row}" + (f", group {violation.group}" if violation.group is not None else "")
            raise VerifyError(
                f"{layer['name']} breaks pattern {layer_pattern}: {violation.count} "
                f"{'groups' if layer_pattern.structured else 'rows'} keep too many weights (first at {where})"
            )
        kept = layer.get("kept_fraction")
        if isinstance(kept, (int, float)) and int(weight.count_nonzero()) > round(kept * weight.numel()):
            raise VerifyError(
                f"{layer['name']} keeps {int(weight.count_nonzero())} weights, more than the recorded "
                f"{kept:.4f} of {weight.numel()}"
            )
        if grids is not None:
            _check_grid(layer["name"], weight, grids.get(layer["name"]))
    head = (report.get("quantization") or {}).get("head")
    if grids is not None and head is not None:
        _check_grid(head["name"], _head_weight(tensors, head), grids.get(head["name"]))
    return len(layers)


def _head_weight(tensors: CheckpointTensors, head: dict[str, Any]) -> Any:
    """A rounded output head's weight: under its own name, or its tied embedding's (save_pretrained
    stores a tied pair once)."""
    for name in (head["name"], head.get("tied")):
        if name and f"{name}.weight" in tensors.where:
            return tensors.read(f"{name}.weight")
    raise VerifyError(f"{head['name']}: the record says the run rounded the head, but its weight is not stored")


def _grids(folder: Path, report: dict[str, Any]) -> dict[str, Grid] | None:
    """A quantized run's grids, by layer name (None when the run did not quantize)."""
    record = report.get("quantization")
    if record is None:
        return None
    try:
        scheme = QuantScheme.from_dict(record)
    except ValueError as error:
        raise VerifyError(f"the record's quantization entry is unreadable: {error}") from None
    path = folder / record.get("file", GRID_FILE)
    if not path.is_file():
        raise VerifyError(f"the record says the run quantized ({scheme.name}) but {path.name} is missing")
    try:
        grids = load_grids(path)
    except FileError:
        raise
    except ValueError as error:
        raise VerifyError(f"{path.name}: {error}") from None
    head = record.get("head")
    for name, grid in grids.items():
        expected = scheme if head is None or name != head["name"] else _head_scheme(head)
        if grid.scheme != expected:
            raise VerifyError(f"{path.name}: {name}'s grid is not of the record's scheme {expected.to_dict()}")
    return grids


def _head_scheme(head: dict[str, Any]) -> QuantScheme:
    try:
        return head_scheme(head)
    except ValueError as error:
        raise VerifyError(str(error)) from None


def _check_grid(name: str, weight: Any, grid: Grid | None) -> None:
    if grid is None:
        raise VerifyError(f"{name}: the run quantized, but {GRID_FILE} has no grid for this layer")
    if grid.cols != weight.shape[1] or grid.scales.shape[0] != weight.shape[0]:
        raise VerifyError(f"{name}: its grid is for {grid.scales.shape[0]}x{grid.cols}, not {list(weight.shape)}")
    off = grid.off_grid(weight, weight != 0)
    if bool(off.any()):
        row, column = (int(i) for i in off.nonzero()[0])
        raise VerifyError(
            f"{name}: {int(off.sum())} kept weights lie off their {grid.scheme.name} grid "
            f"(first at row {row}, column {column})"
        )


__all__ = ["VerifyError", "check_record", "verify_checkpoint"]
