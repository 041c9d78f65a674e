"""Pruning a model larger than the memory it is pruned in, and calibration split over processes.

Part 1 writes a synthetic Llama-shaped checkpoint of about 3B parameters in bfloat16 (random
weights, std 0.02, written shard by shard so that writing it never holds the model either) and
prunes it at 2:4 with ``eggs --low-memory`` in a child process. It records the child's peak RSS
(its own ``VmHWM``, from ``sparsity.json``) against the checkpoint's size, the wall time, and
whether ``eggs-ptp verify`` passes on the output.

Part 2 prunes the default model with ``eggs`` once in one process and once as 2 gloo processes
(``--nproc 2``) on the same calibration windows, and records both wall times and how many mask
entries agree.

    python benchmarks/scale.py                 # writes benchmarks/results/scale.{json,md}
    python benchmarks/scale.py --part distributed --nsamples 32

The checkpoint and outputs go to ``--workdir`` (default: a temporary folder, deleted afterwards;
part 1 needs about 13 GB of disk).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig

from eggs_ptp.atomic import write_atomic
from eggs_ptp.eval.speed import machine
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.models.loading import default_model_folder

RESULTS = Path(__file__).parent / "results"
TARGET_RSS_RATIO = 0.35
# Llama-shaped, about 3.1B parameters; the vocabulary is the default model's, so its tokenizer
# turns the embedded calibration text into valid ids.
SHAPE = dict(
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def write_synthetic_checkpoint(folder: Path, shape: dict, seed: int = 0) -> tuple[int, int]:
    """A sharded bf16 safetensors checkpoint, one shard per block; returns (parameters, bytes).

    Each shard is generated, written and dropped before the next, so writing never holds the model.
    """
    config = LlamaConfig(**shape, dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_folder()).save_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    hidden, inner, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    kv = config.num_key_value_heads * (hidden // heads)
    blocks = config.num_hidden_layers

    def normal(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=generator) * 0.02).to(torch.bfloat16)

    def ones() -> torch.Tensor:
        return torch.ones(hidden, dtype=torch.bfloat16)

    def block(index: int) -> dict[str, torch.Tensor]:
        p = f"model.layers.{index}."
        return {
            p + "self_attn.q_proj.weight": normal(hidden, hidden),
            p + "self_attn.k_proj.weight": normal(kv, hidden),
            p + "self_attn.v_proj.weight": normal(kv, hidden),
            p + "self_attn.o_proj.weight": normal(hidden, hidden),
            p + "mlp.gate_proj.weight": normal(inner, hidden),
            p + "mlp.up_proj.weight": normal(inner, hidden),
            p + "mlp.down_proj.weight": normal(hidden, inner),
            p + "input_layernorm.weight": ones(),
            p + "post_attention_layernorm.weight": ones(),
        }

    weight_map: dict[str, str] = {}
    parameters = 0
    for number in range(blocks + 1):
        tensors = (
            block(number)
            if number < blocks
            else {
                "model.embed_tokens.weight": normal(config.vocab_size, hidden),
                "model.norm.weight": ones(),
                "lm_head.weight": normal(config.vocab_size, hidden),
            }
        )
        name = f"model-{number + 1:05d}-of-{blocks + 1:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
        parameters += sum(tensor.numel() for tensor in tensors.values())
    size = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return parameters, size


def eggs_ptp(*args: object, timeout: float | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, "-m", "eggs_ptp", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    return finished, time.perf_counter() - started


def child_threads() -> int:
    """The thread count a pruning child starts with: ``OMP_NUM_THREADS`` when set, else torch's default."""
    return int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))


def part_low_memory(workdir: Path, nsamples: int, seqlen: int) -> dict:
    checkpoint, output = workdir / "synthetic-3b", workdir / "synthetic-3b-2of4"
    started = time.perf_counter()
    parameters, size = write_synthetic_checkpoint(checkpoint, SHAPE)
    written = time.perf_counter() - started
    print(f"wrote {parameters / 1e9:.2f}B parameters, {size / 2**30:.2f} GiB in {written:.0f} s", flush=True)
    finished, seconds = eggs_ptp(
        "prune",
        checkpoint,
        "-o",
        output,
        "--low-memory",
        "--method",
        "eggs",
        "--pattern",
        "2:4",
        "--dtype",
        "bfloat16",
        "--nsamples",
        nsamples,
        "--seqlen",
        seqlen,
        "-q",
        "--json",
    )
    if finished.returncode:
        raise SystemExit(f"prune failed:\n{finished.stderr[-3000:]}")
    report = json.loads((output / "sparsity.json").read_text())
    verified, _ = eggs_ptp("verify", output)
    # The child's own VmHWM: ru_maxrss of children would include this process's size at the fork.
    peak_mb = report["summary"]["peak_rss_mb"]
    ratio = peak_mb * 2**20 / size
    return {
        "shape": SHAPE,
        "parameters": parameters,
        "checkpoint_bytes": size,
        "write_seconds": written,
        "calibration": {"nsamples": nsamples, "seqlen": seqlen, "text": "wiki"},
        "threads": child_threads(),
        "prune_seconds": seconds,
        "peak_rss_mb": peak_mb,
        "peak_rss_source": "the pruning process's VmHWM",
        "peak_rss_ratio": ratio,
        "target_ratio": TARGET_RSS_RATIO,
        "meets_target": ratio <= TARGET_RSS_RATIO,
        "kept_fraction": report["summary"]["kept_fraction"],
        "pruned_layers": report["summary"]["pruned_layers"],
        "verify_passed": verified.returncode == 0,
        "verify_output": verified.stdout.strip().splitlines()[-1:],
        "output_bytes": sum(p.stat().st_size for p in output.glob("*.safetensors")),
    }


