"""Dense against compact-sparse size and speed of one pruned checkpoint, side by side in one process.

Both models are loaded from the same packed folder: the dense one with its pruned layers rebuilt as
weights with zeros (bit for bit), the sparse one with :class:`eggs_ptp.kernels.SparseNMLinear`
layers. Every timed quantity is measured ``repeats`` times, dense and sparse back to back in each
repeat so both see the same machine load; each ratio is sparse / dense within one repeat, reported
as min / median / max over repeats. Wall times depend on the machine and its load: the record
keeps the CPU, its vector features, the thread count and the load average, and nothing here
asserts a time.
"""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from eggs_ptp.formats.checkpoint import read_report
from eggs_ptp.formats.compact import COMPACT_FILE, load_compact, pack_checkpoint, read_compact
from eggs_ptp.formats.tensors import tensor_files
from eggs_ptp.kernels.swap import load_sparse
from eggs_ptp.report import library_versions

BENCH_TYPE = "eggs-ptp/bench"
BENCH_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_CPU_FEATURES = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_vnni",
    "amx_bf16",
    "asimd",
    "sve",
)


@dataclass(frozen=True)
class BenchSettings:
    """What ``eggs-ptp bench`` runs; ``dtype`` None keeps the checkpoint's own."""

    tokens: tuple[int, ...] = (1, 8, 128)
    repeats: int = 5
    prompt_tokens: int = 128
    new_tokens: int = 32
    dtype: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.tokens or min(self.tokens) < 1:
            raise ValueError(f"tokens must be positive counts such as 1,8,128, got {self.tokens}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.prompt_tokens < 1 or self.new_tokens < 2:
            raise ValueError(
                f"need prompt_tokens >= 1 and new_tokens >= 2, got {self.prompt_tokens} and {self.new_tokens}"
            )
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def paired_times(dense: Callable[[], Any], sparse: Callable[[], Any], repeats: int) -> dict[str, dict[str, float]]:
    """Seconds of ``dense`` and ``sparse`` per repeat (after one untimed call of each) and their ratio."""
    dense(), sparse()
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for _ in range(repeats):
        for name, fn in (("dense", dense), ("sparse", sparse)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [s / d for s, d in zip(times["sparse"], times["dense"])]
    return {"dense": spread(times["dense"]), "sparse": spread(times["sparse"]), "ratio": spread(ratios)}


def machine() -> dict[str, Any]:
    """CPU model, the vector features the kernels care about, threads, and the kernel's code path."""
    from eggs_ptp.kernels import kernel_info

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_features": [f for f in _CPU_FEATURES if f in flags],
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "kernel": kernel_info(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": library_versions(),
    }


def _prepare(folder: Path, work: Path) -> tuple[Path, Path]:
    """(dense folder, packed folder): pack a dense checkpoint, or write the dense form of a packed one."""
    if (folder / COMPACT_FILE).exists():
        dense = work / "dense"
        load_compact(folder).save_pretrained(dense)
        return dense, folder
    read_report(folder)
    return folder, pack_checkpoint(folder, work / "compact").out


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights count once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _sizes(
    dense_dir: Path, compact_dir: Path, record: dict[str, Any], dense: torch.nn.Module, sparse: torch.nn.Module
) -> dict[str, Any]:
    names = [layer["name"] for layer in record["layers"]]
    dense_layers = [dense.get_submodule(name).weight for name in names]
    sparse_layers = [
        t for name in names for t in (sparse.get_submodule(name).values, sparse.get_submodule(name).bitmask)
    ]

    def pair(d: int, s: int) -> dict[str, float]:
        return {"dense": d, "sparse": s, "ratio": s / d}

    return {
        "disk_weight_files": pair(
            sum(p.stat().st_size for p in tensor_files(dense_dir)),
            sum(p.stat().st_size for p in tensor_files(compact_dir)),
        ),
        "resident_model": pair(
            _storage_bytes([*dense.parameters(), *dense.buffers()]),
            _storage_bytes([*sparse.parameters(), *sparse.buffers()]),
        ),
        "resident_pruned_layers": pair(_storage_bytes(dense_layers), _storage_bytes(sparse_layers)),
    }


def _shape_groups(record: dict[str, Any]) -> dict[tuple[int, int], list[str]]:
    groups: dict[tuple[int, int], list[str]] = {}
    for layer in record["layers"]:
        groups.setdefault(tuple(layer["shape"]), []).append(layer["name"])
    return groups


def _prompt(folder: Path, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, str]:
    """``length`` tokens that begin as the tokenizer begins a sequence (a BOS, or nothing), then the
    held-out text, when the folder has a tokenizer and the embedded text is installed (a natural
    prompt, so greedy outputs are comparable), else random ids."""
    from eggs_ptp.data import DataError, SequenceStart, load_text
    from eggs_ptp.data.calibration import tokenize
    from eggs_ptp.models.loading import load_tokenizer

    try:
        tokenizer = load_tokenizer(folder)
        start = SequenceStart.of(tokenizer)
        text = start.text_length(length)
        ids = tokenize(tokenizer, load_text("wiki", "evaluation").text[: 20 * length])[:text]
        if len(ids) == text:
            source = f"first {text} tokens of the held-out wiki split"
            return start.prepend(ids[None]), (f"{list(start.tokens)}, then the {source}" if start else source)
    except (OSError, ValueError, DataError):  # no tokenizer saved, the embedded text is not installed, or no room
        pass
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
    return ids, f"{length} random token ids (seed {seed})"


def greedy_decode(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, synchronize: Callable[[], None] = lambda: None
) -> tuple[float, float, list[int]]:
    """(prefill seconds, seconds of the new_tokens - 1 one-token steps, generated ids), with the KV cache.

    ``synchronize`` waits for queued device work (``torch.cuda.synchronize`` on a GPU) before each clock read.
    """
    # transformers 5.24 names the KV cache ``cache`` (``past_key_values`` goes in 5.40); older 5.x the old name
    cache = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        synchronize()
        start = time.perf_counter()
        out = model(prompt, use_cache=True)
        synchronize()
        prefilled = time.perf_counter()
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        generated = [token]
        for _ in range(new_tokens - 1):
            out = model(token, **{cache: out[cache]}, use_cache=True)
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            generated.append(token)
        synchronize()
        done = time.perf_counter()
    return prefilled - start, done - prefilled, torch.cat(generated, dim=1)[0].tolist()


def _call_all(modules: list[torch.nn.Module], x: torch.Tensor) -> None:
    for module in modules:
        module(x)


def _layers(
    dense: torch.nn.Module,
    sparse: torch.nn.Module,
    record: dict[str, Any],
    settings: BenchSettings,
    dtype: torch.dtype,
    bar: tqdm,
) -> list[dict[str, Any]]:
    """Per distinct layer shape and token count: one pass over all layers of that shape, per layer.

    Cycling through every layer of a shape (instead of one layer in a loop) keeps the weights
    coming from memory, not cache, as they do in a forward pass.
    """
    generator, rows = torch.Generator().manual_seed(settings.seed), []
    for (out_features, in_features), names in _shape_groups(record).items():
        dense_modules = [dense.get_submodule(name) for name in names]
        sparse_modules = [sparse.get_submodule(name) for name in names]
        for tokens in settings.tokens:
            bar.set_postfix_str(f"{out_features}x{in_features}, {tokens} tokens")
            x = torch.randn(tokens, in_features, generator=generator).to(dtype)
            with torch.inference_mode():
                timing = paired_times(
                    partial(_call_all, dense_modules, x), partial(_call_all, sparse_modules, x), settings.repeats
                )
            per_layer = {
                side: {k: v / len(names) * 1e6 for k, v in timing[side].items()} for side in ("dense", "sparse")
            }
            rows.append(
                {
                    "shape": [out_features, in_features],
                    "layers": len(names),
                    "tokens": tokens,
                    "sparse_path": sparse_modules[0].path(tokens),
                    "dense_us": per_layer["dense"],
                    "sparse_us": per_layer["sparse"],
                    "ratio": timing["ratio"],
                }
            )
            bar.update()
    return rows


def _totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """All pruned layers of one forward, per token count, from the per-layer medians."""
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = totals.setdefault(str(row["tokens"]), {"dense_us": 0.0, "sparse_us": 0.0})
        entry["dense_us"] += row["dense_us"]["median"] * row["layers"]
        entry["sparse_us"] += row["sparse_us"]["median"] * row["layers"]
    for entry in totals.values():
        entry["ratio"] = entry["sparse_us"] / entry["dense_us"]
    return totals


def _generation(
    dense: torch.nn.Module, sparse: torch.nn.Module, prompt: torch.Tensor, settings: BenchSettings, bar: tqdm
) -> dict[str, Any]:
    """Prefill time and greedy decode tokens/s, interleaved per repeat, after one untimed run each."""
    bar.set_postfix_str("greedy decode")
    outputs = {
        name: greedy_decode(model, prompt, settings.new_tokens)[2]
        for name, model in (("dense", dense), ("sparse", sparse))
    }
    bar.update()
    prefill: dict[str, list[float]] = {"dense": [], "sparse": []}
    speed: dict[str, list[float]] = {"dense": [], "sparse": []}
    for _ in range(settings.repeats):
        for name, model in (("dense", dense), ("sparse", sparse)):
            prefill_s, decode_s, _ = greedy_decode(model, prompt, settings.new_tokens)
            prefill[name].append(prefill_s)
            speed[name].append((settings.new_tokens - 1) / decode_s)
        bar.update()
    first_difference = next((i for i, (a, b) in enumerate(zip(outputs["dense"], outputs["sparse"])) if a != b), None)
    return {
        "prefill_s": {
            **{name: spread(v) for name, v in prefill.items()},
            "ratio": spread([s / d for s, d in zip(prefill["sparse"], prefill["dense"])]),
        },
        "decode_tokens_per_s": {
            **{name: spread(v) for name, v in speed.items()},
            "ratio": spread([s / d for s, d in zip(speed["sparse"], speed["dense"])]),
        },
        "greedy": {
            "identical": first_difference is None,
            "first_difference": first_difference,
            "dense_ids": outputs["dense"],
            "sparse_ids": outputs["sparse"],
        },
    }


def run_bench(folder: Path, settings: BenchSettings = BenchSettings(), progress: bool = True) -> dict[str, Any]:
    """Measure the pruned checkpoint ``folder`` (dense with zeros, or packed) dense against compact sparse.

    Returns the JSON-ready record: sizes, per-layer-shape times at each token count, totals over
    all pruned layers, prefill time, greedy decode tokens/s, and whether greedy outputs agree.
    """
    folder = Path(folder)
    dtype = _DTYPES.get(settings.dtype) if settings.dtype else None
    with tempfile.TemporaryDirectory(prefix="eggs-ptp-bench-") as work:
        dense_dir, compact_dir = _prepare(folder, Path(work))
        record = read_compact(compact_dir)
        dense = load_compact(compact_dir, dtype)
        sparse = load_sparse(compact_dir, dtype)
        sizes = _sizes(dense_dir, compact_dir, record, dense, sparse)
        model_dtype = next(dense.parameters()).dtype
        positions = getattr(dense.config, "max_position_embeddings", None)
        if positions is not None and settings.prompt_tokens + settings.new_tokens > positions:
            raise ValueError(
                f"prompt_tokens + new_tokens = {settings.prompt_tokens + settings.new_tokens} exceeds "
                f"the model's {positions} positions; pass smaller --prompt-tokens/--new-tokens"
            )
        prompt, prompt_source = _prompt(compact_dir, settings.prompt_tokens, dense.config.vocab_size, settings.seed)
        total = len(_shape_groups(record)) * len(settings.tokens) + 1 + settings.repeats
        with tqdm(total=total, desc="bench", disable=not progress, leave=False) as bar:
            layers = _layers(dense, sparse, record, settings, model_dtype, bar)
            generation = _generation(dense, sparse, prompt, settings, bar)
    return {
        "type": BENCH_TYPE,
        "schema_version": BENCH_VERSION,
        "source": str(folder),
        "pattern": record["pattern"],
        "dtype": str(model_dtype).removeprefix("torch."),
        "pruned_layers": len(record["layers"]),
        "settings": asdict(settings),
        "prompt": prompt_source,
        "machine": machine(),
        "sizes": sizes,
        "layers": layers,
        "pruned_layers_total": _totals(layers),
        **generation,
    }


def _mib(count: float) -> str:
    return f"{count / 2**20:.1f} MiB"


def _ratio(spread_: dict[str, float]) -> str:
    return f"{spread_['median']:.3f} ({spread_['min']:.3f}-{spread_['max']:.3f})"


def render_markdown(result: dict[str, Any]) -> str:
    """The record as markdown tables: sizes, per-layer times, totals, prefill and decode."""
    m = result["machine"]
    load = f"{m['load_average'][0]:.2f}" if m["load_average"] else "unknown"
    lines = [
        f"# eggs-ptp bench: {Path(result['source']).name}",
        "",
        f"Pattern {result['pattern']}, {result['dtype']}, {result['pruned_layers']} pruned layers. "
        f"{m['cpu']} ({', '.join(m['cpu_features']) or 'no vector features listed'}), {m['torch_threads']} "
        f"thread{'s' * (m['torch_threads'] != 1)}, kernel path `{m['kernel']['isa']}`, load average at the end {load}. "
        f"{result['settings']['repeats']} repeats; ratios are sparse / dense per repeat, median (min-max).",
        "",
        "| size | dense | compact sparse | ratio |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("disk_weight_files", "weight files on disk"),
        ("resident_model", "resident, whole model"),
        ("resident_pruned_layers", "resident, pruned layers"),
    ):
        entry = result["sizes"][name]
        lines.append(f"| {label} | {_mib(entry['dense'])} | {_mib(entry['sparse'])} | {entry['ratio']:.4f} |")
    lines += [
        "",
        "| layer shape (out x in) | layers | tokens | sparse path | dense µs/layer | sparse µs/layer | time ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["layers"]:
        lines.append(
            f"| {row['shape'][0]} x {row['shape'][1]} | {row['layers']} | {row['tokens']} | {row['sparse_path']} | "
            f"{row['dense_us']['median']:.1f} | {row['sparse_us']['median']:.1f} | {_ratio(row['ratio'])} |"
        )
    lines += [
        "",
        "| all pruned layers, one forward | dense ms | sparse ms | time ratio | speed-up |",
        "|---|---|---|---|---|",
    ]
    for tokens, entry in result["pruned_layers_total"].items():
        lines.append(
            f"| {tokens} tokens | {entry['dense_us'] / 1e3:.2f} | {entry['sparse_us'] / 1e3:.2f} | "
            f"{entry['ratio']:.3f} | {1 / entry['ratio']:.2f}x |"
        )
    prefill, decode, greedy = result["prefill_s"], result["decode_tokens_per_s"], result["greedy"]
    settings = result["settings"]
    lines += [
        "",
        "| end to end | dense | sparse | ratio |",
        "|---|---|---|---|",
        f"| prefill, {settings['prompt_tokens']} tokens (ms) | {prefill['dense']['median'] * 1e3:.1f} | "
        f"{prefill['sparse']['median'] * 1e3:.1f} | {_ratio(prefill['ratio'])} (time) |",
        f"| greedy decode (tokens/s) | {decode['dense']['median']:.2f} | {decode['sparse']['median']:.2f} | "
        f"{_ratio(decode['ratio'])} (speed) |",
        "",
        f"Prompt: {result['prompt']}; decode speed over the {settings['new_tokens'] - 1} one-token steps after it. "
        + (
            f"Greedy outputs identical for all {settings['new_tokens']} tokens."
            if greedy["identical"]
            else f"Greedy outputs first differ at token {greedy['first_difference']} of {settings['new_tokens']}."
        ),
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "BENCH_TYPE",
    "BENCH_VERSION",
    "BenchSettings",
    "greedy_decode",
    "machine",
    "paired_times",
    "render_markdown",
    "run_bench",
    "spread",
]
