"""What one ``compare`` grid runs: methods x patterns x calibration seeds, and the shared settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from eggs_ptp.config import PruneConfig
from eggs_ptp.data import DEFAULT_TEXT
from eggs_ptp.methods import parse_method
from eggs_ptp.pattern import Pattern

SPEC_TYPE = "CompareSpec"


def _applies(method: str, pattern: str) -> bool:
    return Pattern.parse(pattern).structured or not parse_method(method).structured_only


@dataclass(frozen=True)
class Cell:
    """One pruning run of the grid; ``key`` names it in ``results.json``. ``method`` is a method
    config's label: a name (``eggs+update``) or a name with settings (``eggs(b=2)``)."""

    method: str
    pattern: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}|{self.pattern}|seed{self.seed}"


@dataclass(frozen=True)
class CompareSpec:
    """Args:
    methods, patterns, seeds: the grid; every method is run at every pattern with every seed,
        except N:M-only methods at unstructured patterns (listed by :meth:`skipped`). A method is a
        name or a name with settings, ``eggs(b=2, rule=diagonal)``, so one family can fill several rows.
    nsamples, seqlen, calib: calibration windows per cell, their length, and the text they come from.
    eval_text, eval_seqlen, eval_windows: perplexity text (``wiki`` = the held-out split), context
        length and number of non-overlapping windows (None = all).
    task: also score the offline zero-shot task (needs lm-evaluation-harness).
    task_limit, batch_size: score only the task's first ``task_limit`` passages (None = all); the
        harness's requests per forward pass.
    """

    methods: tuple[str, ...] = ("magnitude", "wanda", "ria", "sparsegpt", "eggs")
    patterns: tuple[str, ...] = ("2:4",)
    seeds: tuple[int, ...] = (0, 1, 2)
    nsamples: int = 64
    seqlen: int = 512
    calib: str = DEFAULT_TEXT
    eval_text: str = DEFAULT_TEXT
    eval_seqlen: int = 512
    eval_windows: int | None = 40
    task: bool = True
    task_limit: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        # Methods in their labels' canonical spelling, so "eggs(b=1)" and "eggs" are one row.
        object.__setattr__(self, "methods", tuple(parse_method(m).label for m in self.methods))
        for name in ("methods", "patterns", "seeds"):
            values = tuple(dict.fromkeys(getattr(self, name)))  # drop repeats, keep order
            if not values:
                raise ValueError(f"{name} is empty; give at least one")
            object.__setattr__(self, name, values)
        for name in ("eval_seqlen", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_windows", "task_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or unset for all), got {getattr(self, name)}")
        # Every cell's config is built now, so a bad method or pattern fails before any work;
        # patterns are stored in the configs' canonical spelling ("50%" -> "0.5").
        patterns = tuple(dict.fromkeys(PruneConfig(method="magnitude", pattern=p).pattern for p in self.patterns))
        object.__setattr__(self, "patterns", patterns)
        for cell in self.cells():
            self.config(cell)
        if not self.cells():
            raise ValueError(
                f"no cell to run: {', '.join(self.methods)} need N:M patterns, and only "
                f"{', '.join(self.patterns)} were given"
            )

    def cells(self) -> list[Cell]:
        """Pattern-major, then seed, then method: a half-done grid has whole seeds to compare.
        Pairs listed by :meth:`skipped` are left out."""
        return [Cell(m, p, s) for p in self.patterns for s in self.seeds for m in self.methods if _applies(m, p)]

    def skipped(self) -> list[dict[str, str]]:
        """Method x pattern pairs the grid cannot run (N:M-only methods at unstructured sparsity)."""
        return [
            {"method": m, "pattern": p, "reason": "the method needs an N:M pattern"}
            for p in self.patterns
            for m in self.methods
            if not _applies(m, p)
        ]

    def config(self, cell: Cell) -> PruneConfig:
        return PruneConfig(
            method=parse_method(cell.method),
            pattern=cell.pattern,
            nsamples=self.nsamples,
            seqlen=self.seqlen,
            seed=cell.seed,
            calib=self.calib,
        )

    def shared(self) -> dict[str, Any]:
        """Settings every cell of one results file must share (all but the grid axes)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("type", "methods", "patterns", "seeds")}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("methods", "patterns", "seeds"):
            data[name] = list(data[name])
        return {"type": SPEC_TYPE, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareSpec:
        if data.get("type") != SPEC_TYPE:
            raise ValueError(f"not a compare settings record (type {data.get('type')!r})")
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


__all__ = ["SPEC_TYPE", "Cell", "CompareSpec"]
