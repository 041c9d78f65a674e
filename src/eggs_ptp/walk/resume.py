"""A run's progress on disk, so that a killed run continues where it stopped with identical results.

After each block: rank 0 writes the pruned block's tensors, every rank writes its share of the next
block's inputs into a folder named after that block, and rank 0 then writes ``state.json``, the
commit point, which names that folder. A crash at any moment leaves a ``state.json`` that points at
complete files. ``run.json`` fingerprints what the results depend on; a resume that differs in any
of it is refused, naming the difference.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from eggs_ptp.atomic import atomic_path, write_atomic
from eggs_ptp.errors import read_json, writing
from eggs_ptp.quant import Grid, load_grids, save_grids
from eggs_ptp.walk.activations import ActivationStore, persist, restore
from eggs_ptp.walk.block import LayerReport
from eggs_ptp.walk.distributed import Ranks

RUN_FILE = "run.json"
STATE_FILE = "state.json"


class ResumeError(ValueError):
    """Progress on disk cannot be continued by this run; the message says why and what to do."""


def resumable(error: BaseException) -> bool:
    """Whether a rerun with ``--resume`` can get past ``error``: an interruption (Ctrl-C, a signal,
    anything that is not an ``Exception``), a full disk or another OS error, or memory. Bad settings,
    NaN activations or a singular Hessian would recur from the same inputs."""
    return not isinstance(error, Exception) or isinstance(error, (OSError, MemoryError, torch.OutOfMemoryError))


@dataclass
class Resumed:
    """What a resumed run picks up."""

    next_block: int
    layers: list[LayerReport]
    allocation: dict[str, Any] | None
    seconds: float  # spent by the earlier attempts
    inputs: ActivationStore  # block ``next_block``'s inputs (this rank's share)
    dense_inputs: ActivationStore | None = None  # the same inside the dense model, for a dense-model target


def progress_folder(out: Path) -> Path:
    """Where a run writing to ``out`` keeps its progress: a hidden folder beside it."""
    out = Path(out)
    return out.resolve().parent / f".{out.name}.progress"


def completed_blocks(folder: Path) -> int:
    """How many blocks the progress in ``folder`` holds."""
    state = Path(folder) / STATE_FILE
    return read_json(state)["next_block"] if state.is_file() else 0


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _layer_report(record: dict[str, Any]) -> LayerReport:
    return LayerReport(**{**record, "shape": tuple(record["shape"])})


class RunProgress:
    """Args:
    folder: the progress folder (:func:`progress_folder`).
    fingerprint: JSON-able settings the results depend on (config, model, calibration, dtypes).
    ranks: the process group, when distributed; only rank 0 writes shared files.
    """

    def __init__(self, folder: Path, fingerprint: dict[str, Any], ranks: Ranks | None = None) -> None:
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it will read back
        self.ranks = ranks

    @property
    def _writer(self) -> bool:
        return self.ranks is None or self.ranks.is_writer

    @property
    def _rank(self) -> int:
        return self.ranks.rank if self.ranks else 0

    def _sync(self) -> None:
        if self.ranks:
            self.ranks.barrier()

    def open(self, resume: bool, dtype: torch.dtype | None, offload: Path | None) -> Resumed | None:
        """Start a fresh progress folder, or with ``resume`` pick up the one there.

        Raises:
            ResumeError: progress with finished blocks exists and ``resume`` is off, or it belongs to
                a different run.
        """
        state_path = self.folder / STATE_FILE
        if not resume and completed_blocks(self.folder):  # progress with no finished block holds nothing to keep
            raise ResumeError(
                f"an interrupted run left its progress in {self.folder}; pass --resume to continue it, "
                "or delete that folder to start over"
            )
        if resume and state_path.is_file():
            self._check_fingerprint()
            state = read_json(state_path)
            saved = self.folder / state["inputs"]
            inputs = restore(saved / f"rank-{self._rank}", dtype, offload)
            dense = None
            if state.get("dense"):
                dense_offload = offload.with_name(f"dense-{offload.name}") if offload else None
                dense = restore(saved / f"dense-rank-{self._rank}", dtype, dense_offload)
            layers = [_layer_report(r) for r in state["layers"]]
            grids: dict[str, Grid] = {}
            for index in range(state["next_block"]):
                if self.grid_file(index).is_file():
                    grids.update(load_grids(self.grid_file(index)))
            for layer in layers:
                layer.grid = grids.get(layer.name)
            return Resumed(
                state["next_block"],
                layers,
                state["allocation"],
                state["seconds"],
                inputs,
                dense,
            )
        self._sync()
        if self._writer:
            shutil.rmtree(self.folder, ignore_errors=True)  # progress from before the first block: nothing kept
            (self.folder / "blocks").mkdir(parents=True)
            write_atomic(self.folder / RUN_FILE, json.dumps(self.fingerprint, indent=2) + "\n")
        self._sync()
        return None

    def _check_fingerprint(self) -> None:
        saved = _flatten(read_json(self.folder / RUN_FILE))
        current = _flatten(self.fingerprint)
        differences = [
            f"{key} was {saved.get(key)!r}, now {current.get(key)!r}"
            for key in sorted(set(saved) | set(current))
            if saved.get(key) != current.get(key)
        ]
        if differences:
            raise ResumeError(
                f"cannot resume the run in {self.folder}: {'; '.join(differences)}; rerun with the same "
                "settings, or delete that folder to start over"
            )

    def block_file(self, index: int) -> Path:
        return self.folder / "blocks" / f"block-{index:05d}.safetensors"

    def grid_file(self, index: int) -> Path:
        return self.folder / "blocks" / f"grids-{index:05d}.safetensors"

    def save_block(
        self,
        index: int,
        tensors: dict[str, torch.Tensor],
        layers: list[LayerReport],
        inputs: ActivationStore,
        allocation: dict[str, Any] | None,
        seconds: float,
        dense: ActivationStore | None = None,
        grids: dict[str, Grid] | None = None,
    ) -> None:
        """Persist block ``index`` as done: its tensors, its layers' quantization grids, block
        ``index + 1``'s inputs (and their dense model counterparts, when carried), then the state."""
        name = f"inputs-{index + 1:05d}"
        if self._writer:
            with writing(self.block_file(index)), atomic_path(self.block_file(index)) as temporary:
                save_file(
                    {key: value.detach().cpu().contiguous() for key, value in tensors.items()},
                    str(temporary),
                    metadata={"format": "pt"},
                )
            if grids:
                with writing(self.grid_file(index)), atomic_path(self.grid_file(index)) as temporary:
                    save_grids(temporary, grids)
        with writing(self.folder / name):
            persist(inputs, self.folder / name / f"rank-{self._rank}")
            if dense is not None:
                persist(dense, self.folder / name / f"dense-rank-{self._rank}")
        self._sync()
        if self._writer:
            state = {
                "next_block": index + 1,
                "inputs": name,
                "dense": dense is not None,
                "layers": [layer.to_dict() for layer in layers],
                "allocation": allocation,
                "seconds": seconds,
            }
            write_atomic(self.folder / STATE_FILE, json.dumps(state) + "\n")
            for stale in self.folder.glob("inputs-*"):
                if stale.name != name:
                    shutil.rmtree(stale, ignore_errors=True)
        self._sync()

    def load_block(self, index: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.block_file(index)))

    def abandon(self, error: BaseException) -> None:
        """After a failure: keep finished blocks only when a rerun with ``--resume`` can get past it;
        a failure the same inputs would repeat removes the progress, so the next run starts clean.
        Progress this run refused to continue (a :class:`ResumeError`) is not its own to remove."""
        if not self._writer or not self.folder.exists() or isinstance(error, ResumeError):
            return
        if not resumable(error) or not completed_blocks(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self) -> None:
        """Delete the progress once the output is in place."""
        self._sync()
        if self._writer:
            shutil.rmtree(self.folder, ignore_errors=True)


__all__ = [
    "RUN_FILE",
    "STATE_FILE",
    "ResumeError",
    "Resumed",
    "RunProgress",
    "completed_blocks",
    "progress_folder",
    "resumable",
]
