"""The CPU kernel's code paths against dense ``F.linear`` at one token and one thread, per layer shape.

For each of SmolLM2-135M's 2:4 layer shapes (rows x cols: 576x576, 192x576, 1536x576, 576x1536)
and each dtype, one call is timed for

* ``dense``: ``F.linear`` on the dense weight with zeros (fp32 or bf16 weight and input);
* ``avx2`` and ``avx512``: the compact kernel forced to that code path (``CompactLayer.linear``);
* ``int8`` and ``int4``: the quantized kernel (``QuantCompactLayer.linear``) on the same masks, int8
  per-channel symmetric and int4 in groups of 128 without zero points, per code path; their ratios
  are against the fp32 dense time, the model they would replace;
* ``torch int8``: PyTorch's dynamic int8 ``nn.Linear`` (``torch.ao.quantization.quantize_dynamic``,
  fbgemm: 8-bit activations and weights, per-tensor) on the same dense weight, the CPU int8 baseline
  the quantized kernel is measured against (``... vs torch int8``: its time / ours);
* with ``--baseline-source OLD.c`` (an earlier ``nm_linear.c``: ``git show REV:src/eggs_ptp/kernels/nm_linear.c
  > OLD.c``), its paths through the same Python wrapper (calling its ``eggs_nm_linear`` /
  ``eggs_nm_qlinear`` with every argument, as the wrapper did before prepared layers), to measure
  before and after in one run.

The summary sums each way's time over SmolLM2-135M's 210 pruned layers at one token
(``MODEL_LAYERS``: 60 each of the first three shapes, 30 of 576x1536).

Two settings: ``streamed`` cycles through copies of the layer totalling ``--stream-mib`` of dense
fp32 weight per timed pass, so the weights come from memory as in decode (the setting that counts);
``cached`` calls one layer over and over, its weights in cache. Each figure is the median over
``--repeats`` interleaved repeats of (dense time) / (kernel time): above 1, the kernel is faster.
CPU flags and the load average (the development machine is shared) are recorded beside them.

    python benchmarks/kernel_avx2.py    # writes benchmarks/results/kernel_avx2.{json,md}
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from eggs_ptp.atomic import write_atomic
from eggs_ptp.eval.speed import machine
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.formats.codec import pack_bits
from eggs_ptp.kernels import build, cpu

RESULTS = Path(__file__).parent / "results"
SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # (rows = out, cols = in)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CACHED_CALLS = 50  # calls per timed sample when one layer is called over and over
MODEL_LAYERS = {(576, 576): 60, (192, 576): 60, (1536, 576): 60, (576, 1536): 30}  # SmolLM2-135M's pruned layers


def cpu_flags() -> dict[str, bool | str]:
    """The vector features the code paths need, and the CPU family and model (26 is AMD Zen 5)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    first = lines[: lines.index("")] if "" in lines else lines  # the first processor's block
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first)}
    flags = set(fields.get("flags", "").split())
    found: dict[str, bool | str] = {
        flag: flag in flags for flag in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl")
    }
    return {**found, "cpu family": fields.get("cpu family", "?"), "model": fields.get("model", "?")}


def baseline_kernel(source: Path) -> dict[str, Callable[..., int]]:
    """``eggs_nm_linear`` and ``eggs_nm_qlinear`` from another version of the kernel source, built as
    the package builds its own."""
    folder = Path(tempfile.mkdtemp(prefix="eggs-ptp-baseline-"))
    target = folder / "baseline.so"
    compiler = build.find_compiler() or "gcc"
    subprocess.run([compiler, *build.FLAGS, build.OPENMP_FLAG, "-o", str(target), str(source)], check=True)
    library = ctypes.CDLL(str(target))
    found = {}
    for name in ("eggs_nm_linear", "eggs_nm_qlinear"):
        found[name] = getattr(library, name)
        found[name].argtypes = getattr(cpu.library(), name).argtypes
    return found


def baseline_layer(layer: cpu.CompactLayer | cpu.QuantCompactLayer, baseline: dict) -> object:
    """A copy of `layer` whose ``linear`` calls the baseline build with all of its arguments."""
    if isinstance(layer, cpu.QuantCompactLayer):
        copy = cpu.QuantCompactLayer(
            layer.qvalues, layer.bits, layer.bitmask, layer.cols, layer.scales, layer.zeros, layer.group_size
        )
        copy._kernel = baseline["eggs_nm_qlinear"]
        copy._arguments = (
            layer.qvalues.data_ptr(),
            layer.bits,
            layer.bitmask.data_ptr(),
            layer.rows,
            layer.cols,
            layer.kept,
            layer.scales.data_ptr(),
            None if layer.zeros is None else layer.zeros.data_ptr(),
            layer.group_size,
            None,
        )
    else:
        copy = cpu.CompactLayer(layer.values, layer.bitmask, layer.cols)
        copy._kernel = baseline["eggs_nm_linear"]
        copy._arguments = (
            layer.values.data_ptr(),
            cpu.DTYPE_CODES[layer.values.dtype],
            layer.bitmask.data_ptr(),
            layer.rows,
            layer.cols,
            layer.values.shape[1],
            None,
        )
    return copy


