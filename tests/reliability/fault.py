"""Run ``eggs-ptp ARGS`` in this process with a fault at a named point of the run; and the helpers
the fault tests share to run real processes and compare their outputs.

    python fault.py POINT ACTION ARGS...

POINT is where: ``calibration`` (the statistics forward of block 1), ``block-N`` (right after block
N's progress is committed) or ``save`` (inside the final staging folder, once the weights are
written). ACTION is ``kill`` (SIGKILL, so no handler or ``finally`` runs) or ``pause:SECONDS``
(hold the run there, e.g. so that a second run meets it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


FAULT = Path(__file__)


def environment() -> dict[str, str]:
    # One thread in every process: the same arithmetic whichever run is compared with which.
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def command(model: Path, out: Path, calib: Path, *extra: str) -> list[str]:
    return [
        "prune", str(model), "-o", str(out), "--nsamples", "4", "--seqlen", "16", "--calib", str(calib),
        "--method", "sparsegpt", "-q", *extra,
    ]  # fmt: skip


def run(arguments: list[str], fault: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    prefix = [str(FAULT), *fault] if fault else ["-m", "eggs_ptp"]
    return subprocess.run(
        [sys.executable, *prefix, *arguments], env=environment(), capture_output=True, text=True, timeout=300
    )


def layers(folder: Path) -> list[dict]:
    record = json.loads((folder / "sparsity.json").read_text())
    return [{k: v for k, v in layer.items() if k != "seconds"} for layer in record["layers"]]


def weight_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if ".safetensors" in p.name}


def assert_identical(result: Path, reference: Path) -> None:
    assert weight_files(result) == weight_files(reference) != {}
    assert layers(result) == layers(reference)


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def act(action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    seconds = float(action.removeprefix("pause:"))
    print(f"paused {os.getpid()}", file=sys.stderr, flush=True)
    time.sleep(seconds)


def install(point: str, action: str) -> None:
    import eggs_ptp.formats.checkpoint as checkpoint
    import eggs_ptp.walk.resume as resume
    import eggs_ptp.walk.sequential as sequential

    if point == "calibration":
        run_block = sequential.run_block

        def calibrate_then_fault(block, call, hidden, index, stage, *args, **kwargs):
            if stage == "calibration" and index == 1:
                act(action)
            return run_block(block, call, hidden, index, stage, *args, **kwargs)

        sequential.run_block = calibrate_then_fault
    elif point.startswith("block-"):
        wanted, save_block = int(point.removeprefix("block-")), resume.RunProgress.save_block

        def save_then_fault(self, index, *args, **kwargs):
            save_block(self, index, *args, **kwargs)
            if index == wanted:
                act(action)

        resume.RunProgress.save_block = save_then_fault
    elif point == "save":
        write = checkpoint.write_json_atomic  # the report is the last file written into the staging folder

        def fault_then_write(path, data):
            if ".partial-" in str(path):
                act(action)
            return write(path, data)

        checkpoint.write_json_atomic = fault_then_write
    else:
        raise SystemExit(f"unknown fault point {point}")


if __name__ == "__main__":
    install(sys.argv[1], sys.argv[2])
    from eggs_ptp.cli import main

    main(sys.argv[3:], prog_name="eggs-ptp")
