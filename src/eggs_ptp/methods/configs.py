"""One frozen config type per method family, holding only that family's settings.

A config is what a user chooses; :func:`eggs_ptp.methods.build_method` turns it, with the run's
pattern, into the :class:`~eggs_ptp.methods.Method` the walk runs. Each field's ``metadata`` holds
its help text and CLI flag, so the CLI declares nothing twice. A family may have several names
(``eggs``, ``eggs+update``): a name is the family with some fields preset, and a config's
:attr:`~MethodConfig.label` names it back (``eggs(b=2)``), so grids can hold settings side by side.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import QUANTIZE, QuantScheme
from eggs_ptp.selectors import RULES
from eggs_ptp.settings import setting

# EGGS tile height when none is given, in multiples of M: the best EGGS setting in
# benchmarks/results/prune_grid_64x512.md (repair, B = 1, H = 64M), though not better than RIA beyond noise.
DEFAULT_TILE_FACTOR = 64


@dataclass(frozen=True)
class MethodName:
    """A name users type: the family's config type with some fields preset."""

    name: str
    help: str
    preset: dict[str, Any]


TARGETS = ("layer", "model")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method family's settings; its own fields are the stages any family composes with."""

    family: ClassVar[str]
    title: ClassVar[str]  # how help and reports spell the family
    names: ClassVar[tuple[MethodName, ...]]
    structured_only: ClassVar[bool] = False

    target: str = setting(
        "layer",
        "What each pruned layer is fitted to: the dense layer on the pruned model's inputs (layer), or the "
        "dense model's own outputs (model; carries the dense model's activations, one more block forward "
        "per block, and calibrates sequentially).",
        choices=TARGETS,
    )
    sequential: bool = setting(
        False,
        "Calibrate each layer on the outputs of its block's already-pruned layers (q/k/v, then o, then "
        "gate/up, then down: one block forward per group) instead of on the dense block's.",
    )
    swaps: bool = setting(
        False,
        "N:M: improve each mask by exact swaps inside its M-groups under the layer's reconstruction error "
        "(keeping EGGS's guarantee), then re-fit the kept weights.",
    )
    reconstruct: int = setting(
        0,
        "Block reconstruction: at most this many epochs of Adam on each pruned block's kept weights, masks "
        "fixed, so that its outputs match the dense block's; stops early on held-out windows (0 = off).",
    )
    quantize: str = setting(
        "none",
        "Quantize the kept weights: int8 (symmetric, per output channel) or int4 (groups of --group-size "
        "inputs). Methods with a Hessian quantize in an OBS sweep that spreads each rounding error (GPTQ); "
        "the others round to nearest.",
        choices=QUANTIZE,
    )
    group_size: int = setting(128, "int4: input columns sharing a scale, a multiple of 32.")
    asymmetric: bool = setting(False, "int4: a zero point per group, the grid spanning min to max.")
    rtn: bool = setting(False, "Quantize by rounding to nearest even where the method has a Hessian (for comparison).")
    quantize_head: bool = setting(
        False,
        "Also round the output head (lm_head, and the input embedding when tied to it) to nearest on an int8 "
        "grid, one scale per output channel, whatever --quantize; it is not pruned. One-token decoding reads "
        "all of it on every step.",
    )

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.reconstruct < 0:
            raise ValueError(f"reconstruct must be a number of epochs, 0 or more, got {self.reconstruct}")
        scheme = self.quant_scheme
        if scheme is None and self.rtn:
            raise ValueError("rtn chooses how weights are quantized; it needs --quantize int8 or int4")
        if scheme is None and self.quantize_head:
            raise ValueError("--quantize-head rounds the head of a quantized run; it needs --quantize int8 or int4")
        if scheme is not None and self.reconstruct:
            raise ValueError(
                "block reconstruction trains the kept weights off their quantization grid; "
                "use --reconstruct or --quantize, not both"
            )
        self.validate()

    @property
    def quant_scheme(self) -> QuantScheme | None:
        return QuantScheme.parse(self.quantize, self.group_size, self.asymmetric)

    def validate(self) -> None:
        """Raise ValueError naming a setting that is wrong whatever the pattern."""

    def check(self, pattern: Pattern) -> None:
        """Raise ValueError naming a setting that does not fit ``pattern``."""
        if self.structured_only and not pattern.structured:
            raise ValueError(f"method {self.name!r} needs an N:M pattern such as 2:4, not {pattern}")
        if self.swaps and not pattern.structured:
            raise ValueError(f"swaps exchange weights inside N:M groups; they need an N:M pattern, not {pattern}")

    @property
    def name(self) -> str:
        """The most specific registered name whose preset this config matches."""
        matching = [n for n in self.names if all(getattr(self, k) == v for k, v in n.preset.items())]
        return max(matching, key=lambda n: len(n.preset)).name

    @property
    def label(self) -> str:
        """``name`` plus the settings that differ from that name's defaults: ``eggs(b=2)``."""
        base = method_config(self.name)
        changed = [
            f"{f.name}={_written(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        ]
        return f"{self.name}({', '.join(changed)})" if changed else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _check_alpha(alpha: float) -> None:
    if alpha < 0:
        raise ValueError(f"alpha must be non-negative, got {alpha}")


def _check_obs(damping: float, blocksize: int) -> None:
    _positive("damping", damping)
    if blocksize < 1:
        raise ValueError(f"blocksize must be at least 1, got {blocksize}")


ALPHA_HELP = "RIA/EGGS: exponent of the activation norm."
DAMPING_HELP = "SparseGPT/EGGS+update: Hessian damping, a fraction of its mean diagonal."
BLOCKSIZE_HELP = "SparseGPT/EGGS+update: columns per OBS update block."


@dataclass(frozen=True)
class MagnitudeConfig(MethodConfig):
    family: ClassVar[str] = "magnitude"
    title: ClassVar[str] = "Magnitude"
    names: ClassVar[tuple[MethodName, ...]] = (MethodName("magnitude", "|W|, no calibration needed", {}),)


@dataclass(frozen=True)
class WandaConfig(MethodConfig):
    family: ClassVar[str] = "wanda"
    title: ClassVar[str] = "Wanda"
    names: ClassVar[tuple[MethodName, ...]] = (MethodName("wanda", "|W| * ||X_j|| (Sun et al., 2023)", {}),)


@dataclass(frozen=True)
class RiaConfig(MethodConfig):
    family: ClassVar[str] = "ria"
    title: ClassVar[str] = "RIA"
    names: ClassVar[tuple[MethodName, ...]] = (
        MethodName("ria", "relative importance * ||X_j||^a (Zhang et al., 2024)", {}),
    )

    alpha: float = setting(0.5, ALPHA_HELP)

    def validate(self) -> None:
        _check_alpha(self.alpha)


@dataclass(frozen=True)
class SparseGPTConfig(MethodConfig):
    family: ClassVar[str] = "sparsegpt"
    title: ClassVar[str] = "SparseGPT"
    names: ClassVar[tuple[MethodName, ...]] = (
        MethodName("sparsegpt", "OBS saliency with weight update (Frantar & Alistarh, 2023)", {}),
        MethodName(
            "sparsegpt+refit",
            "SparseGPT, then a least-squares re-fit of the kept weights to the dense outputs",
            {"refit": True},
        ),
    )

    damping: float = setting(0.01, DAMPING_HELP)
    blocksize: int = setting(128, BLOCKSIZE_HELP)
    refit: bool = False

    def validate(self) -> None:
        _check_obs(self.damping, self.blocksize)


@dataclass(frozen=True)
class EggsConfig(MethodConfig):
    family: ClassVar[str] = "eggs"
    title: ClassVar[str] = "EGGS"
    names: ClassVar[tuple[MethodName, ...]] = (
        MethodName("eggs", "RIA score + expander guarantee: every input keeps >= B per tile (EGGS-PTP)", {}),
        MethodName(
            "eggs+update",
            "EGGS guarantee on the OBS saliency inside SparseGPT's sweep, then a least-squares re-fit",
            {"update": True},
        ),
    )
    structured_only: ClassVar[bool] = True

    b: int = setting(1, "EGGS: kept weights every input channel keeps per tile (0 = RIA).")
    rule: str = setting("repair", "EGGS selection rule.", choices=RULES)
    tile_height: int | None = setting(None, "EGGS: rows per tile, a multiple of M [default: 64 x M].")
    alpha: float = setting(0.5, ALPHA_HELP)
    auto: bool = setting(False, "EGGS: choose rule, B and H per layer from its calibration reconstruction error.")
    update: bool = False
    damping: float = setting(0.01, DAMPING_HELP)
    blocksize: int = setting(128, BLOCKSIZE_HELP)

    def validate(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.b < 0:
            raise ValueError(f"b must be non-negative, got {self.b}")
        if self.tile_height is not None and self.tile_height < 1:
            raise ValueError(f"tile_height must be positive, got {self.tile_height}")
        _check_alpha(self.alpha)
        _check_obs(self.damping, self.blocksize)

    def check(self, pattern: Pattern) -> None:
        super().check(pattern)
        if not 0 <= self.b <= pattern.n:
            raise ValueError(f"b must lie in 0..N = 0..{pattern.n} for pattern {pattern}, got {self.b}")
        height = self.tile_height_for(pattern)
        if height % pattern.m:
            raise ValueError(f"tile_height must be a positive multiple of M = {pattern.m}, got {height}")

    def tile_height_for(self, pattern: Pattern) -> int:
        return self.tile_height or DEFAULT_TILE_FACTOR * pattern.m


CONFIG_TYPES: tuple[type[MethodConfig], ...] = (MagnitudeConfig, WandaConfig, RiaConfig, SparseGPTConfig, EggsConfig)
_BY_NAME: dict[str, tuple[type[MethodConfig], MethodName]] = {
    entry.name: (kind, entry) for kind in CONFIG_TYPES for entry in kind.names
}


def method_names() -> list[str]:
    return sorted(_BY_NAME)


def method_help(name: str) -> str:
    return _BY_NAME[name][1].help


def config_type(name: str) -> type[MethodConfig]:
    if name not in _BY_NAME:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return _BY_NAME[name][0]


def method_config(name: str, **settings: Any) -> MethodConfig:
    """The config a method name stands for, with ``settings`` changed (each must be the family's)."""
    kind = config_type(name)
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(settings) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ValueError(f"method {name!r} has no setting {', '.join(unknown)}; its settings: {allowed}")
    return kind(**{**_BY_NAME[name][1].preset, **settings})


def parse_method(text: str) -> MethodConfig:
    """A config from its label: ``eggs``, ``eggs(b=2, rule='diagonal')`` or ``eggs(b=2,rule=diagonal)``."""
    text = text.strip()
    name, _, rest = text.partition("(")
    if not rest:
        return method_config(name.strip())
    if not rest.endswith(")"):
        raise ValueError(f"method {text!r}: settings must be closed by ')', e.g. eggs(b=2)")
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest[:-1].split(","))):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"method {text!r}: setting {item!r} is not KEY=VALUE")
        settings[key.strip()] = _literal(value.strip())
    return method_config(name.strip(), **settings)


def split_methods(text: str) -> list[str]:
    """Comma-separated labels, where commas inside a label's parentheses do not split:
    ``eggs(b=1, rule=diagonal),ria`` -> ``["eggs(b=1, rule=diagonal)", "ria"]``."""
    labels, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            labels.append(current)
            current = ""
        else:
            current += char
    return [label.strip() for label in [*labels, current] if label.strip()]


def _written(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _literal(value: str) -> Any:
    """Python literals as written (``2``, ``0.5``, ``True``, ``None``, ``'repair'``); bare words as strings."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def method_from_dict(data: dict[str, Any]) -> MethodConfig:
    """Inverse of :meth:`MethodConfig.to_dict`."""
    settings = {k: v for k, v in data.items() if k != "name"}
    return replace(method_config(data["name"]), **settings)


__all__ = [
    "CONFIG_TYPES",
    "DEFAULT_TILE_FACTOR",
    "TARGETS",
    "EggsConfig",
    "MagnitudeConfig",
    "MethodConfig",
    "MethodName",
    "RiaConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "config_type",
    "method_config",
    "method_from_dict",
    "method_help",
    "method_names",
    "parse_method",
    "split_methods",
]
