"""What a pruning run computes: the settings every method shares, and the method's own config.

Frozen and validated on construction; recorded in ``sparsity.json`` (schema version 2, which nests
the method's settings under ``method``). Version 1 records, one flat list of every method's
fields, still load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from eggs_ptp.methods.configs import EggsConfig, MethodConfig, method_config, method_from_dict
from eggs_ptp.models.experts import EXPERT_CALIBRATIONS, ROUTED
from eggs_ptp.pattern import Pattern
from eggs_ptp.settings import setting

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class OwlAllocation:
    """Outlier-weighted per-block sparsity (Yin et al., 2024) with the target as its mean."""

    deviation: float = setting(0.08, "OWL: largest deviation of a block's sparsity from the mean.", "--owl-lambda")
    threshold: float = setting(
        5.0, "OWL: an outlier's score is this multiple of its layer's mean score.", "--owl-threshold"
    )

    def __post_init__(self) -> None:
        if not 0 <= self.deviation < 1 or self.threshold <= 0:
            raise ValueError(
                f"owl lambda must lie in [0, 1) and the owl threshold be positive, got "
                f"{self.deviation}, {self.threshold}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"name": "owl", "lambda": self.deviation, "threshold": self.threshold}


ALLOCATIONS = ("uniform", "owl")


@dataclass(frozen=True)
class PruneConfig:
    """Args:
    method: the method's config (``EggsConfig(b=2)``), or a method name (``"eggs+update"``) for its
        defaults.
    pattern: ``"N:M"`` (keep N of every M along the input dimension) or a sparsity like ``"0.5"``.
    nsamples, seqlen, seed: calibration windows, their length in tokens, and the sampling seed.
    calib: calibration source: ``wiki`` (embedded default), a .txt/.jsonl path, or ``hf:NAME``.
    include, exclude: glob patterns on module names (``*.mlp.*``); exclude wins.
    permute: N:M: permute input channels where the permutation folds exactly into the producing
        layer, so more score survives and the stored weights stay N:M in memory order.
    experts: mixture-of-experts models: ``routed`` calibrates each expert on the tokens its router
        sends it (an expert no token reaches, on every token); ``weighted`` on them scaled by their
        routing weights; ``all`` on every token.
    allocation: unstructured: None (every layer at the target) or :class:`OwlAllocation`.
    """

    method: MethodConfig = field(default_factory=EggsConfig)
    pattern: str = setting("2:4", "N:M, keep N of every M along the input dimension, or a sparsity like 0.5.")
    nsamples: int = setting(128, "Calibration windows.")
    seqlen: int = setting(2048, "Tokens per calibration window (capped by the model's context).")
    seed: int = setting(0, "Seed of the calibration window starts.")
    calib: str = setting(
        "wiki", "Calibration text: 'wiki' (embedded), a .txt/.jsonl file, or hf:DATASET[:CONFIG[:SPLIT]]."
    )
    include: tuple[str, ...] = setting(
        (), "Only prune layers whose name matches this glob (repeatable), e.g. '*.mlp.*'."
    )
    exclude: tuple[str, ...] = setting((), "Never prune layers whose name matches this glob (repeatable).")
    permute: bool = setting(
        False, "N:M: permute input channels where the permutation folds exactly into the producing layer."
    )
    experts: str = setting(
        ROUTED,
        "Mixture-of-experts: calibrate each expert on the tokens routed to it (routed), on them scaled by "
        "their routing weights (weighted), or on every token (all).",
        "--expert-calibration",
        EXPERT_CALIBRATIONS,
    )
    allocation: OwlAllocation | None = None

    def __post_init__(self) -> None:
        if isinstance(self.method, str):
            object.__setattr__(self, "method", method_config(self.method))
        if not isinstance(self.method, MethodConfig):
            raise ValueError(
                f"method must be a method config such as EggsConfig() or a method name, got {self.method!r}"
            )
        pattern = Pattern.parse(self.pattern)  # raises ValueError with the reason
        object.__setattr__(self, "pattern", str(pattern))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        self.method.check(pattern)
        if self.permute and not pattern.structured:
            raise ValueError("permute keeps an N:M layout; it needs an N:M pattern such as 2:4")
        if self.permute and self.method.sequential:
            raise ValueError(
                "permute folds each permutation into layers a sequential calibration has already pruned; "
                "use --permute or --sequential, not both"
            )
        if self.experts not in EXPERT_CALIBRATIONS:
            raise ValueError(
                f"expert calibration must be one of {', '.join(EXPERT_CALIBRATIONS)}, got {self.experts!r}"
            )
        if self.allocation is not None and pattern.structured:
            raise ValueError("owl allocation varies sparsity per layer; it needs an unstructured pattern like 0.5")
        for name in ("nsamples", "seqlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def parsed_pattern(self) -> Pattern:
        return Pattern.parse(self.pattern)

    def replace(self, **changes: Any) -> PruneConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        shared = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("method", "allocation")}
        return {
            "type": "PruneConfig",
            "schema_version": SCHEMA_VERSION,
            "method": self.method.to_dict(),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in shared.items()},
            "allocation": self.allocation.to_dict() if self.allocation else "uniform",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        if data.get("type") != "PruneConfig":
            raise ValueError(f"not a PruneConfig record (type {data.get('type')!r})")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"PruneConfig schema version {version} is not one this eggs-ptp reads "
                f"({', '.join(map(str, READABLE_VERSIONS))}); upgrade eggs-ptp"
            )
        if version == 1:
            data = upgrade_v1(data)
        allocation = data.get("allocation", "uniform")
        shared = {
            f.name: data[f.name] for f in fields(cls) if f.name in data and f.name not in ("method", "allocation")
        }
        return cls(
            method=method_from_dict(data["method"]),
            **shared,
            allocation=None
            if allocation == "uniform"
            else OwlAllocation(allocation["lambda"], allocation["threshold"]),
        )


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 record (every method's fields side by side) in version 2's shape."""
    base = asdict(method_config(data["method"]))
    own = {name: data[name] for name in base if name in data}
    allocation = (
        "uniform"
        if data.get("allocation", "uniform") == "uniform"
        else {"name": "owl", "lambda": data.get("owl_lambda", 0.08), "threshold": data.get("owl_threshold", 5.0)}
    )
    shared = {
        name: data[name]
        for name in ("pattern", "nsamples", "seqlen", "seed", "calib", "include", "exclude", "permute")
        if name in data
    }
    return {
        "type": "PruneConfig",
        "schema_version": SCHEMA_VERSION,
        "method": {"name": data["method"], **own},
        **shared,
        "allocation": allocation,
    }


__all__ = ["ALLOCATIONS", "READABLE_VERSIONS", "SCHEMA_VERSION", "OwlAllocation", "PruneConfig", "upgrade_v1"]
