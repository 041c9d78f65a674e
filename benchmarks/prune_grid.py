"""Perplexity, pruning time and peak RSS of every method on one model, in one process.

Each cell restores the dense weights, draws its calibration windows from one tokenised text, prunes,
and scores the same held-out windows, so cells differ only in method, pattern, settings and seed.
Results are appended to ``RESULTS.json`` after every cell (``--resume`` skips finished cells) and
rendered to ``RESULTS.md``.

Cells are written ``METHOD[:RULE][:bB][:hH][:auto][:permute][:owl]``, e.g. ``eggs:repair:b1:h4`` (H as a
multiple of M, so ``h4`` = 4M) or ``wanda:owl``.

    python benchmarks/prune_grid.py --preset reference   # the spec's prototype settings
    python benchmarks/prune_grid.py --preset grid         # the 2:4 / 4:8 method grid
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from eggs_ptp import OwlAllocation, PruneConfig, RunOptions, prune
from eggs_ptp.data import SequenceStart, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import PeakRss, perplexity
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.graph import layer_metrics, summarise
from eggs_ptp.methods import method_config
from eggs_ptp.models import load_model
from eggs_ptp.pattern import Pattern
from eggs_ptp.report import library_versions
from eggs_ptp.selectors import RULES

RESULTS = Path(__file__).parent / "results"

BASELINES = ["magnitude", "wanda", "ria", "sparsegpt"]
PRESETS: dict[str, dict] = {
    # The settings of the early prototype numbers in the method notes: 32 x 512, 40 windows.
    "reference": {
        "patterns": ["2:4"],
        "nsamples": 32,
        "seqlen": 512,
        "windows": 40,
        "seeds": [0],
        "cells": BASELINES
        + [
            "eggs:diagonal:b1:h1",
            "eggs:diagonal:b2:h1",
            "eggs:matching:b1:h1",
            "eggs:repair:b1:h1",
            "eggs:repair:b1:h4",
            "eggs:repair:b1:h16",
            "eggs:repair:b1:h64",
        ],
    },
    # The full grid: every rule, B in 1..2, H in {M, 4M, 16M, 64M}, both patterns.
    "grid": {
        "patterns": ["2:4", "4:8"],
        "nsamples": 64,
        "seqlen": 512,
        "windows": 40,
        "seeds": [0],
        "cells": BASELINES
        + ["eggs:repair:b0:h1"]
        + [
            f"eggs:{rule}:b{b}:h{h}"
            for rule in ("diagonal", "matching", "repair")
            for b in (1, 2)
            for h in (1, 4, 16, 64)
        ],
    },
    # Issue 3's ablation: connectivity next to perplexity. Small calibration and evaluation so the
    # whole rule x B x H grid fits a session; matching only up to H = 4M (one Hungarian solve per
    # tile makes larger tiles cost minutes per layer).
    "ablation": {
        "patterns": ["2:4", "4:8"],
        "nsamples": 8,
        "seqlen": 512,
        "windows": 8,
        "seeds": [0],
        "connectivity": True,
        "cells": {
            "2:4": ["wanda", "ria", "sparsegpt", "eggs:repair:b0:h1"]
            + [f"eggs:{rule}:b{b}:h{h}" for rule in ("diagonal", "repair") for b in (1, 2) for h in (1, 4, 16, 64)]
            + [f"eggs:matching:b{b}:h{h}" for b in (1, 2) for h in (1, 4)],
            "4:8": ["wanda", "ria", "sparsegpt", "eggs:repair:b0:h1"]
            + [f"eggs:{rule}:b{b}:h{h}" for rule in ("diagonal", "repair") for b in (1, 2, 4) for h in (1, 4, 16, 64)]
            + [f"eggs:matching:b{b}:h{h}" for b in (1, 2, 4) for h in (1, 4)],
        },
    },
    # What one 2-core session affords: the 2:4 contenders over 3 calibration seeds.
    "seeds": {
        "patterns": ["2:4"],
        "nsamples": 64,
        "seqlen": 512,
        "windows": 40,
        "seeds": [0, 1, 2],
        "cells": ["wanda", "ria", "eggs:repair:b1:h16", "eggs:repair:b1:h64"],
    },
    # ... and one seed of the other methods and EGGS settings at 2:4 and 4:8.
    "single": {
        "patterns": ["2:4", "4:8"],
        "nsamples": 64,
        "seqlen": 512,
        "windows": 40,
        "seeds": [0],
        "cells": BASELINES
        + [
            "eggs:repair:b0:h1",
            "eggs:diagonal:b1:h1",
            "eggs:matching:b1:h1",
            "eggs:repair:b1:h1",
            "eggs:repair:b1:h4",
            "eggs:repair:b1:h16",
            "eggs:repair:b2:h16",
        ],
    },
}


def parse_cell(cell: str, pattern: str) -> dict:
    """``METHOD[:RULE][:bB][:hH][:auto][:permute][:owl]`` -> the cell's settings (H in multiples of M)."""
    method, *parts = cell.split(":")
    fields: dict = {"method": method}
    for part in parts:
        if part in RULES:
            fields["rule"] = part
        elif part[0] in "bh" and part[1:].isdigit():
            key, value = (
                ("b", int(part[1:])) if part[0] == "b" else ("tile_height", int(part[1:]) * int(pattern.split(":")[1]))
            )
            fields[key] = value
        elif part in ("auto", "permute"):
            fields[part] = True
        elif part == "owl":
            fields["allocation"] = "owl"
        else:
            raise SystemExit(f"cell {cell!r}: unknown part {part!r}")
    return fields


