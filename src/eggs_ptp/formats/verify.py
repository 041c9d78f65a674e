"""Check a saved checkpoint against the pattern its ``sparsity.json`` records.

Reads the safetensors files directly, so it needs no model class.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from eggs_ptp.formats.checkpoint import read_report
from eggs_ptp.pattern import Pattern, pattern_violations


class VerifyError(ValueError):
    """A pruned layer breaks its recorded pattern, or is missing."""


def tensor_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise VerifyError(f"{folder} holds no .safetensors weights")
    return files


def verify_checkpoint(folder: Path) -> int:
    """Raise :class:`VerifyError` naming the first offending layer; return how many were checked."""
    folder = Path(folder)
    report = read_report(folder)
    pattern = Pattern.parse(report["pattern"])
    wanted = {f"{l['name']}.weight": l for l in report["layers"] if l["skipped"] is None}
    located: dict[str, Path] = {}  # one tensor in memory at a time, however large the model
    for path in tensor_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            located.update({key: path for key in wanted.keys() & set(handle.keys())})
    for key, layer in wanted.items():  # in walk order, so "first" means first in the model
        if key not in located:
            raise VerifyError(f"{layer['name']}: weight {key} is missing from the checkpoint")
        with safe_open(str(located[key]), framework="pt") as handle:
            stored = handle.get_tensor(key)
        weight = stored.T if layer["transposed"] else stored
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
    return len(wanted)


__all__ = ["VerifyError", "tensor_files", "verify_checkpoint"]
