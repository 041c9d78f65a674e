"""Where the calibration activations between two blocks live: in memory, or one file per window on
disk when they do not fit.

Both keep every window in the chosen dtype on the CPU; a block's forward moves one window at a
time to its own device, so the compute device only ever holds one window of activations.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eggs_ptp.errors import writing


class OffloadDirError(ValueError):
    """The activation offload folder cannot be used; the message says why."""


class ActivationStore:
    """An append-only sequence of one-window activations, shape (1, seqlen, hidden) each.

    Args:
        dtype: storage dtype; None keeps each window's own dtype.
        folder: keep windows on disk here (created, and owned by the store) instead of in memory.
    """

    def __init__(self, dtype: torch.dtype | None = None, folder: Path | None = None) -> None:
        self.dtype = dtype
        self.folder = Path(folder) if folder is not None else None
        self._windows: list[torch.Tensor] = []
        self._count = 0
        if self.folder is not None:
            _prepare_folder(self.folder)

    def sibling(self, name: str) -> "ActivationStore":
        """An empty store of the same kind, in ``name`` beside this one when on disk."""
        return ActivationStore(self.dtype, self.folder.parent / name if self.folder is not None else None)

    def append(self, window: torch.Tensor) -> None:
        stored = window.detach().to("cpu", self.dtype or window.dtype)
        if self.folder is None:
            self._windows.append(stored.clone() if stored.data_ptr() == window.data_ptr() else stored)
        else:
            with writing(self.window_path(self._count)):
                save_file({"hidden": stored.contiguous()}, str(self.window_path(self._count)))
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self._count <= index < self._count:
            raise IndexError(f"window {index} of {self._count}")
        index %= self._count
        if self.folder is None:
            return self._windows[index]
        return load_file(str(self.window_path(index)))["hidden"]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[index] for index in range(self._count))

    def release(self) -> None:
        """Drop the windows (and their folder); the store is empty afterwards."""
        self._windows.clear()
        self._count = 0
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def window_path(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"window-{index:06d}.safetensors"


@dataclass
class Streams:
    """The windows entering a block inside the pruned model, and inside the dense model when the
    method fits the dense model's outputs (until the first block is pruned, the same store)."""

    pruned: ActivationStore
    dense: ActivationStore | None = None

    def release(self) -> None:
        self.pruned.release()
        if self.dense is not None and self.dense is not self.pruned:
            self.dense.release()


def _prepare_folder(folder: Path) -> None:
    try:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OffloadDirError(
            f"cannot write activations to {folder}: {error.strerror or error}; give a writable --offload-dir"
        ) from error


def persist(windows: ActivationStore, folder: Path) -> None:
    """Write a copy of every window to the new ``folder`` (hard links when already on disk).

    The copy is written beside ``folder`` and renamed into place, so ``folder`` is complete
    whenever it exists.
    """
    staging = folder.with_name(f".{folder.name}.partial")
    for stale in (staging, folder):
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(parents=True)
    for index in range(len(windows)):
        target = staging / f"window-{index:06d}.safetensors"
        if windows.folder is not None:
            os.link(windows.window_path(index), target)
        else:
            save_file({"hidden": windows[index].contiguous()}, str(target))
    staging.rename(folder)


def restore(folder: Path, dtype: torch.dtype | None, offload: Path | None) -> ActivationStore:
    """The windows written by :func:`persist`, in a new store."""
    files = sorted(folder.glob("window-*.safetensors"))
    store = ActivationStore(dtype, offload)
    for path in files:
        store.append(load_file(str(path))["hidden"])
    return store


__all__ = ["ActivationStore", "OffloadDirError", "Streams", "persist", "restore"]
