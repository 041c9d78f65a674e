"""Which quality stage buys what: each stage alone on top of ``sparsegpt`` and ``eggs+update``,
their combinations and the existing methods, side by side in one process.

Per cell (method x pattern x seed): the compare grid's own run (fresh dense weights, seeded
calibration windows from the wiki calibration split, prune, perplexity on the first 40 held-out
wiki windows, the offline last-word task), plus perplexity on a second text unlike the
calibration's: the Python 3.11 documentation's tutorial, HOWTOs and FAQ (reStructuredText sources
from Debian's ``python3.11-doc`` package), calibrated on wiki all the same. Results go to
``results/NAME.json`` after every cell (``--resume`` runs only the missing ones) and
``results/NAME.md``.

    apt-get download python3.11-doc && dpkg-deb -x python3.11-doc_*.deb /tmp/pydoc
    python benchmarks/quality.py --second-text /tmp/pydoc --name quality_2of4_32x512 \
        --patterns 2:4 --nsamples 32 --seeds 0 --methods sparsegpt,'sparsegpt(target=model)'
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from eggs_ptp.compare.runner import GridContext
from eggs_ptp.compare.spec import CompareSpec
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import perplexity
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.methods import split_methods
from eggs_ptp.models import load_model
from eggs_ptp.report import library_versions

RESULTS = Path(__file__).parent / "results"
SECOND_TEXT_PARTS = ("tutorial", "howto", "faq")  # prose-heavy parts of the documentation
REFERENCE = "sparsegpt"


def second_text(root: Path) -> tuple[str, str]:
    """The documentation's reST sources under ``root`` (an extracted python3.11-doc), sorted by path."""
    sources = root / "usr/share/doc/python3.11/html/_sources"
    if not sources.is_dir():
        sys.exit(f"{root} holds no {sources.relative_to(root)}; extract Debian's python3.11-doc there")
    files = sorted(path for part in SECOND_TEXT_PARTS for path in (sources / part).rglob("*.rst.txt"))
    text = "\n\n".join(path.read_text(encoding="utf-8") for path in files)
    description = (
        f"Python 3.11 documentation (Debian python3.11-doc), {len(files)} reST sources of "
        f"{', '.join(SECOND_TEXT_PARTS)} sorted by path, joined by blank lines"
    )
    return text, description


