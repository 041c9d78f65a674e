"""The record of one pruning run, written as ``sparsity.json`` beside the checkpoint."""

from __future__ import annotations

import platform
import resource
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from eggs_ptp.config import PruneConfig
from eggs_ptp.methods import build_method
from eggs_ptp.quant import GRID_FILE, Grid, HeadRecord
from eggs_ptp.walk import LayerReport

REPORT_TYPE = "eggs-ptp/sparsity"
REPORT_VERSION = 2  # 2: the config nests the method's settings (PruneConfig schema 2)


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Python, platform and the versions of the libraries that shape results (plus ``extra``)."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("eggs-ptp", "torch", "transformers", "safetensors", "scipy", *extra):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far.

    Linux's ``VmHWM`` when available: ``ru_maxrss`` survives ``exec``, so a process started by a
    large parent (a benchmark harness) would report the parent's size at the fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_cuda_mb() -> float | None:
    """Peak memory allocated on the current CUDA device so far, when CUDA was used."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


@dataclass
class PruneReport:
    config: PruneConfig
    model: dict[str, Any]
    calibration: dict[str, Any]
    layers: list[LayerReport]
    seconds: float
    peak_rss_mb: float
    versions: dict[str, str] = field(default_factory=library_versions)
    evaluation: dict[str, Any] | None = None  # dense and pruned perplexity, when measured
    allocation: dict[str, Any] | None = None  # per-block sparsities, when not uniform
    resumed_at_block: int | None = None  # the block a resumed run continued from
    peak_cuda_mb: float | None = None  # when the run used CUDA
    head: HeadRecord | None = None  # the output head, when the run rounded it to its grid (--quantize-head)

    @property
    def grids(self) -> dict[str, Grid]:
        """Each quantized layer's grid, by name, the output head's among them when it was rounded."""
        grids = {layer.name: layer.grid for layer in self.layers if layer.grid is not None}
        return grids if self.head is None else {**grids, self.head.name: self.head.grid}

    @property
    def pruned_layers(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.skipped is None]

    @property
    def skipped_layers(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.skipped is not None]

    def summary(self) -> dict[str, Any]:
        pruned = self.pruned_layers
        weights = sum(l.shape[0] * l.shape[1] for l in pruned)
        kept = sum(l.kept_fraction * l.shape[0] * l.shape[1] for l in pruned)
        errors = [l.recon_error for l in pruned]
        experts = [l.expert for l in pruned if l.expert]
        routed = sorted(e["routed_tokens"] for e in experts if e["routed_tokens"] is not None)
        return {
            "pruned_layers": len(pruned),
            "skipped_layers": len(self.skipped_layers),
            "expert_matrices": len(experts),
            "routed_tokens_per_expert": {"min": routed[0], "median": routed[len(routed) // 2], "max": routed[-1]}
            if routed
            else None,
            "pruned_weights": weights,
            "kept_fraction": kept / weights if weights else None,
            "mean_recon_error": sum(errors) / len(errors) if errors else None,
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_cuda_mb": self.peak_cuda_mb,
        }

    def to_dict(self) -> dict[str, Any]:
        scheme = self.config.method.quant_scheme
        return {
            "type": REPORT_TYPE,
            "schema_version": REPORT_VERSION,
            "method": self.config.method.label,
            "pattern": self.config.pattern,
            "config": self.config.to_dict(),
            "stages": build_method(self.config.method, self.config.parsed_pattern).describe(),
            "model": self.model,
            "calibration": self.calibration,
            "summary": self.summary(),
            "versions": self.versions,
            "evaluation": self.evaluation,
            "allocation": self.allocation,
            "resumed_at_block": self.resumed_at_block,
            "quantization": {
                **scheme.to_dict(),
                "file": GRID_FILE,
                "head": None if self.head is None else self.head.to_dict(),
            }
            if scheme
            else None,
            "layers": [layer.to_dict() for layer in self.layers],
        }


__all__ = ["REPORT_TYPE", "REPORT_VERSION", "PruneReport", "library_versions", "peak_cuda_mb", "peak_rss_mb"]