def cell_config(cell: str, pattern: str, nsamples: int, seqlen: int, seed: int) -> PruneConfig:
    """The cell's fields split into its method's config and the run's shared settings."""
    fields = parse_cell(cell, pattern)
    shared = {
        "permute": fields.pop("permute", False),
        "allocation": OwlAllocation() if fields.pop("allocation", None) == "owl" else None,
    }
    method = method_config(fields.pop("method"), **fields)
    return PruneConfig(method=method, pattern=pattern, nsamples=nsamples, seqlen=seqlen, seed=seed, **shared)


def connectivity(model: torch.nn.Module, report, pattern: str, settings: dict) -> dict:
    """Model-level graph numbers of the pruned masks (``eggs_ptp.graph.summarise``) and their cost."""
    started = time.perf_counter()
    modules = dict(model.named_modules())
    parsed = Pattern.parse(pattern)
    nm = (parsed.n, parsed.m) if parsed.structured else None
    b = max(settings.get("b", 1), 1)
    metrics = []
    for layer in report.pruned_layers:
        weight = modules[layer.name].weight
        mask = (weight.T if layer.transposed else weight) != 0
        metrics.append(layer_metrics(mask, b=b, pattern=nm, tile_height=settings.get("tile_height")))
    return {**summarise(metrics), "seconds": time.perf_counter() - started}


def cell_key(cell: str, pattern: str, nsamples: int, seqlen: int, seed: int, windows: int | None) -> str:
    return f"{cell}|{pattern}|{nsamples}x{seqlen}|seed{seed}|w{windows}"


def method_label(row: dict) -> str:
    flags = [flag for flag in ("auto", "permute") if row.get(flag)] + (
        ["owl"] if row.get("allocation") == "owl" else []
    )
    return " ".join([row["method"], *flags])


def graph_cells(graph: dict | None, shown: bool) -> str:
    if not shown:
        return ""
    if graph is None:
        return " | | | | |"
    return (
        f" {graph['in_degree_min_mean']:.2f} | {graph['in_degree_min_worst']} | {graph['zero_inputs']:g} | "
        f"{graph['mean_spectral_gap']:.4f} | {graph['expansion_min']:.2f} |"
    )


def mean_connectivity(group: list[dict]) -> dict | None:
    """Each connectivity number averaged over the group's seeds (worst cases stay worst)."""
    graphs = [row["connectivity"] for row in group if "connectivity" in row]
    if not graphs:
        return None
    keys = ("in_degree_min_mean", "mean_spectral_gap", "zero_inputs")
    return {
        **{k: statistics.mean(g[k] for g in graphs) for k in keys},
        "in_degree_min_worst": min(g["in_degree_min_worst"] for g in graphs),
        "expansion_min": min(g["expansion_min"] for g in graphs),
    }


