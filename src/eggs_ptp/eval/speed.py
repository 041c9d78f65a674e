"""Size and speed of pruned checkpoints against dense references, side by side in one process.

Every model measured is a *variant*: the first checkpoint's dense form (with zeros, bit for bit) is
the reference; optional dense baselines are the same weights in bfloat16 and PyTorch's dynamic
int8 ``nn.Linear`` (``torch.ao.quantization.quantize_dynamic``, the field's dense int8 on CPU);
then each checkpoint's compact form computed by :class:`eggs_ptp.kernels.SparseNMLinear` (fp,
int8 or int4 kept values), and the fp ones again in bfloat16. Within each repeat every variant runs
back to back, so all see the same machine load; each ratio is variant / reference within one
repeat, reported as min / median / max over repeats, at every thread count asked for. Wall times
depend on the machine and its load: the record keeps the CPU, its vector features, the thread
counts and the load average, and nothing here asserts a time.
"""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
BENCH_VERSION = 2  # 2: any number of variants (dense baselines, several checkpoints), several thread counts
BASELINES = ("bf16", "int8")
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
    "avx_vnni",
    "amx_bf16",
    "asimd",
    "sve",
)
REFERENCE = "dense"


@dataclass(frozen=True)
class BenchSettings:
    """What ``eggs-ptp bench`` runs; ``dtype`` None keeps the first checkpoint's own.

    ``threads``: each count is a full pass of every timing; None is torch's default count.
    ``baselines``: dense references besides the reference itself (``bf16``, ``int8``).
    """

    tokens: tuple[int, ...] = (1, 8, 128)
    repeats: int = 5
    prompt_tokens: int = 128
    new_tokens: int = 32
    dtype: str | None = None
    seed: int = 0
    threads: tuple[int | None, ...] = (None,)
    baselines: tuple[str, ...] = BASELINES

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
        if not self.threads or any(count is not None and count < 1 for count in self.threads):
            raise ValueError(f"threads must be counts >= 1, got {self.threads}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baseline {', '.join(unknown)}; choose from {', '.join(BASELINES)}")


