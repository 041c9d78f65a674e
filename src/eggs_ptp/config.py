"""One frozen config per pruning run; validated on construction, recorded in ``sparsity.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from eggs_ptp.pattern import Pattern
from eggs_ptp.selectors import RULES

SCHEMA_VERSION = 1

ALLOCATIONS = ("uniform", "owl")


@dataclass(frozen=True)
class PruneConfig:
    """Args:
    method: a registered method name (``eggs-ptp prune --help`` lists them).
    pattern: ``"N:M"`` (keep N of every M along the input dimension) or a sparsity like ``"0.5"``.
    b: EGGS: minimum kept weights per input column in every tile (0 <= b <= N; 0 is RIA).
    rule: EGGS selection rule: diagonal, matching or repair.
    tile_height: EGGS: rows per tile, a multiple of M; None means the default multiple of M.
    alpha: exponent of the activation norm in the RIA score.
    nsamples, seqlen, seed: calibration windows, their length in tokens, and the sampling seed.
    calib: calibration source: ``wiki`` (embedded default), a .txt/.jsonl path, or ``hf:NAME``.
    include, exclude: glob patterns on module names (``*.mlp.*``); exclude wins.
    damping, blocksize: SparseGPT's Hessian damping fraction and column block.
    auto: EGGS: choose rule, B and H per layer from its calibration reconstruction error.
    permute: N:M: permute input channels where the permutation folds exactly into the producing
        layer, so more score survives and the stored weights stay N:M in memory order.
    allocation: unstructured: ``uniform`` (every layer at the target) or ``owl`` (outlier-weighted
        per-block sparsity with the same mean).
    owl_lambda, owl_threshold: OWL's largest deviation from the mean sparsity, and the multiple of
        the mean score above which a weight counts as an outlier.
    """

    method: str = "eggs"
    pattern: str = "2:4"
    b: int = 1
    rule: str = "repair"
    tile_height: int | None = None
    alpha: float = 0.5
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    calib: str = "wiki"
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    damping: float = 0.01
    blocksize: int = 128
    auto: bool = False
    permute: bool = False
    allocation: str = "uniform"
    owl_lambda: float = 0.08
    owl_threshold: float = 5.0

    def __post_init__(self) -> None:
        from eggs_ptp.methods import build_method, method_names
        from eggs_ptp.methods.registry import is_structured_only

        if self.method not in method_names():
            raise ValueError(
                f"unknown method {self.method!r}; choose one of: {', '.join(method_names())}"
            )
        pattern = Pattern.parse(self.pattern)  # raises ValueError with the reason
        object.__setattr__(self, "pattern", str(pattern))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if is_structured_only(self.method) and not pattern.structured:
            raise ValueError(f"method {self.method!r} needs an N:M pattern such as 2:4, not {self.pattern}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.auto and not self.method.startswith("eggs"):
            raise ValueError(f"auto chooses EGGS settings per layer; it needs an eggs method, not {self.method!r}")
        if self.permute and not pattern.structured:
            raise ValueError("permute keeps an N:M layout; it needs an N:M pattern such as 2:4")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.allocation == "owl" and pattern.structured:
            raise ValueError("owl allocation varies sparsity per layer; it needs an unstructured pattern like 0.5")
        if not 0 <= self.owl_lambda < 1 or self.owl_threshold <= 0:
            raise ValueError(
                f"owl_lambda must lie in [0, 1) and owl_threshold be positive, got {self.owl_lambda}, "
                f"{self.owl_threshold}"
            )
        for name in ("nsamples", "seqlen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")
        build_method(self)  # method-specific settings (B, tile height, damping) are checked there

    @property
    def parsed_pattern(self) -> Pattern:
        return Pattern.parse(self.pattern)

    def replace(self, **changes: Any) -> "PruneConfig":
        return PruneConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {"type": "PruneConfig", "schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneConfig":
        if data.get("type") != "PruneConfig":
            raise ValueError(f"not a PruneConfig record (type {data.get('type')!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"PruneConfig schema version {data.get('schema_version')} is not {SCHEMA_VERSION}"
            )
        fields = {k: v for k, v in data.items() if k not in ("type", "schema_version")}
        for name in ("include", "exclude"):
            fields[name] = tuple(fields.get(name, ()))
        return cls(**fields)
