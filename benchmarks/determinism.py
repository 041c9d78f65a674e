"""Masks must not depend on how the calibration is split over processes or torch threads.

Part ``masks`` prunes the default model at 2:4 with ``eggs`` and ``ria`` in three ways on the same
calibration windows: one process with one torch thread, one process with two, and two gloo
processes (``--nproc 2``, one thread each). It hashes each output's masks and counts, per pair of
ways, the mask entries that differ, in total and in the worst block.

Part ``cost`` times ``LayerStats.add`` (the fp64 accumulation) against a plain fp32 accumulator on
one calibration window, at the default model's widths and a large one, with and without the Hessian
(median of interleaved repeats), measures each one's peak memory in a fresh process, and times a
forward of the default model gathering every prunable layer's statistics with each.

    python benchmarks/determinism.py --name determinism_before --part masks   # on the old code
    python benchmarks/determinism.py --before benchmarks/results/determinism_before.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM

from eggs_ptp.atomic import write_atomic
from eggs_ptp.eval.speed import machine
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.models import load_model
from eggs_ptp.models.layers import find_blocks, find_linears
from eggs_ptp.stats import LayerStats
from mask_hashes import hashes
from scale import _masks

RESULTS = Path(__file__).parent / "results"
METHODS = ("eggs", "ria")
# label: (OMP_NUM_THREADS, extra prune arguments); torchrun would also give each of 2 processes 1 thread.
WAYS = {
    "1 proc, 1 thread": ("1", ()),
    "1 proc, 2 threads": ("2", ()),
    "2 gloo procs, 1 thread each": ("1", ("--nproc", 2)),
}
PAIRS = [
    ("1 proc, 1 thread", "1 proc, 2 threads"),
    ("1 proc, 1 thread", "2 gloo procs, 1 thread each"),
    ("1 proc, 2 threads", "2 gloo procs, 1 thread each"),
]
# (in_features, with the Hessian): the default model's hidden and MLP widths, and a 7B-class width.
WIDTHS = [(576, False), (576, True), (1536, False), (1536, True), (4096, False), (4096, True)]


def prune_once(method: str, way: str, folder: Path, nsamples: int, seqlen: int, eval_windows: int) -> dict:
    threads, extra = WAYS[way]
    environment = {**os.environ, "OMP_NUM_THREADS": threads}
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, "-m", "eggs_ptp", "prune", "-o", folder, "--method", method, "--pattern", "2:4"]
        + ["--nsamples", str(nsamples), "--seqlen", str(seqlen), "-q", "--overwrite", *map(str, extra)]
        + (["--eval", "--eval-windows", str(eval_windows)] if eval_windows else []),
        capture_output=True,
        text=True,
        env=environment,
    )
    if finished.returncode:
        raise SystemExit(f"{method}, {way} failed:\n{finished.stderr[-3000:]}")
    report = json.loads((folder / "sparsity.json").read_text())
    evaluation = report.get("evaluation") or {}
    return {
        "seconds": time.perf_counter() - started,
        "masks_sha256": hashes(AutoModelForCausalLM.from_pretrained(folder))["masks"],
        "mean_recon_error": report["summary"]["mean_recon_error"],
        "perplexity": evaluation.get("perplexity", {}).get("pruned", {}).get("perplexity"),
    }


def block_of(key: str) -> int:
    return int(re.search(r"\.(\d+)\.", key).group(1))


def compare(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> dict:
    """Differing mask entries in total, per block, and the first block where any differs."""
    per_block: dict[int, int] = {}
    for key in left:
        per_block[block_of(key)] = per_block.get(block_of(key), 0) + int((left[key] != right[key]).sum())
    worst = max(per_block, key=per_block.get)
    differing = [block for block, count in sorted(per_block.items()) if count]
    return {
        "differing_entries": sum(per_block.values()),
        "entries": sum(mask.numel() for mask in left.values()),
        "worst_block": worst,
        "worst_block_entries": per_block[worst],
        "first_differing_block": differing[0] if differing else None,
        "blocks_differing": len(differing),
        "blocks": len(per_block),
    }


def part_masks(workdir: Path, nsamples: int, seqlen: int, eval_windows: int) -> dict:
    runs, pairs = {}, []
    for method in METHODS:
        masks = {}
        for way in WAYS:
            folder = workdir / f"{method}-{way.replace(' ', '').replace(',', '-')}"
            runs[f"{method} | {way}"] = prune_once(method, way, folder, nsamples, seqlen, eval_windows)
            masks[way] = _masks(folder)
            print(f"{method}, {way}: {runs[f'{method} | {way}']['seconds']:.0f} s", flush=True)
        pairs += [{"method": method, "a": a, "b": b, **compare(masks[a], masks[b])} for a, b in PAIRS]
    return {
        "model": "smollm2-135m",
        "pattern": "2:4",
        "calibration": {"nsamples": nsamples, "seqlen": seqlen, "text": "wiki", "seed": 0},
        "eval_windows": eval_windows,
        "runs": runs,
        "pairs": pairs,
    }


class Fp32Stats:
    """The accumulator before fp64: fp32 sums, added window by window (the baseline of the cost)."""

    def __init__(self, in_features: int, with_hessian: bool) -> None:
        self.sq_norm = torch.zeros(in_features)
        self.hessian = torch.zeros(in_features, in_features) if with_hessian else None

    def add(self, inputs: torch.Tensor) -> None:
        x = inputs.reshape(-1, self.sq_norm.shape[0]).float()
        self.sq_norm += (x * x).sum(dim=0)
        if self.hessian is not None:
            self.hessian.addmm_(x.T, x)


ACCUMULATORS = {"fp32 (old)": Fp32Stats, "LayerStats (fp64)": LayerStats}


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def peak_memory_mb(kind: str, width: int, with_hessian: bool, tokens: int, windows: int) -> float:
    """Peak RSS above the input window while an accumulator is built, fed ``windows`` windows and read,
    measured in a fresh process with its high-water mark reset."""
    window = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(0))
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    stats = ACCUMULATORS[kind](width, with_hessian)
    for _ in range(windows):
        stats.add(window)
    if stats.hessian is not None:
        float(stats.hessian[0, 0])
    return (_status_kb("VmHWM") - before) / 1024


def _interleaved_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, run in turn within every repeat so that they share the load."""
    for call in calls.values():
        call()  # warm up
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    return {name: 1e3 * statistics.median(values) for name, values in seconds.items()}


