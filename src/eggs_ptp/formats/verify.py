"""Check a saved checkpoint against the pattern its ``sparsity.json`` records.

Reads the safetensors files directly, so it needs no model class. A weight counts as kept when it
is non-zero; ``-0.0 == 0`` in IEEE arithmetic, so negative zeros count as pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from eggs_ptp.formats.checkpoint import read_report
from eggs_ptp.pattern import Pattern


class VerifyError(ValueError):
    """A pruned layer breaks its recorded pattern, or is missing."""


@dataclass(frozen=True)
class Violation:
    count: int  # offending groups (N:M) or rows (unstructured)
    row: int
    group: int | None


def pattern_violations(weight: torch.Tensor, pattern: Pattern) -> Violation | None:
    """First place where ``weight`` (out, in) keeps more than the pattern allows, or None."""
    kept = weight != 0
    if pattern.structured:
        over = kept.reshape(kept.shape[0], -1, pattern.m).sum(dim=-1) > pattern.n  # (out, groups)
    else:
        over = (kept.sum(dim=1) > pattern.kept_per_row(weight.shape[1])).unsqueeze(1)  # (out, 1)
    if not over.any():
        return None
    row, group = (int(i) for i in over.nonzero()[0])
    return Violation(int(over.sum()), row, group if pattern.structured else None)


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


__all__ = ["VerifyError", "Violation", "pattern_violations", "tensor_files", "verify_checkpoint"]
