"""What a result depends on besides its settings: the exact weights, the libraries and the machine."""

from __future__ import annotations

import hashlib
import os
import platform
from typing import Any

import torch
from torch import nn

from eggs_ptp.models import LoadedModel
from eggs_ptp.report import library_versions

_EXTRA_PACKAGES = ("numpy", "matplotlib", "lm_eval", "datasets", "accelerate")


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of every state-dict tensor's raw bytes, in key order.

    Taken from the loaded model rather than from files, so hub ids, folders and the converted
    default are fingerprinted alike, and a different dtype or conversion shows up.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def mask_sha256(model: nn.Module, layers: list[Any]) -> str:
    """SHA-256 of the kept/pruned pattern (``weight != 0``) of the pruned ``layers``, in walk order;
    equal hashes mean bit-identical masks."""
    modules = dict(model.named_modules())
    digest = hashlib.sha256()
    for layer in layers:
        digest.update(f"{layer.name};".encode())
        digest.update((modules[layer.name].weight != 0).cpu().numpy().tobytes())
    return digest.hexdigest()


def model_identity(loaded: LoadedModel) -> dict[str, Any]:
    model = loaded.model
    return {
        "id": loaded.source,
        "location": loaded.location,
        "revision": loaded.revision,
        "weights_sha256": weights_sha256(model),
        "class": type(model).__name__,
        "model_type": model.config.model_type,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def versions() -> dict[str, str]:
    return library_versions(tuple(_EXTRA_PACKAGES))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the portable fallback
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def hardware(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _memory_gb(),
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


__all__ = ["hardware", "mask_sha256", "model_identity", "versions", "weights_sha256"]