def render_markdown(record: dict) -> str:
    rows = record["cells"]
    graph = any("connectivity" in row for row in rows)
    graph_head = " min in-degree mean | worst | zero inputs | spectral gap | expansion |" if graph else ""
    lines = [
        f"# Pruning grid on {record['model']}",
        "",
        f"Evaluation: {record['evaluation']}. Calibration: {record['calibration']}. "
        f"Hardware: {record['hardware']}. Dense perplexity: {record['dense']['perplexity']:.2f}.",
        "",
        "Single-seed rows; mean ± std over seeds in the second table.",
        "",
        *[f"- {note}" for note in record.get("notes", [])],
        *([""] if record.get("notes") else []),
        "| pattern | method | rule | B | H | calib | seed | perplexity | prune s | peak RSS MB |" + graph_head,
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (5 if graph else 0),
    ]
    for row in rows:
        lines.append(
            f"| {row['pattern']} | {method_label(row)} | {row.get('rule', '')} | {row.get('b', '')} | "
            f"{row.get('tile_height', '')} | {row['nsamples']}x{row['seqlen']} | {row['seed']} | "
            f"{row['perplexity']:.2f} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} |"
            + graph_cells(row.get("connectivity"), graph)
        )
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["pattern"], row["cell"], row["nsamples"], row["seqlen"]), []).append(row)
    multi = {k: v for k, v in groups.items() if len({r["seed"] for r in v}) > 1}
    if multi:
        lines += [
            "",
            "Paired: the same calibration seed's `ria` perplexity subtracted, then mean ± std over seeds.",
            "",
            "| pattern | cell | calib | seeds | perplexity mean ± std | minus ria, paired | prune s (median) |"
            + graph_head,
            "|---|---|---|---|---|---|---|" + "---|" * (5 if graph else 0),
        ]
        ria = {
            (r["pattern"], r["nsamples"], r["seqlen"], r["seed"]): r["perplexity"] for r in rows if r["cell"] == "ria"
        }
        for (pattern, cell, nsamples, seqlen), group in sorted(
            multi.items(), key=lambda kv: statistics.mean(r["perplexity"] for r in kv[1])
        ):
            ppl = [r["perplexity"] for r in group]
            paired = [
                r["perplexity"] - ria[(pattern, nsamples, seqlen, r["seed"])]
                for r in group
                if (pattern, nsamples, seqlen, r["seed"]) in ria
            ]
            delta = f"{statistics.mean(paired):+.2f} ± {statistics.stdev(paired):.2f}" if len(paired) > 1 else ""
            lines.append(
                f"| {pattern} | {cell} | {nsamples}x{seqlen} | {len(group)} | {statistics.mean(ppl):.2f} ± "
                f"{statistics.stdev(ppl):.2f} | {delta} | {statistics.median(r['seconds'] for r in group):.1f} |"
                + graph_cells(mean_connectivity(group), graph)
            )
    return "\n".join(lines) + "\n"