def _masks(folder: Path) -> dict[str, torch.Tensor]:
    report = json.loads((folder / "sparsity.json").read_text())
    wanted = {f"{layer['name']}.weight" for layer in report["layers"] if layer["skipped"] is None}
    masks = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            masks.update({key: handle.get_tensor(key) != 0 for key in wanted & set(handle.keys())})
    return masks


def part_distributed(workdir: Path, nsamples: int, seqlen: int) -> dict:
    common = ("smollm2-135m", "--method", "eggs", "--pattern", "2:4", "--nsamples", nsamples, "--seqlen", seqlen, "-q")
    rows = {}
    for label, extra in (("1 process", ()), ("2 gloo processes", ("--nproc", 2))):
        output = workdir / label.replace(" ", "-")
        finished, seconds = eggs_ptp("prune", *common, "-o", output, *extra)
        if finished.returncode:
            raise SystemExit(f"{label} failed:\n{finished.stderr[-3000:]}")
        rows[label] = {"seconds": seconds, "folder": output}
    single, double = (_masks(rows[label].pop("folder")) for label in rows)
    agree = sum(int((single[key] == double[key]).sum()) for key in single)
    total = sum(single[key].numel() for key in single)
    differing_layers = sorted(key for key in single if not torch.equal(single[key], double[key]))
    return {
        "model": "smollm2-135m",
        "method": "eggs",
        "pattern": "2:4",
        "calibration": {"nsamples": nsamples, "seqlen": seqlen, "text": "wiki"},
        "threads": child_threads(),
        "runs": rows,
        "time_ratio_2_over_1": rows["2 gloo processes"]["seconds"] / rows["1 process"]["seconds"],
        "mask_agreement": agree / total,
        "mask_entries": total,
        "layers_with_any_difference": len(differing_layers),
        "layers": len(single),
    }


def render(results: dict) -> str:
    lines = ["# Scale: a model larger than its memory budget, and calibration over processes", ""]
    low = results.get("low_memory")
    if low:
        lines += [
            f"Synthetic Llama-shaped checkpoint, {low['parameters'] / 1e9:.2f}B parameters in bfloat16 "
            f"({low['checkpoint_bytes'] / 2**30:.2f} GiB), pruned to 2:4 with `eggs --low-memory` on "
            f"{low['calibration']['nsamples']} x {low['calibration']['seqlen']} calibration tokens.",
            "",
            "| checkpoint | peak RSS | peak / checkpoint | target | prune time | verify |",
            "|---|---|---|---|---|---|",
            f"| {low['checkpoint_bytes'] / 2**30:.2f} GiB | {low['peak_rss_mb'] / 1024:.2f} GiB | "
            f"{low['peak_rss_ratio']:.3f}x | <= {low['target_ratio']}x | {low['prune_seconds']:.0f} s | "
            f"{'passed' if low['verify_passed'] else 'FAILED'} |",
            "",
        ]
    dist = results.get("distributed")
    if dist:
        lines += [
            f"Default model, `eggs` 2:4, {dist['calibration']['nsamples']} x {dist['calibration']['seqlen']} "
            "calibration, one process against two gloo processes on the same windows.",
            "",
            "| run | wall time |",
            "|---|---|",
            *[f"| {label} | {row['seconds']:.0f} s |" for label, row in dist["runs"].items()],
            "",
            f"Time ratio (2 processes / 1): {dist['time_ratio_2_over_1']:.2f}. Mask agreement: "
            f"{dist['mask_agreement']:.6f} of {dist['mask_entries']} entries; "
            f"{dist['layers_with_any_difference']} of {dist['layers']} layers differ anywhere.",
            "",
        ]
    lines += [
        f"Machine: {results['machine']['cpu']}, {results['machine']['logical_cpus']} cores, "
        f"torch threads {results['machine']['torch_threads']}. "
        "Reproduce: `python benchmarks/scale.py`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "low-memory", "distributed"), default="all")
    parser.add_argument("--nsamples", type=int, default=8, help="calibration windows of the 3B run")
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--dist-nsamples", type=int, default=32, help="calibration windows of the 1-vs-2 process run")
    parser.add_argument("--dist-seqlen", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--name", default="scale")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="eggs-scale-"))
    path = RESULTS / f"{args.name}.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = machine()
    try:
        if args.part in ("all", "distributed"):
            results["distributed"] = part_distributed(workdir / "distributed", args.dist_nsamples, args.dist_seqlen)
            write_json_atomic(path, results)
        if args.part in ("all", "low-memory"):
            results["low_memory"] = part_low_memory(workdir / "low-memory", args.nsamples, args.seqlen)
            write_json_atomic(path, results)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    write_atomic(RESULTS / f"{args.name}.md", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
