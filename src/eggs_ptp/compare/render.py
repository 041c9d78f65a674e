"""The compare report: a markdown table, two PNG figures, and one self-contained HTML page.

Both tables come from the same rows, so markdown and HTML never disagree. Figures are drawn on
``matplotlib.figure.Figure`` (no pyplot, no global backend) and embedded in the HTML as base64,
so ``report.html`` reads offline with nothing beside it. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eggs_ptp.atomic import write_atomic
from eggs_ptp.compare.spec import CompareSpec
from eggs_ptp.compare.summary import Group, groups

MARKDOWN_FILE = "results.md"
HTML_FILE = "report.html"
FIGURES = {"perplexity": "perplexity.png", "time": "perplexity_vs_time.png"}
SUMMARY_HEAD = ["pattern", "method", "seeds", "perplexity", "last-word acc", "word log-lik", "prune s", "peak RSS MB"]
LEGEND = (
    "Mean ± standard deviation over calibration seeds. **Bold**: the lowest mean perplexity at each pattern. "
    "Prune seconds: median over seeds; peak RSS: the largest."
)
CELL_HEAD = [
    "pattern",
    "method",
    "seed",
    "perplexity",
    "last-word acc",
    "word log-lik",
    "prune s",
    "peak RSS MB",
    "mask sha256",
]


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _task(row: dict[str, Any], key: str, digits: int) -> str:
    return _num((row.get("task") or {}).get(key), digits)


def summary_rows(record: dict[str, Any]) -> list[tuple[list[str], bool]]:
    """(cells, bold) per row: the dense baseline, then every method at every pattern."""
    dense = record["dense"] or {}
    rows = [
        (
            [
                "dense",
                "–",
                "–",
                _num(dense.get("perplexity"), 2),
                _task(dense, "acc", 4),
                _task(dense, "loglikelihood", 3),
                "–",
                "–",
            ],
            False,
        )
    ]
    for group in groups(record):
        rows.append(
            (
                [
                    group.pattern,
                    group.method,
                    str(len(group.seeds)),
                    _pm(group.perplexity, group.perplexity_std, 2),
                    _pm(group.accuracy, group.accuracy_std, 4),
                    _num(group.loglikelihood, 3),
                    f"{group.prune_seconds:.1f}",
                    _num(group.peak_rss_mb, 0),
                ],
                group.best,
            )
        )
    return rows


def cell_rows(record: dict[str, Any]) -> list[list[str]]:
    return [
        [
            row["pattern"],
            row["method"],
            str(row["seed"]),
            f"{row['perplexity']:.2f}",
            _task(row, "acc", 4),
            _task(row, "loglikelihood", 3),
            f"{row['prune_seconds']:.1f}",
            _num(row.get("peak_rss_mb"), 0),
            row["mask_sha256"][:12],
        ]
        for row in record["cells"]
    ]


def describe_setup(record: dict[str, Any]) -> list[str]:
    """One sentence each: model, calibration, perplexity, task, machine."""
    model, calib, evaluation, task = record["model"], record["calibration"], record["evaluation"], record["task"]
    session = record["sessions"][-1]
    machine = session["hardware"]
    lines = [
        (
            f"Model: {model['id']} ({model['class']}, {model['parameters']:,} parameters, {model['dtype']}, "
            f"revision {model['revision'] or '–'}, weights sha256 {model['weights_sha256'][:16]})."
        ),
        (
            f"Calibration: {calib['nsamples']} windows x {calib['seqlen']} tokens, seeds "
            f"{', '.join(map(str, calib['seeds']))}, from {calib['source']}."
        ),
        (
            f"Perplexity: first {evaluation['windows']} non-overlapping windows x {evaluation['seqlen']} tokens "
            f"({evaluation['tokens']} tokens) of {evaluation['text']}."
        ),
    ]
    if task:
        limit = f", first {task['limit']}" if task.get("limit") else ""
        harness = (task.get("harness") or {}).get("harness", "lm-evaluation-harness")
        lines.append(
            f"Zero-shot: {task['task']} ({task['passages']} passages{limit}; {task['recipe']}), "
            f"scored by {harness}: accuracy and the word's mean log-likelihood in nats." + _sampling_error(record)
        )
    lines.append(
        f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} torch threads"
        + (f", {machine['accelerator']}" if machine.get("accelerator") else "")
        + f"; torch {session['versions'].get('torch')}, transformers {session['versions'].get('transformers')}."
    )
    return lines


def _sampling_error(record: dict[str, Any]) -> str:
    """The passages' own error on an accuracy, which the spread over calibration seeds leaves out."""
    dense = (record.get("dense") or {}).get("task") or {}
    if dense.get("acc_stderr") is None:
        return ""
    return (
        f" One accuracy on these passages has a sampling standard error of ±{dense['acc_stderr']:.3f} "
        f"(the harness's, at the dense {dense['acc']:.3f}); the ± over seeds does not include it."
    )