@dataclass
class Variant:
    """One model measured: how it is labelled, computed and stored, and the model its greedy output
    must match (its own dense form; None for a dense baseline)."""

    label: str
    kind: str  # "dense" (weights with zeros), "dense int8" (torch dynamic) or "compact"
    model: torch.nn.Module
    dtype: str
    scheme: str | None = None  # the compact values' quantization, None for fp values
    folder: Path | None = None
    twin: torch.nn.Module | None = field(default=None, repr=False)


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def interleaved_times(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of every call per repeat, all calls back to back in each repeat (after one untimed
    call of each), so each repeat's ratios compare runs under the same load."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(repeats):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
    return times


def ratios(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each label's per-repeat ratio to the reference's value in the same repeat."""
    reference = values[REFERENCE]
    return {label: spread([v / r for v, r in zip(series, reference)]) for label, series in values.items()}


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


def _dynamic_int8_layer(module: torch.nn.Module) -> bool:
    """A torch dynamic int8 ``Linear``: its weight is a method returning the quantized tensor."""
    return hasattr(module, "_packed_params") and callable(getattr(module, "weight", None))


def _module_bytes(module: torch.nn.Module) -> int:
    """What one linear layer holds: its tensors, or a dynamic int8 layer's packed weight and bias."""
    if _dynamic_int8_layer(module):
        weight, bias = module.weight(), module.bias()
        per_channel = weight.qscheme() == torch.per_channel_affine
        scales = 12 * (weight.q_per_channel_scales().numel() if per_channel else 1)  # fp64 scale + int32 zero
        return weight.numel() + scales + (0 if bias is None else bias.numel() * bias.element_size())
    return _storage_bytes([*module.parameters(), *module.buffers()])


def _model_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    packed = [m for m in model.modules() if _dynamic_int8_layer(m)]
    return _storage_bytes(tensors) + sum(_module_bytes(m) for m in packed)


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


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module | str:
    """``model``'s ``nn.Linear`` layers as PyTorch's dynamic int8 ones (a copy), or why it cannot run here."""
    try:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # deprecation notices of torch.ao's quantized tensors
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
    except (ImportError, RuntimeError, NotImplementedError, AttributeError) as error:
        return f"torch dynamic int8 unavailable: {type(error).__name__}: {error}"


def _scheme_label(record: dict[str, Any]) -> str | None:
    scheme = record.get("quantization")
    if not scheme:
        return None
    grouping = "per channel" if scheme["group_size"] is None else f"g{scheme['group_size']}"
    label = f"int{scheme['bits']} {grouping}" + ("" if scheme["symmetric"] else " asym")
    head = record.get("head")
    return label + (f" + int{head['quantization']['bits']} head" if head else "")


def _variants(
    folders: list[tuple[Path, Path]], settings: BenchSettings
) -> tuple[list[Variant], list[dict[str, Any]], list[str]]:
    """Every variant, the compact records, and the baselines that could not be built (and why)."""
    dtype = _DTYPES.get(settings.dtype) if settings.dtype else None
    records = [read_compact(packed) for _, packed in folders]
    for other, (source, _) in zip(records[1:], folders[1:]):
        if [(layer["name"], layer["shape"]) for layer in other["layers"]] != [
            (layer["name"], layer["shape"]) for layer in records[0]["layers"]
        ]:
            raise ValueError(f"{source} prunes other layers than {folders[0][0]}; bench checkpoints of one model")
    reference = load_compact(folders[0][1], dtype)
    name = str(next(reference.parameters()).dtype).removeprefix("torch.")
    variants = [Variant(REFERENCE, "dense", reference, name, folder=folders[0][0])]
    skipped: list[str] = []
    in_bf16 = "bf16" in settings.baselines and name == "float32"
    if in_bf16:
        variants.append(Variant("dense bf16", "dense", load_compact(folders[0][1], torch.bfloat16), "bfloat16"))
    if "int8" in settings.baselines:
        # quantize_dynamic copies: an fp32 reference serves as its source without another load.
        quantized = dynamic_int8(reference if name == "float32" else load_compact(folders[0][1], torch.float32))
        names = [layer["name"] for layer in records[0]["layers"]]
        if not isinstance(quantized, str) and not all(
            _dynamic_int8_layer(quantized.get_submodule(name)) for name in names
        ):
            quantized = (
                "torch dynamic int8: it quantizes nn.Linear only, and some pruned layers are not (GPT-2's Conv1D)"
            )
        if isinstance(quantized, str):
            skipped.append(quantized)
        else:
            variants.append(
                Variant("dense int8 (torch dynamic)", "dense int8", quantized, "float32", "int8 per tensor")
            )
    for (_, packed), record in zip(folders, records):
        scheme = _scheme_label(record)
        label = f"compact {record['pattern']}" + (f" + {scheme}" if scheme else "")
        twin = reference if packed == folders[0][1] else load_compact(packed, dtype)
        variants.append(Variant(label, "compact", load_sparse(packed, dtype), name, scheme, packed, twin))
        if in_bf16 and scheme is None:
            twin_bf16 = load_compact(packed, torch.bfloat16)
            variants.append(
                Variant(
                    f"{label} bf16", "compact", load_sparse(packed, torch.bfloat16), "bfloat16", None, packed, twin_bf16
                )
            )
    labels = [variant.label for variant in variants]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two checkpoints give the same variant ({labels}); bench each pattern and scheme once")
    return variants, records, skipped


def _sizes(variants: list[Variant], names: list[str]) -> dict[str, dict[str, Any]]:
    sizes = {}
    for variant in variants:
        layers = sum(_module_bytes(variant.model.get_submodule(name)) for name in names)
        disk = sum(p.stat().st_size for p in tensor_files(variant.folder)) if variant.folder else None
        sizes[variant.label] = {"pruned_layers": layers, "model": _model_bytes(variant.model), "disk": disk}
    reference = sizes[REFERENCE]
    for entry in sizes.values():
        entry["pruned_layers_ratio"] = entry["pruned_layers"] / reference["pruned_layers"]
        entry["model_ratio"] = entry["model"] / reference["model"]
    return sizes


def _call_all(modules: list[torch.nn.Module], x: torch.Tensor) -> None:
    for module in modules:
        module(x)


def _layers(
    variants: list[Variant], record: dict[str, Any], settings: BenchSettings, bar: tqdm
) -> list[dict[str, Any]]:
    """Per distinct layer shape and token count: one pass over all layers of that shape, per layer.

    Cycling through every layer of a shape (instead of one layer in a loop) keeps the weights
    coming from memory, not cache, as they do in a forward pass. Inputs are in each variant's dtype.
    """
    generator, rows = torch.Generator().manual_seed(settings.seed), []
    for (out_features, in_features), names in _shape_groups(record).items():
        modules = {v.label: [v.model.get_submodule(name) for name in names] for v in variants}
        for tokens in settings.tokens:
            bar.set_postfix_str(f"{out_features}x{in_features}, {tokens} tokens")
            x = torch.randn(tokens, in_features, generator=generator)
            inputs = {v.label: x.to(_DTYPES[v.dtype]) for v in variants}
            calls = {label: partial(_call_all, group, inputs[label]) for label, group in modules.items()}
            with torch.inference_mode():
                times = interleaved_times(calls, settings.repeats)
            paths = {label: group[0].path(tokens) for label, group in modules.items() if hasattr(group[0], "path")}
            rows.append(
                {
                    "shape": [out_features, in_features],
                    "layers": len(names),
                    "tokens": tokens,
                    "paths": paths,
                    "us_per_layer": {label: spread([t / len(names) * 1e6 for t in ts]) for label, ts in times.items()},
                    "time_ratio": ratios(times),
                }
            )
            bar.update()
    return rows


def _totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """All pruned layers of one forward, per token count, from the per-layer medians."""
    totals: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        entry = totals.setdefault(str(row["tokens"]), {})
        for label, times in row["us_per_layer"].items():
            entry.setdefault(label, {"us": 0.0})["us"] += times["median"] * row["layers"]
    for entry in totals.values():
        for values in entry.values():
            values["time_ratio"] = values["us"] / entry[REFERENCE]["us"]
    return totals


def _generation(variants: list[Variant], prompt: torch.Tensor, settings: BenchSettings, bar: tqdm) -> dict[str, Any]:
    """Prefill time and greedy decode tokens/s, all variants interleaved per repeat after one untimed run each."""
    bar.set_postfix_str("greedy decode")
    for variant in variants:
        greedy_decode(variant.model, prompt, 2)
    prefill: dict[str, list[float]] = {v.label: [] for v in variants}
    speed: dict[str, list[float]] = {v.label: [] for v in variants}
    for _ in range(settings.repeats):
        for variant in variants:
            prefill_s, decode_s, _ = greedy_decode(variant.model, prompt, settings.new_tokens)
            prefill[variant.label].append(prefill_s)
            speed[variant.label].append((settings.new_tokens - 1) / decode_s)
        bar.update()
    return {
        "prefill_s": {label: spread(values) for label, values in prefill.items()},
        "prefill_time_ratio": ratios(prefill),
        "decode_tokens_per_s": {label: spread(values) for label, values in speed.items()},
        "decode_speedup": ratios(speed),
    }


def _greedy(variants: list[Variant], prompt: torch.Tensor, new_tokens: int) -> dict[str, dict[str, Any]]:
    """Each compact variant's greedy tokens against its own checkpoint's dense form in the same dtype
    (the dequantized weights for a quantized one); a dense baseline against the reference."""
    reference = greedy_decode(variants[0].model, prompt, new_tokens)[2]
    outputs = {}
    for variant in variants[1:]:
        ids = greedy_decode(variant.model, prompt, new_tokens)[2]
        expected = greedy_decode(variant.twin, prompt, new_tokens)[2] if variant.twin is not None else reference
        first = next((i for i, (a, b) in enumerate(zip(expected, ids)) if a != b), None)
        outputs[variant.label] = {
            "against": "its dense form" if variant.twin is not None else REFERENCE,
            "identical": first is None,
            "first_difference": first,
            "ids": ids,
            "expected_ids": expected,
        }
    return {"reference_ids": reference, "variants": outputs}


def run_bench(
    folders: Path | list[Path], settings: BenchSettings = BenchSettings(), progress: bool = True
) -> dict[str, Any]:
    """Measure the pruned checkpoints ``folders`` (dense with zeros, or packed; the first also gives
    the dense references) against the dense reference.

    Returns the JSON-ready record: every variant's sizes, then per thread count the per-layer-shape
    times at each token count, totals over all pruned layers, prefill time and greedy decode
    tokens/s, each as a ratio to the reference; and whether each compact model's greedy output
    equals its dense form's.
    """
    folders = [Path(folders)] if isinstance(folders, (str, Path)) else [Path(f) for f in folders]
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="eggs-ptp-bench-") as work:
        prepared = [_prepare(folder, Path(work) / str(number)) for number, folder in enumerate(folders)]
        variants, records, skipped = _variants(prepared, settings)
        record = records[0]
        reference = variants[0].model
        positions = getattr(reference.config, "max_position_embeddings", None)
        if positions is not None and settings.prompt_tokens + settings.new_tokens > positions:
            raise ValueError(
                f"prompt_tokens + new_tokens = {settings.prompt_tokens + settings.new_tokens} exceeds "
                f"the model's {positions} positions; pass smaller --prompt-tokens/--new-tokens"
            )
        prompt, prompt_source = _prompt(
            prepared[0][1], settings.prompt_tokens, reference.config.vocab_size, settings.seed
        )
        sizes = _sizes(variants, [layer["name"] for layer in record["layers"]])
        threads = list(dict.fromkeys(count or default_threads for count in settings.threads))
        steps = len(threads) * (len(_shape_groups(record)) * len(settings.tokens) + settings.repeats)
        runs = []
        try:
            with tqdm(total=steps, desc="bench", disable=not progress, leave=False) as bar:
                for count in threads:
                    torch.set_num_threads(count)
                    layers = _layers(variants, record, settings, bar)
                    runs.append(
                        {
                            "threads": count,
                            "layers": layers,
                            "pruned_layers_total": _totals(layers),
                            **_generation(variants, prompt, settings, bar),
                            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                        }
                    )
            greedy = _greedy(variants, prompt, settings.new_tokens)
        finally:
            torch.set_num_threads(default_threads)
    return {
        "type": BENCH_TYPE,
        "schema_version": BENCH_VERSION,
        "sources": [str(folder) for folder in folders],
        "pattern": record["pattern"],
        "dtype": variants[0].dtype,
        "pruned_layers": len(record["layers"]),
        "settings": asdict(settings),
        "prompt": prompt_source,
        "machine": machine(),
        "variants": [
            {"label": v.label, "kind": v.kind, "dtype": v.dtype, "scheme": v.scheme, "folder": str(v.folder or "")}
            for v in variants
        ],
        "skipped_baselines": skipped,
        "sizes": sizes,
        "runs": runs,
        "greedy": greedy,
    }


def _mib(count: float | None) -> str:
    return "-" if count is None else f"{count / 2**20:.1f} MiB"


def _ratio(spread_: dict[str, float]) -> str:
    return f"{spread_['median']:.3f} ({spread_['min']:.3f}-{spread_['max']:.3f})"


def render_markdown(result: dict[str, Any]) -> str:
    """The record as markdown tables: sizes, then per thread count per-layer times, totals, prefill and decode."""
    m = result["machine"]
    labels = [variant["label"] for variant in result["variants"]]
    lines = [
        f"# eggs-ptp bench: {', '.join(Path(source).name for source in result['sources'])}",
        "",
        f"Pattern {result['pattern']}, reference `{REFERENCE}` = the first checkpoint's weights with zeros in "
        f"{result['dtype']}, computed dense; {result['pruned_layers']} pruned layers. {m['cpu']} "
        f"({', '.join(m['cpu_features']) or 'no vector features listed'}), {m['logical_cpus']} logical CPUs, "
        f"kernel path `{m['kernel']['isa']}`"
        + (f" (forced by {m['kernel']['forced_by']})" if m["kernel"].get("forced_by") else "")
        + f". {result['settings']['repeats']} repeats; every ratio is "
        "variant / reference per repeat (speed-ups: reference time / variant time), median (min-max).",
        "",
    ]
    lines += [f"Not measured: {reason}." for reason in result["skipped_baselines"]]
    lines += [
        "",
        "| variant | pruned layers | ratio | whole model | ratio | weight files on disk |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        size = result["sizes"][label]
        lines.append(
            f"| {label} | {_mib(size['pruned_layers'])} | {size['pruned_layers_ratio']:.4f} | {_mib(size['model'])} | "
            f"{size['model_ratio']:.4f} | {_mib(size['disk'])} |"
        )
    for run in result["runs"]:
        load = f"{run['load_average'][0]:.2f}" if run["load_average"] else "unknown"
        lines += [
            "",
            f"## {run['threads']} thread{'s' * (run['threads'] != 1)} (load average after: {load})",
            "",
            "| layer shape (out x in) | layers | tokens | "
            + " | ".join(f"{label} µs/layer" for label in labels)
            + " |",
            "|---|---|---|" + "---|" * len(labels),
        ]
        for row in run["layers"]:
            cells = [
                f"{row['us_per_layer'][label]['median']:.1f}"
                + ("" if label == REFERENCE else f" ({1 / row['time_ratio'][label]['median']:.2f}x)")
                for label in labels
            ]
            lines.append(
                f"| {row['shape'][0]} x {row['shape'][1]} | {row['layers']} | {row['tokens']} | "
                + " | ".join(cells)
                + " |"
            )
        lines += [
            "",
            "| all pruned layers, one forward | " + " | ".join(f"{label}" for label in labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for tokens, entry in run["pruned_layers_total"].items():
            cells = [f"{entry[label]['us'] / 1e3:.2f} ms ({1 / entry[label]['time_ratio']:.2f}x)" for label in labels]
            lines.append(f"| {tokens} tokens | " + " | ".join(cells) + " |")
        settings = result["settings"]
        lines += [
            "",
            f"| end to end | prefill {settings['prompt_tokens']} tokens (ms) | prefill time ratio | "
            "greedy decode (tokens/s) | decode speed-up |",
            "|---|---|---|---|---|",
        ]
        for label in labels:
            lines.append(
                f"| {label} | {run['prefill_s'][label]['median'] * 1e3:.1f} | "
                f"{_ratio(run['prefill_time_ratio'][label])} | "
                f"{run['decode_tokens_per_s'][label]['median']:.2f} | {_ratio(run['decode_speedup'][label])} |"
            )
    lines += [
        "",
        f"Prompt: {result['prompt']}; decode speed over the {result['settings']['new_tokens'] - 1} "
        "one-token steps after it. Greedy outputs:",
        "",
    ]
    for label, greedy in result["greedy"]["variants"].items():
        verdict = (
            f"identical for all {result['settings']['new_tokens']} tokens"
            if greedy["identical"]
            else f"first differ at token {greedy['first_difference']}"
        )
        lines.append(f"- {label} against {greedy['against']}: {verdict}.")
    lines.append("")
    return "\n".join(lines)


__all__ = [
    "BASELINES",
    "BENCH_TYPE",
    "BENCH_VERSION",
    "BenchSettings",
    "Variant",
    "dynamic_int8",
    "greedy_decode",
    "interleaved_times",
    "machine",
    "ratios",
    "render_markdown",
    "run_bench",
    "spread",
]