def torch_int8(weight: torch.Tensor) -> torch.nn.Module:
    """PyTorch's dynamic int8 ``nn.Linear`` of a dense fp32 weight (no bias)."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data.copy_(weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, torch.qint8)[0]


def random_layer(rows: int, cols: int, generator: torch.Generator) -> dict[str, object]:
    """One random 2:4 layer in every form timed: dense fp32 / bf16, compact fp32 / bf16, int8, int4."""
    keep = (torch.rand(rows, cols // 4, 4, generator=generator).argsort(dim=-1) < 2).reshape(rows, cols)
    weight = torch.randn(rows, cols, generator=generator) * keep
    bitmask, kept = pack_bits(keep), cols // 2
    values = weight[keep].reshape(rows, kept)
    q8 = torch.randint(-128, 128, (rows, kept), generator=generator, dtype=torch.int8)
    q4 = torch.randint(0, 256, (rows, kept // 2), generator=generator, dtype=torch.uint8)
    return {
        "torch int8": torch_int8(weight),
        "dense float32": weight,
        "dense bfloat16": weight.bfloat16(),
        "float32": cpu.CompactLayer(values, bitmask, cols),
        "bfloat16": cpu.CompactLayer(values.bfloat16(), bitmask, cols),
        "int8": cpu.QuantCompactLayer(q8, 8, bitmask, cols, torch.rand(rows, 1, generator=generator).half()),
        "int4": cpu.QuantCompactLayer(
            q4, 4, bitmask, cols, torch.rand(rows, -(-cols // 128), generator=generator).half(), group_size=128
        ),
    }


def ways(layers: list[dict], cols: int, isas: list[str], baseline: dict | None) -> dict[str, Callable]:
    """Every timed call, each over all `layers` (copies of one shape) with one token."""
    generator = torch.Generator().manual_seed(1)
    x = {name: torch.randn(1, cols, generator=generator).to(dtype) for name, dtype in DTYPES.items()}

    def dense(name: str) -> Callable:
        return lambda: [F.linear(x[name], layer[f"dense {name}"]) for layer in layers]

    def kernel(kind: str, isa: str, inputs: torch.Tensor, compact: list | None = None) -> Callable:
        compact = compact or [layer[kind] for layer in layers]
        return lambda: [layer.linear(inputs, isa, 1) for layer in compact]

    found = {f"dense {name}": dense(name) for name in DTYPES}
    found["torch int8"] = lambda: [layer["torch int8"](x["float32"]) for layer in layers]
    for isa in isas:
        for name in (*DTYPES, "int8", "int4"):
            inputs = x.get(name, x["float32"])
            found[f"{name} {isa}"] = kernel(name, isa, inputs)
            if baseline is not None:  # the same Python call into the other build
                old = [baseline_layer(layer[name], baseline) for layer in layers]
                found[f"{name} {isa} baseline"] = kernel(name, isa, inputs, old)
    return found


def measure(rows: int, cols: int, copies: int, calls: int, repeats: int, isas: list[str], baseline) -> dict:
    generator = torch.Generator().manual_seed(rows * cols)
    layers = [random_layer(rows, cols, generator) for _ in range(copies)]
    timed = ways(layers, cols, isas, baseline)
    times: dict[str, list[float]] = {name: [] for name in timed}
    with torch.inference_mode():
        for fn in timed.values():
            fn()
        for _ in range(repeats):
            for name, fn in timed.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                times[name].append((time.perf_counter() - start) / (calls * copies))
    median = {name: statistics.median(values) for name, values in times.items()}
    ratios = {}
    for name, value in median.items():
        if not name.startswith("dense"):
            reference = "dense bfloat16" if name.startswith("bfloat16") else "dense float32"
            ratios[name] = median[reference] / value
            if name.startswith(("int8", "int4")):
                ratios[f"{name} vs bfloat16"] = median["dense bfloat16"] / value
                ratios[f"{name} vs torch int8"] = median["torch int8"] / value
    return {
        "rows": rows,
        "cols": cols,
        "copies": copies,
        "us": {name: value * 1e6 for name, value in median.items()},
        "us min": {name: min(values) * 1e6 for name, values in times.items()},
        "dense / kernel": ratios,
    }


def table(results: list[dict], columns: list[str]) -> list[str]:
    lines = ["| shape | dense fp32 us | dense bf16 us | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 3) + "|")
    for r in results:
        cells = [f"{r['dense / kernel'][c]:.2f}x" if c in r["dense / kernel"] else "-" for c in columns]
        lines.append(
            f"| {r['rows']}x{r['cols']} | {r['us']['dense float32']:.1f} | {r['us']['dense bfloat16']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def times_table(results: list[dict], columns: list[str]) -> list[str]:
    """Microseconds a call per shape, ours against torch's int8, and the sum over SmolLM2's 210 layers."""
    shown = ["torch int8", *columns]
    lines = [
        "| shape | "
        + " | ".join(f"{c} us" for c in shown)
        + " | "
        + " | ".join(f"{c} vs torch int8" for c in columns)
        + " |"
    ]
    lines.append("|---" * (2 * len(columns) + 2) + "|")
    total = dict.fromkeys(shown, 0.0)
    for r in results:
        count = MODEL_LAYERS.get((r["rows"], r["cols"]), 0)
        for c in shown:
            total[c] += count * r["us"][c] / 1000
        ratios = [f"{r['us']['torch int8'] / r['us'][c]:.2f}x" for c in columns]
        lines.append(
            f"| {r['rows']}x{r['cols']} | "
            + " | ".join(f"{r['us'][c]:.1f}" for c in shown)
            + " | "
            + " | ".join(ratios)
            + " |"
        )
    ratios = [f"{total['torch int8'] / total[c]:.2f}x" for c in columns]
    lines.append(
        "| SmolLM2 210 layers, ms | " + " | ".join(f"{total[c]:.2f}" for c in shown) + " | " + " | ".join(ratios) + " |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--stream-mib", type=float, default=96.0, help="dense fp32 MiB cycled through per pass")
    parser.add_argument("--baseline-source", type=Path, default=None, help="another nm_linear.c to time alongside")
    parser.add_argument("--name", default="kernel_avx2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    isas = [isa for isa in ("avx2", "avx512") if isa in cpu.kernel_info()["isas"]]
    baseline = baseline_kernel(args.baseline_source) if args.baseline_source else None
    load_before = list(os.getloadavg())
    record: dict = {"cpu_flags": cpu_flags(), "isas": isas, "repeats": args.repeats, "threads": 1, "tokens": 1}
    record["baseline_source"] = None if baseline is None else str(args.baseline_source)
    for setting in ("streamed", "cached"):
        record[setting] = []
        for rows, cols in SHAPES:
            copies = max(1, int(-(-args.stream_mib * 2**20 // (rows * cols * 4)))) if setting == "streamed" else 1
            calls = 1 if setting == "streamed" else CACHED_CALLS
            record[setting].append(measure(rows, cols, copies, calls, args.repeats, isas, baseline))
            print(setting, rows, cols, {k: round(v, 2) for k, v in record[setting][-1]["dense / kernel"].items()})
    record["load_average"] = {"before": load_before, "after": list(os.getloadavg())}
    record["machine"] = machine()
    write_json_atomic(RESULTS / f"{args.name}.json", record)

    suffixes = [" baseline", ""] if baseline is not None else [""]
    float_columns = [f"{name} {isa}{suffix}" for name in DTYPES for isa in isas for suffix in suffixes]
    quant_columns = ["torch int8"] + [
        f"{kind} {isa}{suffix}" for kind in ("int8", "int4") for isa in isas for suffix in suffixes
    ]
    flags = ", ".join(
        f"{flag} {present if isinstance(present, str) else 'yes' if present else 'no'}"
        for flag, present in record["cpu_flags"].items()
    )
    lines = [
        "# CPU kernel code paths against dense F.linear, one token, one thread",
        "",
        f"{record['machine']['cpu']} ({flags}); load average {load_before[0]:.2f} before, "
        f"{record['load_average']['after'][0]:.2f} after (a shared machine: other work skews single figures). "
        f"Median of {args.repeats} interleaved repeats of dense time / kernel time (above 1: the kernel is "
        "faster), random 2:4 layers of SmolLM2-135M's shapes. fp32 and bf16 columns compare with dense in "
        "the same dtype; int8 (per channel, symmetric), int4 (groups of 128, symmetric) and torch's dynamic int8 "
        "`nn.Linear` with dense fp32; the time tables give microseconds a call and `vs torch int8` = torch's "
        "time / ours (above 1: ours is faster)"
        + (f"; `baseline` is `{args.baseline_source.name}` timed in the same run" if baseline is not None else "")
        + f". Reproduce: `{' '.join(['python', 'benchmarks/kernel_avx2.py', *sys.argv[1:]])}`.",
        "",
    ]
    for setting, title in (
        ("streamed", f"weights streamed from memory ({args.stream_mib:g} MiB of dense fp32 copies per pass)"),
        ("cached", f"one layer called {CACHED_CALLS} times per sample (weights in cache)"),
    ):
        lines += [f"## {setting}: {title}", "", *table(record[setting], float_columns), ""]
        lines += [*table(record[setting], quant_columns), ""]
        lines += [*times_table(record[setting], quant_columns[1:]), ""]
    write_atomic(RESULTS / f"{args.name}.md", "\n".join(lines))


if __name__ == "__main__":
    main()