def not_run(record: dict[str, Any]) -> str:
    """A sentence naming the method x pattern pairs the grid left out, or ""."""
    pairs = CompareSpec.from_dict(record["settings"]).skipped()
    if not pairs:
        return ""
    return "Not run: " + "; ".join(f"{p['method']} at {p['pattern']} ({p['reason']})" for p in pairs) + "."


def markdown(record: dict[str, Any]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    out = [
        f"# Pruning comparison: {record['model']['id']}",
        "",
        *describe_setup(record),
        "",
        LEGEND,
        "",
        line(SUMMARY_HEAD),
        line(["---"] * len(SUMMARY_HEAD)),
    ]
    for cells, bold in summary_rows(record):
        out.append(line([f"**{c}**" for c in cells] if bold else cells))
    if not_run(record):
        out += ["", not_run(record)]
    out += ["", "## Every cell", "", line(CELL_HEAD), line(["---"] * len(CELL_HEAD))]
    out += [line(cells) for cells in cell_rows(record)]
    commands = [s["command"] for s in record["sessions"] if s.get("command")]
    if commands:
        out += ["", "Reproduce: `" + commands[0] + "`"]
    return "\n".join(out) + "\n"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _log_scale_wanted(record: dict[str, Any], values: list[float]) -> bool:
    """Log scale when perplexities (dense included) span more than 20x: magnitude pruning can sit
    at 100x the dense value, which would flatten every other bar."""
    positive = [v for v in [*values, (record["dense"] or {}).get("perplexity") or 0] if v > 0]
    return bool(positive) and max(positive) / min(positive) > 20


def _dense_line(axes: Any, record: dict[str, Any]) -> None:
    dense = (record["dense"] or {}).get("perplexity")
    if dense is not None:
        axes.axhline(dense, color="0.3", linestyle="--", linewidth=1, label=f"dense {dense:.2f}")


def perplexity_figure(record: dict[str, Any], found: list[Group]) -> bytes:
    """Bars: mean perplexity per method, one colour per pattern, error bars one std over seeds."""
    methods = list(dict.fromkeys(g.method for g in found))
    patterns = list(dict.fromkeys(g.pattern for g in found))
    figure = Figure(figsize=(max(6.0, 1.1 * len(methods) * len(patterns) + 2), 4.2), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(patterns)
    for index, pattern in enumerate(patterns):
        chosen = [g for g in found if g.pattern == pattern]
        x = [methods.index(g.method) + (index - (len(patterns) - 1) / 2) * width for g in chosen]
        bars = axes.bar(
            x,
            [g.perplexity for g in chosen],
            width,
            yerr=[g.perplexity_std or 0 for g in chosen],
            capsize=3,
            label=pattern,
            color=f"C{index}",
        )
        for bar, group in zip(bars, chosen):
            bar.set_edgecolor("black" if group.best else "none")
            bar.set_linewidth(1.5 if group.best else 0)
        axes.bar_label(bars, labels=[f"{g.perplexity:.1f}" for g in chosen], fontsize=7, padding=2)
    _dense_line(axes, record)
    axes.set_xticks(range(len(methods)), methods)
    if _log_scale_wanted(record, [g.perplexity for g in found]):
        axes.set_yscale("log")
    axes.set_ylabel("perplexity (held-out text)")
    axes.set_title("Perplexity by method and pattern (mean ± std over seeds; outlined: best per pattern)", fontsize=9)
    axes.legend(fontsize=8)
    return _png(figure)


def time_figure(record: dict[str, Any], found: list[Group]) -> bytes:
    """Every cell as a faint point, each method x pattern as its mean with a std error bar."""
    methods = list(dict.fromkeys(g.method for g in found))
    patterns = list(dict.fromkeys(g.pattern for g in found))
    markers = "osD^vP*X"
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for row in record["cells"]:
        axes.scatter(
            row["prune_seconds"],
            row["perplexity"],
            s=12,
            alpha=0.35,
            color=f"C{methods.index(row['method']) % 10}",
            marker=markers[patterns.index(row["pattern"]) % len(markers)],
        )
    for group in found:
        axes.errorbar(
            group.prune_seconds,
            group.perplexity,
            yerr=group.perplexity_std or 0,
            capsize=3,
            color=f"C{methods.index(group.method) % 10}",
            marker=markers[patterns.index(group.pattern) % len(markers)],
            markersize=7,
            label=f"{group.method} {group.pattern}",
        )
    _dense_line(axes, record)
    if _log_scale_wanted(record, [r["perplexity"] for r in record["cells"]]):
        axes.set_yscale("log")
    axes.set_xlabel("pruning seconds (median over seeds)")
    axes.set_ylabel("perplexity (held-out text)")
    axes.set_title("Perplexity against pruning time", fontsize=9)
    axes.legend(fontsize=7, ncol=2)
    return _png(figure)


def figures(record: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes by file name; empty before the first cell."""
    found = groups(record)
    if not found:
        return {}
    return {FIGURES["perplexity"]: perplexity_figure(record, found), FIGURES["time"]: time_figure(record, found)}


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+2), th:nth-child(-n+2) { text-align: left; }
tr.best td { font-weight: bold; background: #eef6ee; }
img { max-width: 100%; display: block; margin: 1em 0; }
code, pre { background: #f6f6f6; padding: 0.1em 0.3em; } pre { padding: 0.6em; overflow-x: auto; }
.note { color: #555; font-size: 0.9em; }
"""


def _table(head: list[str], rows: list[tuple[list[str], bool]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        ('<tr class="best">' if bold else "<tr>") + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row, bold in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def report_html(record: dict[str, Any], images: dict[str, bytes]) -> str:
    """One page: setup, the summary table, the figures (inline), every cell, and provenance."""
    title = f"Pruning comparison: {record['model']['id']}"
    setup = "".join(f"<li>{html.escape(line)}</li>" for line in describe_setup(record))
    pictures = "".join(
        f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
        for name, data in images.items()
    )
    provenance = {key: record[key] for key in ("model", "settings", "calibration", "evaluation", "task", "sessions")}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<ul>{setup}</ul>
<h2>Summary</h2>
<p class="note">{html.escape(LEGEND.replace("**", ""))}</p>
{_table(SUMMARY_HEAD, summary_rows(record))}
<p class="note">{html.escape(not_run(record))}</p>
<h2>Figures</h2>
{pictures}
<h2>Every cell</h2>
{_table(CELL_HEAD, [(row, False) for row in cell_rows(record)])}
<h2>Provenance</h2>
<pre>{html.escape(json.dumps(provenance, indent=2))}</pre>
</body></html>
"""


def write_report(record: dict[str, Any], out: Path) -> list[Path]:
    """Write the markdown table, the figures and ``report.html`` into ``out``; returns their paths."""
    out = Path(out)
    images = figures(record)
    written = [write_atomic(out / name, data) for name, data in images.items()]
    written.append(write_atomic(out / MARKDOWN_FILE, markdown(record)))
    written.append(write_atomic(out / HTML_FILE, report_html(record, images)))
    return written


__all__ = [
    "CELL_HEAD",
    "FIGURES",
    "HTML_FILE",
    "LEGEND",
    "MARKDOWN_FILE",
    "SUMMARY_HEAD",
    "cell_rows",
    "describe_setup",
    "figures",
    "markdown",
    "not_run",
    "perplexity_figure",
    "report_html",
    "summary_rows",
    "time_figure",
    "write_report",
]
