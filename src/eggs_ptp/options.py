"""How a prune runs, apart from what it computes: devices, dtypes, memory, progress and resume.

Nothing here changes which weights are pruned, except the dtypes, which the run's fingerprint
records so that a resume cannot mix them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from eggs_ptp.settings import setting
from eggs_ptp.walk.distributed import Ranks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = tuple(DTYPES)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` is CUDA when torch sees one, else the CPU."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec} was asked for, but torch sees no CUDA device; use --device cpu")
    return device


@dataclass(frozen=True)
class RunOptions:
    """Args:
    dtype: dtype the model is loaded and pruned in (``prune_to_folder``; ``prune`` keeps the model's).
    activation_dtype: dtype the calibration activations are kept in [default: the model's].
    device: where ``prune_to_folder`` computes: the model is loaded there (with ``low_memory``, each
        block in turn); ``prune`` leaves a model where it is.
    device_map: spread the model over devices with accelerate (not with ``low_memory``).
    low_memory: read the checkpoint lazily, holding one decoder block in memory at a time.
    offload_dir: keep calibration activations on disk here instead of in memory.
    resume: continue an interrupted run from its last finished block.
    progress_dir: where ``prune`` keeps progress after every block, for ``resume`` (``prune_to_folder``
        keeps it beside its output).
    overwrite: replace a non-empty output folder, once the new one is complete.
    trust_remote_code: run the Python code a model ships (``auto_map``); off, such models are refused.
    progress: show progress bars.
    ranks: this process's place in a ``torchrun`` group [default: read from the environment].
    """

    dtype: str = setting("float32", "Dtype to load and prune the model in.", choices=DTYPE_NAMES)
    activation_dtype: str | None = setting(
        None, "Dtype the calibration activations are kept in [default: --dtype].", choices=DTYPE_NAMES
    )
    device: str = setting("auto", "Compute device: auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    device_map: str | None = setting(
        None,
        "Spread the model over several devices with accelerate (auto, balanced, sequential); not with --low-memory.",
    )
    low_memory: bool = setting(
        False,
        "Read the safetensors checkpoint lazily and hold one decoder block in "
        "memory at a time; the output is written block by block.",
    )
    offload_dir: Path | None = setting(None, "Keep calibration activations on disk here instead of in memory.")
    resume: bool = setting(False, "Continue an interrupted run of the same command from its last finished block.")
    overwrite: bool = setting(False, "Replace a non-empty output folder (only once the new checkpoint is complete).")
    trust_remote_code: bool = setting(
        False, "Run the Python code a model folder or hub repository ships, if it has any; only for code you trust."
    )
    progress_dir: Path | None = None
    progress: bool = True
    ranks: Ranks | None = None

    def __post_init__(self) -> None:
        resolve_dtype(self.dtype)
        if self.activation_dtype is not None:
            resolve_dtype(self.activation_dtype)
        if self.low_memory and self.device_map:
            raise ValueError("--low-memory holds one block at a time on --device; it cannot use --device-map")

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    @property
    def torch_activation_dtype(self) -> torch.dtype | None:
        return resolve_dtype(self.activation_dtype) if self.activation_dtype else None

    def replace(self, **changes: Any) -> RunOptions:
        return replace(self, **changes)


__all__ = ["DTYPES", "DTYPE_NAMES", "RunOptions", "resolve_device", "resolve_dtype"]
