"""Per method and pattern: mean and spread over calibration seeds, and the best method per pattern."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Group:
    """One method at one pattern, over its seeds. Spreads are sample standard deviations (None
    for a single seed); best = lowest mean perplexity at this pattern."""

    pattern: str
    method: str
    seeds: list[int]
    perplexity: float
    perplexity_std: float | None
    accuracy: float | None
    accuracy_std: float | None
    loglikelihood: float | None
    prune_seconds: float  # median: timings on shared machines have rare slow outliers
    peak_rss_mb: float | None  # max over seeds
    best: bool = False


def _spread(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def groups(record: dict[str, Any]) -> list[Group]:
    """Groups in the order of the recorded patterns, then methods."""
    settings = record["settings"]
    rows_by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in record["cells"]:
        rows_by.setdefault((row["pattern"], row["method"]), []).append(row)
    order = {(p, m): i for i, (p, m) in enumerate((p, m) for p in settings["patterns"] for m in settings["methods"])}
    found: list[Group] = []
    for (pattern, method), rows in sorted(rows_by.items(), key=lambda kv: order.get(kv[0], len(order))):
        rows = sorted(rows, key=lambda r: r["seed"])
        ppl, ppl_std = _spread([r["perplexity"] for r in rows])
        tasks = [r["task"] for r in rows if r.get("task")]
        acc, acc_std = _spread([t["acc"] for t in tasks]) if tasks else (None, None)
        peaks = [r["peak_rss_mb"] for r in rows if r.get("peak_rss_mb") is not None]
        found.append(
            Group(
                pattern,
                method,
                [r["seed"] for r in rows],
                ppl,
                ppl_std,
                acc,
                acc_std,
                statistics.mean(t["loglikelihood"] for t in tasks) if tasks else None,
                statistics.median(r["prune_seconds"] for r in rows),
                max(peaks) if peaks else None,
            )
        )
    best = {}
    for group in found:
        if group.pattern not in best or group.perplexity < best[group.pattern].perplexity:
            best[group.pattern] = group
    return [replace(group, best=best[group.pattern] is group) for group in found]


__all__ = ["Group", "groups"]