def connectivity_figure(record: dict, path: Path) -> None:
    """Perplexity (log scale) against each model-level connectivity number, one point per cell."""
    from matplotlib.figure import Figure

    from eggs_ptp.graph.plots import save_png

    rows = [row for row in record["cells"] if row.get("connectivity")]
    if not rows:
        return
    metrics = {
        "in_degree_min_mean": "mean over layers of the min input degree",
        "zero_inputs": "inputs with no kept weight (all layers)",
        "mean_spectral_gap": "mean spectral gap",
        "expansion_min": "worst expansion estimate",
    }
    figure = Figure(figsize=(4 * len(metrics), 3.6), layout="constrained")
    axes = figure.subplots(1, len(metrics), sharey=True)
    for pattern, marker in zip(sorted({r["pattern"] for r in rows}), "os^D"):
        for family in ("wanda", "ria", "sparsegpt", "eggs:diagonal", "eggs:matching", "eggs:repair"):
            chosen = [
                r
                for r in rows
                if r["pattern"] == pattern
                and r["cell"].startswith(family)
                and not (family == "eggs:repair" and r.get("b") == 0)
            ]
            if not chosen:
                continue
            for axis, key in zip(axes, metrics):
                axis.scatter(
                    [r["connectivity"][key] for r in chosen],
                    [r["perplexity"] for r in chosen],
                    marker=marker,
                    s=22,
                    alpha=0.8,
                    label=f"{family} {pattern}",
                )
    for axis, label in zip(axes, metrics.values()):
        axis.set_xlabel(label)
        axis.set_yscale("log")
    axes[0].set_ylabel("perplexity")
    axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.suptitle(f"Connectivity against perplexity, {record['model']}: one point per cell and seed")
    save_png(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--name", default=None, help="results file stem [default: prune_grid_PRESET]")
    parser.add_argument("--cells", default=None, help="comma-separated cells overriding the preset's")
    parser.add_argument("--patterns", default=None)
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--windows", type=int, default=None, help="override the preset's evaluation windows (0 = all)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    preset = dict(PRESETS[args.preset])
    if args.cells:
        preset["cells"] = args.cells.split(",")
    if args.patterns:
        preset["patterns"] = args.patterns.split(",")
    if args.seeds:
        preset["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.windows is not None:
        preset["windows"] = args.windows or None
    stem = RESULTS / (args.name or f"prune_grid_{args.preset}")
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    if args.render:
        record = json.loads(json_path.read_text())
        md_path.write_text(render_markdown(record))
        connectivity_figure(record, stem.with_suffix(".png"))
        return
    if json_path.exists() and not args.resume:
        sys.exit(f"{json_path} exists; pass --resume to continue it or --name for a new file")

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    calib_source = load_text("wiki", "calibration")
    eval_source = load_text("wiki", "evaluation")
    calib_tokens = tokenize(tokenizer, calib_source.text)
    eval_tokens = tokenize(tokenizer, eval_source.text)
    start = SequenceStart.of(tokenizer)
    seqlen, windows = preset["seqlen"], preset["windows"]

    record = (
        json.loads(json_path.read_text())
        if json_path.exists()
        else {
            "model": args.model,
            "evaluation": f"{eval_source.description}; first {windows or 'all'} non-overlapping windows of "
            f"{seqlen} tokens",
            "calibration": f"{calib_source.description}; random windows, seeded",
            "sequence_start": list(start.tokens),
            "hardware": f"{torch.get_num_threads()} torch threads, CPU",
            "versions": library_versions(),
            "cells": [],
        }
    )
    if record.get("sequence_start", []) != list(start.tokens):  # a file from before the start was recorded had none
        sys.exit(f"{json_path} has windows starting with {record.get('sequence_start', [])}, not {list(start.tokens)}")
    if "dense" not in record:
        dense = perplexity(model, eval_tokens, seqlen, windows, eval_source.description, start=start)
        record["dense"] = dense.to_dict()
    done = {row["key"] for row in record["cells"]}
    for pattern in preset["patterns"]:
        cells = preset["cells"][pattern] if isinstance(preset["cells"], dict) else preset["cells"]
        for seed in preset["seeds"]:
            for cell in cells:
                key = cell_key(cell, pattern, preset["nsamples"], seqlen, seed, windows)
                if key in done:
                    continue
                model.load_state_dict(dense_state)
                config = cell_config(cell, pattern, preset["nsamples"], seqlen, seed)
                calibration = sample_windows(
                    calib_tokens, config.nsamples, seqlen, seed, calib_source.description, start
                )
                with PeakRss() as peak:
                    started = time.perf_counter()
                    _, report = prune(model, tokenizer, config, RunOptions(progress=False), calibration=calibration)
                    seconds = time.perf_counter() - started
                result = perplexity(
                    model, eval_tokens, seqlen, windows, eval_source.description, progress=False, start=start
                )
                row = {
                    "key": key,
                    "cell": cell,
                    "pattern": pattern,
                    "seed": seed,
                    "nsamples": config.nsamples,
                    "seqlen": seqlen,
                    **parse_cell(cell, pattern),
                    "perplexity": result.perplexity,
                    "seconds": seconds,
                    "peak_rss_mb": peak.mb,
                    "mean_recon_error": report.summary()["mean_recon_error"],
                }
                if preset.get("connectivity"):
                    row["connectivity"] = connectivity(model, report, pattern, parse_cell(cell, pattern))
                record["cells"].append(row)
                write_json_atomic(json_path, record)
                md_path.write_text(render_markdown(record))
                if preset.get("connectivity"):
                    connectivity_figure(record, stem.with_suffix(".png"))
                print(f"{key}: ppl {result.perplexity:.2f}, {seconds:.1f} s", flush=True)
                if not math.isfinite(result.perplexity):
                    print(f"warning: {key} perplexity is not finite", flush=True)


if __name__ == "__main__":
    main()
