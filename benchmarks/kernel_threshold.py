"""Where the CPU kernel stops paying: SparseNMLinear's two CPU paths against each other, by token count.

For each stored form (fp values, int8 per channel, int4 in groups of 128), dtype and token count,
one call of every layer of a stack shaped like the default model's
pruned layers (SmolLM2-135M: 30 blocks of q, k, v, o 576-wide, gate/up 1536x576, down 576x1536;
random 2:4 weights, so the weights stream from memory as in a forward pass) is timed three ways:

* ``kernel``: the compiled kernel on the compact form (``dense_above_tokens`` forced high);
* ``dense path``: the weight decompressed for the call, then ``F.linear`` (forced low);
* ``dense model``: plain ``F.linear`` on a dense weight with zeros, for reference.

``DENSE_ABOVE_TOKENS`` (and ``QUANT_DENSE_ABOVE_TOKENS`` per bit width) in
``eggs_ptp/kernels/linear.py`` is the largest token count up to which the kernel is at least as
fast as the dense path at every smaller count, per dtype. Each time is the
fastest of ``--repeats`` interleaved repeats (the least disturbed by other work on a shared
machine; medians are kept in the JSON); the load average is recorded beside them.

    python benchmarks/kernel_threshold.py            # writes benchmarks/results/kernel_threshold.{json,md}
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eggs_ptp.atomic import write_atomic
from eggs_ptp.eval.speed import machine
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.kernels import SparseNMLinear
from eggs_ptp.kernels.linear import QuantSparseNMLinear
from eggs_ptp.quant import QuantScheme

RESULTS = Path(__file__).parent / "results"
BLOCK = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # (out, in)
TOKENS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def random_2_of_4(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(rows, cols // 4, 4, generator=generator).argsort(dim=-1) < 2
    return torch.randn(rows, cols, generator=generator) * keep.reshape(rows, cols)


def compact(weight: torch.Tensor, scheme: QuantScheme | None) -> SparseNMLinear:
    """The layer's compact module; quantized, its weight is first rounded to the scheme's grid."""
    if scheme is None:
        return SparseNMLinear.from_dense(weight, "2:4")
    kept = weight != 0
    grid = scheme.fit(weight, kept)
    on_grid = torch.where(kept, grid.round(weight), 0.0)
    return QuantSparseNMLinear.from_dense(on_grid, "2:4", grid=grid, dtype=weight.dtype)


def measure(
    dtype: torch.dtype, scheme: QuantScheme | None, blocks: int, tokens: tuple[int, ...], repeats: int
) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    weights = [random_2_of_4(rows, cols, generator).to(dtype) for _ in range(blocks) for rows, cols in BLOCK]
    sparse = [compact(w, scheme) for w in weights]
    rows = []
    for count in tokens:
        inputs = {cols: torch.randn(count, cols, generator=generator).to(dtype) for cols in {c for _, c in BLOCK}}

        def run_sparse(limit: int) -> None:
            for module in sparse:
                module.dense_above_tokens = limit
                module(inputs[module.in_features])

        ways = {
            "kernel": lambda: run_sparse(count),
            "dense path": lambda: run_sparse(0),
            "dense model": lambda: [F.linear(inputs[w.shape[1]], w) for w in weights],
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        with torch.inference_mode():
            for fn in ways.values():
                fn()
            for _ in range(repeats):
                for name, fn in ways.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        best = {name: min(values) * 1e3 for name, values in times.items()}
        rows.append(
            {
                "tokens": count,
                **{f"{name} ms": value for name, value in best.items()},
                **{f"{name} ms median": statistics.median(values) * 1e3 for name, values in times.items()},
                "kernel / dense path": best["kernel"] / best["dense path"],
                "kernel / dense model": best["kernel"] / best["dense model"],
            }
        )
        print(
            f"{dtype!s:15s} {scheme.name if scheme else 'fp':5s} {count:4d} tokens  "
            + "  ".join(f"{k} {v:8.2f}" for k, v in best.items()),
            flush=True,
        )
    return rows


def threshold(rows: list[dict]) -> int:
    """The largest token count up to which the kernel never lost to the dense path."""
    best = 0
    for row in rows:
        if row["kernel / dense path"] > 1.0:
            break
        best = row["tokens"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=30, help="decoder blocks of layers (30 = the real model)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--name", default="kernel_threshold")
    parser.add_argument("--threads", type=int, default=None, help="torch and kernel threads [default: torch's]")
    parser.add_argument("--quantize", default="none,int8,int4", help="stored values: none (fp), int8, int4 (g128)")
    args = parser.parse_args()
    tokens = tuple(int(t) for t in args.tokens.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    record = {"blocks": args.blocks, "block_shapes": BLOCK, "repeats": args.repeats, "results": {}, "threshold": {}}
    for quantize in args.quantize.split(","):
        scheme = QuantScheme.parse(quantize)
        for dtype_name, dtype in DTYPES.items():
            name = dtype_name if scheme is None else f"{dtype_name} {scheme.name}"
            rows = measure(dtype, scheme, args.blocks, tokens, args.repeats)
            record["results"][name], record["threshold"][name] = rows, threshold(rows)
    record["machine"] = machine()
    threads = record["machine"]["torch_threads"]
    write_json_atomic(RESULTS / f"{args.name}.json", record)
    lines = [
        "# CPU kernel against the dense path, by tokens per call",
        "",
        f"{args.blocks} blocks x {len(BLOCK)} SmolLM2-135M-shaped 2:4 layers, fastest of {args.repeats} repeats, "
        f"{record['machine']['cpu']}, {threads} thread{'s' * (threads != 1)}, "
        f"kernel `{record['machine']['kernel']['isa']}`, "
        f"load average {os.getloadavg()[0]:.2f}. Times are one call of every layer. "
        f"Reproduce: `{' '.join(['python', 'benchmarks/kernel_threshold.py', *sys.argv[1:]])}`.",
        "",
    ]
    for name, rows in record["results"].items():
        lines += [
            f"## {name}: kernel up to {record['threshold'][name]} tokens",
            "",
            "| tokens | kernel ms | dense path ms | dense model ms | kernel / dense path | kernel / dense model |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['tokens']} | {r['kernel ms']:.2f} | {r['dense path ms']:.2f} | {r['dense model ms']:.2f} | "
            f"{r['kernel / dense path']:.3f} | {r['kernel / dense model']:.3f} |"
            for r in rows
        ]
        lines.append("")
    write_atomic(RESULTS / f"{args.name}.md", "\n".join(lines))
    print(record["threshold"])


if __name__ == "__main__":
    main()