def summarise(rows: list[dict], dense: dict) -> list[dict]:
    """Per pattern and method: mean ± std over seeds, the share of SparseGPT's gap to dense closed,
    and prune time against SparseGPT's cell of the same seed (same run)."""
    out = []
    for pattern in dict.fromkeys(row["pattern"] for row in rows):
        at = [row for row in rows if row["pattern"] == pattern]
        reference = {row["seed"]: row for row in at if row["method"] == REFERENCE}
        for method in dict.fromkeys(row["method"] for row in at):
            group = [row for row in at if row["method"] == method]
            entry = {"pattern": pattern, "method": method, "seeds": [row["seed"] for row in group]}
            for name in ("perplexity", "second_perplexity"):
                values = [row[name] for row in group]
                entry[name] = statistics.fmean(values)
                entry[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                paired = [reference[row["seed"]][name] for row in group if row["seed"] in reference]
                if len(paired) == len(group):
                    gap = statistics.fmean(paired) - dense[name]
                    entry[f"{name}_gap_closed"] = (statistics.fmean(paired) - entry[name]) / gap
            accuracy = [row["task"]["acc"] for row in group if row.get("task")]
            errors = [row["task"].get("acc_stderr") for row in group if row.get("task")]
            if accuracy:
                entry["acc"] = statistics.fmean(accuracy)
                entry["acc_stderr"] = statistics.fmean(e for e in errors if e is not None) if any(errors) else None
            entry["prune_seconds"] = statistics.median(row["prune_seconds"] for row in group)
            ratios = [
                row["prune_seconds"] / reference[row["seed"]]["prune_seconds"]
                for row in group
                if row["seed"] in reference
            ]
            entry["seconds_vs_sparsegpt"] = statistics.median(ratios) if ratios else None
            out.append(entry)
    return out


def _cell(value: float | None, digits: int = 2, std: float | None = None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")


def render(record: dict) -> str:
    dense = record["dense"]
    lines = [
        f"# Quality stages on {record['model']}",
        "",
        f"Calibration: {record['calibration']}. Evaluation: {record['evaluation']}. Second text: "
        f"{record['second_text']} (first {record['windows']} windows of {record['seqlen']} tokens). "
        f"Task: {record['task']}. Hardware: {record['hardware']}.",
        "",
        f"Dense: perplexity {dense['perplexity']:.2f}, second text {dense['second_perplexity']:.2f}, "
        f"last-word accuracy {_cell(dense.get('acc'), 3)}.",
        "",
        "Gap closed: the share of SparseGPT's perplexity gap to dense that the method closes (paired seeds). "
        "Time: median prune seconds, and the median ratio to SparseGPT's cell of the same seed in this run.",
        "",
        "| pattern | method | seeds | perplexity | gap closed | second text | gap closed | last-word acc | "
        "prune s | x sparsegpt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in record["summary"]:
        lines.append(
            f"| {entry['pattern']} | `{entry['method']}` | {len(entry['seeds'])} | "
            f"{_cell(entry['perplexity'], 2, entry['perplexity_std'])} | "
            f"{_cell(entry.get('perplexity_gap_closed', float('nan')) * 100, 0)}% | "
            f"{_cell(entry['second_perplexity'], 2, entry['second_perplexity_std'])} | "
            f"{_cell(entry.get('second_perplexity_gap_closed', float('nan')) * 100, 0)}% | "
            f"{_cell(entry.get('acc'), 3, entry.get('acc_stderr'))} | {entry['prune_seconds']:.0f} | "
            f"{_cell(entry['seconds_vs_sparsegpt'], 2)} |"
        )
    lines += ["", "Per cell:", "", "| key | perplexity | second text | acc | prune s |", "|---|---|---|---|---|"]
    for row in record["cells"]:
        acc = row["task"]["acc"] if row.get("task") else None
        lines.append(
            f"| `{row['key']}` | {row['perplexity']:.2f} | {row['second_perplexity']:.2f} | {_cell(acc, 3)} | "
            f"{row['prune_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--name", required=True, help="results file stem")
    parser.add_argument("--methods", required=True, help="comma-separated method labels")
    parser.add_argument("--patterns", default="2:4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--task-limit", type=int, default=300)
    parser.add_argument("--second-text", type=Path, required=True, help="an extracted python3.11-doc package")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    json_path, md_path = (RESULTS / args.name).with_suffix(".json"), (RESULTS / args.name).with_suffix(".md")
    if args.render:
        record = json.loads(json_path.read_text())
        md_path.write_text(render(record))
        return
    if json_path.exists() and not args.resume:
        sys.exit(f"{json_path} exists; pass --resume to continue it or --name for a new file")

    spec = CompareSpec(
        methods=tuple(split_methods(args.methods)),
        patterns=tuple(args.patterns.split(",")),
        seeds=tuple(int(seed) for seed in args.seeds.split(",")),
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        eval_seqlen=args.seqlen,
        eval_windows=args.windows,
        task_limit=args.task_limit,
    )
    loaded = load_model(args.model)
    context = GridContext(loaded, spec)
    text, description = second_text(args.second_text)
    second_tokens = tokenize(loaded.tokenizer, text)

    def second_perplexity() -> float:
        return perplexity(
            loaded.model,
            second_tokens,
            context.eval_seqlen,
            args.windows,
            description,
            progress=False,
            start=context.start,
        ).perplexity

    provenance = context.provenance()
    record = (
        json.loads(json_path.read_text())
        if json_path.exists()
        else {
            "model": args.model,
            "calibration": f"{provenance['calibration']['source']}, {args.nsamples} x {context.seqlen}",
            "evaluation": f"{provenance['evaluation']['text']}, first {args.windows} windows of {context.eval_seqlen}",
            "second_text": description,
            "windows": args.windows,
            "seqlen": context.eval_seqlen,
            "task": f"{provenance['task']['task'] if provenance['task'] else 'none'}, first {args.task_limit} passages",
            "hardware": f"{torch.get_num_threads()} torch threads, CPU",
            "versions": library_versions(),
            "spec": spec.to_dict(),
            "cells": [],
        }
    )
    if "dense" not in record:
        scores = context.evaluate()
        record["dense"] = {
            "perplexity": scores["perplexity"],
            "second_perplexity": second_perplexity(),
            "acc": scores["task"]["acc"] if scores.get("task") else None,
        }
    done = {row["key"] for row in record["cells"]}
    for cell in spec.cells():
        if cell.key in done:
            continue
        started = time.perf_counter()
        row = context.run_cell(cell)
        row["second_perplexity"] = second_perplexity()
        record["cells"].append(row)
        record["summary"] = summarise(record["cells"], record["dense"])
        write_json_atomic(json_path, record)
        md_path.write_text(render(record))
        print(
            f"{cell.key}: ppl {row['perplexity']:.2f}, second {row['second_perplexity']:.2f}, "
            f"acc {row['task']['acc'] if row.get('task') else float('nan'):.3f}, prune {row['prune_seconds']:.0f} s "
            f"({time.perf_counter() - started:.0f} s in all)",
            flush=True,
        )


if __name__ == "__main__":
    main()