def part_cost(tokens: int, repeats: int, windows: int) -> list[dict]:
    """One ``add`` of a window of ``tokens`` tokens, per accumulator, at each width in ``WIDTHS``."""
    rows = []
    for width, with_hessian in WIDTHS:
        window = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(0))
        accumulators = {kind: accumulator(width, with_hessian) for kind, accumulator in ACCUMULATORS.items()}
        times = _interleaved_ms({kind: lambda s=stats: s.add(window) for kind, stats in accumulators.items()}, repeats)
        row = {"in_features": width, "hessian": with_hessian, "tokens": tokens}
        for kind in ACCUMULATORS:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                peak = pool.submit(peak_memory_mb, kind, width, with_hessian, tokens, windows).result()
            row[kind] = {"median_ms": times[kind], "peak_mb": peak}
        row["time_ratio"] = row["LayerStats (fp64)"]["median_ms"] / row["fp32 (old)"]["median_ms"]
        rows.append(row)
        print(f"{width} hessian={with_hessian}: x{row['time_ratio']:.2f}", flush=True)
    return rows


def part_model_pass(tokens: int, repeats: int) -> dict:
    """A forward of the default model on one window with every prunable layer's statistics gathered,
    as the calibration passes of a whole walk do, against the same forward gathering none."""
    loaded = load_model("smollm2-135m")
    prefix, blocks = find_blocks(loaded.model)
    layers = [layer for index, block in enumerate(blocks) for layer in find_linears(block, f"{prefix}.{index}")]
    ids = torch.randint(0, loaded.model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))

    def forward(stats: list | None) -> None:
        hooks = [
            layer.module.register_forward_hook(lambda module, inputs, output, s=s: s.add(inputs[0]))
            for layer, s in zip(layers, stats or [])
        ]
        try:
            with torch.no_grad():
                loaded.model(ids)
        finally:
            for hook in hooks:
                hook.remove()

    calls = {"no statistics": lambda: forward(None)}
    for with_hessian in (False, True):
        for kind, accumulator in ACCUMULATORS.items():
            stats = [accumulator(layer.in_features, with_hessian) for layer in layers]  # made once, as per block
            calls[f"{kind}{', Hessian' if with_hessian else ''}"] = lambda s=stats: forward(s)
    times = _interleaved_ms(calls, repeats)
    return {"tokens": tokens, "layers": len(layers), "median_ms": times}


def _pair_rows(record: dict) -> dict[tuple[str, str, str], dict]:
    return {(pair["method"], pair["a"], pair["b"]): pair for pair in record["pairs"]}


def _differences(pair: dict | None) -> str:
    if pair is None:
        return "–"
    if not pair["differing_entries"]:
        return "0"
    return (
        f"{pair['differing_entries']:,} ({pair['blocks_differing']} of {pair['blocks']} blocks, from block "
        f"{pair['first_differing_block']}; worst block {pair['worst_block']}: {pair['worst_block_entries']:,})"
    )


