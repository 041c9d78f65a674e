"""The CUDA 2:4 path (PyTorch semi-structured sparsity) against dense, on this machine's GPU.

Offline and within ``--budget`` seconds (default 240); run through ``benchmarks/gpu_check.sh``.

Part 1 needs only torch. Per layer shape (SmolLM2-135M's and a 7B-class model's), dtype (fp16,
bf16) and token count: median CUDA time of dense ``F.linear`` and of
``eggs_ptp.kernels.gpu.SemiStructuredWeight`` (the padded ``to_sparse_semi_structured`` weight),
their ratio and the largest absolute difference. Per shape it reports the smallest token count from
which sparse stays faster: the value for ``gpu.SPARSE_FROM_TOKENS`` / ``sparse_from_tokens``.

Part 2, when transformers is importable: a random Llama of 1B-class width (8 blocks), pruned 2:4 by
magnitude, dense against ``SparseNMLinear`` layers (default threshold, and semi-structured for every
call): prefill time and greedy decode tokens/s.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "smollm2-135m": [(576, 576), (192, 576), (1536, 576), (576, 1536)],
    "7b-class": [(4096, 4096), (11008, 4096), (4096, 11008)],
}
TOKENS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def load_gpu_module():
    """eggs_ptp.kernels.gpu, or the same file loaded alone when the package's dependencies are missing."""
    try:
        from eggs_ptp.kernels import gpu

        return gpu
    except ImportError:
        spec = importlib.util.spec_from_file_location("eggs_ptp_gpu", ROOT / "src/eggs_ptp/kernels/gpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def cuda_ms(fn, repeats: int = 15, inner: int = 5) -> float:
    """Median milliseconds of one call, timed with CUDA events over ``inner`` back-to-back calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def random_2_of_4(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    weight = torch.randn(rows, cols, device="cuda")
    keep = weight.abs().reshape(rows, cols // 4, 4).topk(2, dim=-1).indices
    mask = torch.zeros(rows, cols // 4, 4, device="cuda", dtype=torch.bool).scatter_(-1, keep, True)
    return (weight * mask.reshape(rows, cols)).to(dtype)


def crossover(rows: list[dict]) -> int | None:
    """Smallest token count from which the sparse/dense ratio stays below 1."""
    best = None
    for row in reversed(rows):
        if row["ratio"] >= 1.0:
            break
        best = row["tokens"]
    return best


def layers(gpu, deadline: float) -> dict:
    results = {}
    for dtype_name, dtype in DTYPES.items():
        for family, shapes in SHAPES.items():
            for out_features, in_features in shapes:
                if time.monotonic() > deadline:
                    return results
                weight = random_2_of_4(out_features, in_features, dtype)
                bias = torch.randn(out_features, device="cuda", dtype=dtype)
                semi = gpu.SemiStructuredWeight(weight, bias)
                rows = []
                for tokens in TOKENS:
                    x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
                    with torch.inference_mode():
                        error = (semi.linear(x) - F.linear(x, weight, bias)).abs().max().item()
                        dense = cuda_ms(lambda: F.linear(x, weight, bias))
                        sparse = cuda_ms(lambda: semi.linear(x))
                    rows.append(
                        {
                            "tokens": tokens,
                            "dense_ms": dense,
                            "sparse_ms": sparse,
                            "ratio": sparse / dense,
                            "max_abs_diff": error,
                        }
                    )
                key = f"{dtype_name} {family} {out_features}x{in_features}"
                results[key] = {
                    "rows": rows,
                    "sparse_from_tokens": crossover(rows),
                    "padding": [semi.pad_rows, semi.pad_cols],
                }
                print(
                    f"{key:34s} sparse faster from {results[key]['sparse_from_tokens']} tokens; ratio at "
                    + ", ".join(f"{r['tokens']}: {r['ratio']:.2f}" for r in rows),
                    flush=True,
                )
    return results


def greedy(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode tokens/s, ids)."""
    from eggs_ptp.eval.speed import greedy_decode

    prefill, decode, ids = greedy_decode(model, prompt, new_tokens, torch.cuda.synchronize)
    return prefill, (new_tokens - 1) / decode, ids


def end_to_end(deadline: float, prompt_tokens: int = 2048, new_tokens: int = 64) -> dict:
    """Dense against SparseNMLinear layers in a random 1B-class Llama (needs transformers and eggs_ptp)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        from eggs_ptp.kernels import SparseNMLinear
    except ImportError as error:
        return {"skipped": f"needs transformers and eggs_ptp's dependencies: {error}"}
    config = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    dense = LlamaForCausalLM(config).to(device="cuda", dtype=torch.float16).eval()
    with torch.no_grad():
        for block in dense.model.layers:
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.copy_(random_2_of_4(*module.weight.shape, torch.float16))
    variants = {"dense": dense}
    for name, options in (
        ("sparse, default threshold", {}),
        ("sparse, semi-structured always", {"sparse_from_tokens": 1}),
    ):
        model = copy.deepcopy(dense)
        for block in model.model.layers:
            for child_name, module in list(block.named_modules()):
                if isinstance(module, torch.nn.Linear):
                    block.set_submodule(child_name, SparseNMLinear.from_linear(module, "2:4", **options))
        variants[name] = model
    prompt = torch.randint(0, config.vocab_size, (1, prompt_tokens), device="cuda", generator=None)
    results = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "dtype": "float16", "variants": {}}
    for name, model in variants.items():
        if time.monotonic() > deadline:
            break
        greedy(model, prompt, 4)  # warm-up: builds the semi-structured weights and dense copies
        runs = [greedy(model, prompt, new_tokens) for _ in range(3)]
        results["variants"][name] = {
            "prefill_ms": statistics.median(r[0] for r in runs) * 1e3,
            "decode_tokens_per_s": statistics.median(r[1] for r in runs),
            "ids": runs[0][2],
        }
        print(
            f"{name:32s} prefill {results['variants'][name]['prefill_ms']:.1f} ms, decode "
            f"{results['variants'][name]['decode_tokens_per_s']:.1f} tokens/s",
            flush=True,
        )
    return results


def markdown(record: dict) -> str:
    lines = [
        f"# CUDA 2:4 check: {record['device']}",
        "",
        f"torch {record['torch']}, cuSPARSELt {record['cusparselt']}. Ratio = semi-structured / dense time "
        "(median of 15 x 5 calls, CUDA events). Reproduce: `benchmarks/gpu_check.sh`.",
        "",
        "| dtype, shape (out x in) | sparse faster from | " + " | ".join(f"{t} tok" for t in TOKENS) + " |",
        "|---|---|" + "---|" * len(TOKENS),
    ]
    for key, entry in record["layers"].items():
        ratios = {r["tokens"]: f"{r['ratio']:.2f}" for r in entry["rows"]}
        lines.append(
            f"| {key} | {entry['sparse_from_tokens']} | " + " | ".join(ratios.get(t, "") for t in TOKENS) + " |"
        )
    e2e = record["end_to_end"]
    if "variants" in e2e:
        lines += [
            "",
            f"Random 1B-class Llama (8 blocks, fp16, 2:4 by magnitude), {e2e['prompt_tokens']}-token prompt, "
            f"{e2e['new_tokens']} greedy tokens:",
            "",
            "| model | prefill ms | decode tokens/s |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {v['prefill_ms']:.1f} | {v['decode_tokens_per_s']:.1f} |"
            for name, v in e2e["variants"].items()
        ]
    elif e2e:
        lines += ["", f"End to end skipped: {e2e['skipped']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds; parts left when it runs out are skipped")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: torch sees no CUDA device; run this on a GPU machine with a CUDA build of torch", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget
    gpu = load_gpu_module()
    record = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cusparselt": torch.backends.cusparselt.is_available(),
        "layers": layers(gpu, deadline - 60),
    }
    record["end_to_end"] = end_to_end(deadline) if time.monotonic() < deadline - 30 else {"skipped": "out of time"}
    args.output.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(record, indent=2) + "\n"), ("gpu_check.md", markdown(record))):
        temporary = args.output / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, args.output / name)
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
