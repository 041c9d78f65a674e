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

from eggs_ptp.atomic import write_atomic
from eggs_ptp.report import PruneReport

REPORT_FILE = "sparsity.json"


class OutputExistsError(ValueError):
    """The output folder exists and holds files, and overwriting was not asked for."""


def check_output_target(out: Path, overwrite: bool) -> None:
    """Fail before any work if ``out`` cannot receive the result."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    parent = out.resolve().parent
    if not parent.exists():
        parent.mkdir(parents=True)
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"cannot write into {parent}; choose another output folder")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out`` (already checked with ``check_output_target``)
    and rename it into place only when the body succeeds; an existing ``out`` is retired only then."""
    out = Path(out)
    staging = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.partial-"))
    try:
        yield staging
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
    """Write the model (safetensors), tokenizer and ``sparsity.json`` to ``out`` atomically."""
    out = Path(out)
    check_output_target(out, overwrite)
    with staged_folder(out) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        write_json_atomic(staging / REPORT_FILE, report.to_dict())
    return out


def read_report(folder: Path) -> dict[str, Any]:
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        raise ValueError(f"{folder} has no {REPORT_FILE}; is it a checkpoint written by eggs-ptp prune?")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("type") != "eggs-ptp/sparsity":
        raise ValueError(f"{path} is not an eggs-ptp sparsity record")
    return data


__all__ = [
    "REPORT_FILE",
    "OutputExistsError",
    "check_output_target",
    "read_report",
    "save_pruned",
    "staged_folder",
    "write_json_atomic",
]
