"""Re-run one cell of a ``results.json`` and say whether it reproduces.

A cell reproduces when its masks are bit-identical (same SHA-256) and its perplexity is within a
relative tolerance of the recorded one. Everything the cell needs is read from the file: the
model (checked against the recorded weights hash), the grid settings and the cell's seed. The
tokenizer must start sequences as the recorded windows started, or the windows would differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from eggs_ptp.compare.provenance import weights_sha256
from eggs_ptp.compare.runner import GridContext, check_sequence_start, read_results
from eggs_ptp.compare.spec import Cell, CompareSpec
from eggs_ptp.config import PruneConfig
from eggs_ptp.data import SequenceStart
from eggs_ptp.models import LoadedModel, load_model

DEFAULT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CheckResult:
    key: str
    masks_match: bool
    recorded_perplexity: float
    measured_perplexity: float
    relative_difference: float
    tolerance: float

    @property
    def reproduced(self) -> bool:
        return self.masks_match and self.relative_difference <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reproduced": self.reproduced}


def _pick(record: dict[str, Any], key: str | None) -> dict[str, Any]:
    if not record["cells"]:
        raise ValueError("the results file holds no finished cell to check")
    if key is None:
        return record["cells"][0]
    for row in record["cells"]:
        if row["key"] == key:
            return row
    raise ValueError(f"no cell {key!r}; the file holds: {', '.join(r['key'] for r in record['cells'])}")


def check_results(
    path: Path,
    key: str | None = None,
    *,
    model: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    loaded: LoadedModel | None = None,
    trust_remote_code: bool = False,
) -> CheckResult:
    """Re-run cell ``key`` (the first cell when None) of the results file ``path``.

    Args:
        model: load this instead of the recorded model id (same weights required).
        loaded: an already loaded model (same weights required); wins over ``model``.
        trust_remote_code: run the Python code the model ships, when it has some.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}")
    record = read_results(Path(path))
    row = _pick(record, key)
    recorded = record["model"]
    if loaded is None:
        loaded = load_model(
            model or recorded["id"], getattr(torch, recorded["dtype"]), trust_remote_code=trust_remote_code
        )
    if weights_sha256(loaded.model) != recorded["weights_sha256"]:
        raise ValueError(
            f"the model loaded from {model or recorded['id']!r} has other weights than the ones "
            f"{path} was computed on (sha256 {recorded['weights_sha256'][:12]})"
        )
    check_sequence_start(record, SequenceStart.of(loaded.tokenizer), Path(path))
    spec = CompareSpec.from_dict({**record["settings"], "task": False})
    context = GridContext(loaded, spec, snapshot=False)
    measured = context.run_cell(
        Cell(row["method"], row["pattern"], row["seed"]), config=PruneConfig.from_dict(row["config"])
    )
    difference = abs(measured["perplexity"] - row["perplexity"]) / abs(row["perplexity"])
    return CheckResult(
        row["key"],
        measured["mask_sha256"] == row["mask_sha256"],
        row["perplexity"],
        measured["perplexity"],
        difference,
        tolerance,
    )


__all__ = ["DEFAULT_TOLERANCE", "CheckResult", "check_results"]
