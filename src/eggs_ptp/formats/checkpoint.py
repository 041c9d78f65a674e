"""Saving a pruned model so that a crash never leaves a complete-looking half checkpoint.

Everything is written into a hidden staging folder beside the target and renamed into place at
the end; an existing target is replaced only when the caller asks, and only after the new one is
complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from transformers import PreTrainedModel

from eggs_ptp.atomic import share_tree, write_atomic
from eggs_ptp.errors import read_json, writing
from eggs_ptp.formats.output import check_output_target, claim_output
from eggs_ptp.quant import GRID_FILE, save_grids
from eggs_ptp.report import PruneReport

REPORT_FILE = "sparsity.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out`` (already checked with ``check_output_target``)
    and rename it into place only when the body succeeds; an existing ``out`` is retired only then.
    The result gets the modes the umask gives, as files written in place would."""
    out = Path(out)
    staging = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.partial-"))
    try:
        with writing(out):
            yield staging
        share_tree(staging)
        if out.exists():
            retired = out.resolve().parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_pruned(
    model: PreTrainedModel, tokenizer: object | None, report: PruneReport, out: Path, overwrite: bool = False
) -> Path:
    """Write the model (safetensors), tokenizer and ``sparsity.json`` to ``out`` atomically, holding
    the output's lock (:func:`~eggs_ptp.formats.output.claim_output`) meanwhile."""
    out = Path(out)
    check_output_target(out, overwrite)
    with claim_output(out), staged_folder(out) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_record(staging, report)
    return out


def write_record(folder: Path, report: PruneReport) -> None:
    """``sparsity.json``, and beside it the grids of a quantized run (:data:`~eggs_ptp.quant.GRID_FILE`)."""
    grids = report.grids
    if grids:
        save_grids(folder / GRID_FILE, grids)
    write_json_atomic(folder / REPORT_FILE, report.to_dict())


def read_report(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"{folder} does not exist or is not a folder; give a checkpoint folder written by eggs-ptp prune"
        )
    path = folder / REPORT_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {REPORT_FILE}; is it a checkpoint written by eggs-ptp prune?")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("type") != "eggs-ptp/sparsity":
        raise ValueError(f"{path} is not an eggs-ptp sparsity record")
    return data


__all__ = [
    "REPORT_FILE",
    "read_report",
    "save_pruned",
    "staged_folder",
    "write_json_atomic",
    "write_record",
]