def render(results: dict) -> str:
    masks, before = results.get("masks"), results.get("before")
    lines = ["# Determinism: masks against processes and threads", ""]
    if masks:
        calib = masks["calibration"]
        lines += [
            f"Default model ({masks['model']}), {masks['pattern']}, wiki calibration {calib['nsamples']} x "
            f"{calib['seqlen']}, seed {calib['seed']}; the same windows in every run. Differing mask entries "
            f"of {masks['pairs'][0]['entries']:,}.",
            "",
            "| method | runs compared | differing entries" + (" before | after |" if before else " |"),
            "|---|---|---|" + ("---|" if before else ""),
        ]
        old = _pair_rows(before) if before else {}
        for key, pair in _pair_rows(masks).items():
            cells = [_differences(old.get(key)), _differences(pair)] if before else [_differences(pair)]
            lines.append(f"| {key[0]} | {key[1]} vs {key[2]} | " + " | ".join(cells) + " |")
        lines += ["", "| run | mask sha256 | mean recon error | perplexity | seconds |", "|---|---|---|---|---|"]
        for label, run in masks["runs"].items():
            ppl = f"{run['perplexity']:.4f}" if run["perplexity"] else "–"
            lines.append(
                f"| {label} | {run['masks_sha256'][:12]} | {run['mean_recon_error']:.6f} | {ppl} | "
                f"{run['seconds']:.0f} |"
            )
        if before:
            lines += ["", "Before (perplexity and recon error of the old code):", ""]
            lines += [
                f"- {label}: recon {run['mean_recon_error']:.6f}, perplexity "
                + (f"{run['perplexity']:.4f}" if run["perplexity"] else "–")
                for label, run in before["runs"].items()
            ]
        lines.append("")
    cost = results.get("cost")
    if cost:
        lines += [
            f"Cost of one `LayerStats.add` on a window of {cost[0]['tokens']} tokens, median of "
            f"{results['settings']['repeats']} repeats interleaved with the fp32 accumulator it replaced; peak "
            f"memory is the RSS high-water mark above the input while the accumulator is built and fed "
            f"{results['settings']['windows']} windows, in a fresh process.",
            "",
            "| in | Hessian | fp32 ms | fp64 ms | time ratio | fp32 peak MB | fp64 peak MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in cost:
            old, new = row["fp32 (old)"], row["LayerStats (fp64)"]
            lines.append(
                f"| {row['in_features']} | {'yes' if row['hessian'] else 'no'} | {old['median_ms']:.2f} | "
                f"{new['median_ms']:.2f} | {row['time_ratio']:.2f} | {old['peak_mb']:.1f} | {new['peak_mb']:.1f} |"
            )
        lines.append("")
    model_pass = results.get("model_pass")
    if model_pass:
        times = model_pass["median_ms"]
        lines += [
            f"One forward of the default model on a window of {model_pass['tokens']} tokens, gathering the "
            f"statistics of all {model_pass['layers']} prunable layers as the walk's calibration passes do "
            f"(median of {results['settings']['repeats']} interleaved repeats):",
            "",
            "| statistics | ms | against no statistics |",
            "|---|---|---|",
            *[f"| {name} | {ms:.0f} | {ms / times['no statistics']:.2f}x |" for name, ms in times.items()],
            "",
        ]
    facts = results["machine"]
    lines += [
        f"Machine: {facts['cpu']} ({', '.join(facts['cpu_features'])}), {facts['logical_cpus']} cores, "
        f"torch threads {facts['torch_threads']}, torch {facts['versions'].get('torch')}. "
        "Reproduce: `python benchmarks/determinism.py`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "masks", "cost"), default="all")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=10, help="perplexity windows per run (0: none)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per window of the cost part")
    parser.add_argument("--pass-tokens", type=int, default=512, help="tokens of the whole-model pass")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--windows", type=int, default=4, help="windows fed while peak memory is measured")
    parser.add_argument("--before", type=Path, default=None, help="a masks result of older code, shown beside")
    parser.add_argument("--name", default="determinism")
    args = parser.parse_args()
    path = RESULTS / f"{args.name}.json"
    results = json.loads(path.read_text()) if path.exists() else {}  # a part run alone keeps the other
    results["machine"] = machine()
    if args.before:
        results["before"] = json.loads(args.before.read_text())["masks"]
    if args.part in ("all", "masks"):
        with tempfile.TemporaryDirectory(prefix="eggs-determinism-") as workdir:
            results["masks"] = part_masks(Path(workdir), args.nsamples, args.seqlen, args.eval_windows)
    if args.part in ("all", "cost"):
        results["settings"] = {"repeats": args.repeats, "windows": args.windows}
        results["cost"] = part_cost(args.tokens, args.repeats, args.windows)
        results["model_pass"] = part_model_pass(args.pass_tokens, args.repeats)
    write_json_atomic(path, results)
    write_atomic(RESULTS / f"{args.name}.md", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
