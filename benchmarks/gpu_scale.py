"""The scale paths on GPUs: CUDA compute, low-memory on CUDA, and NCCL ranks, against the CPU.

Offline (a random Llama of 1B-class width is written locally, with a tokenizer trained on the
embedded text's first paragraphs), in a few minutes. Each run prunes with ``wanda`` 2:4 through
the CLI and is compared with the CPU run: mask agreement and the largest weight difference.

    PYTHONPATH=src python benchmarks/gpu_scale.py [--output benchmarks/results]

With 2 or more GPUs it adds ``--nproc 2`` (NCCL, one GPU per rank). Writes gpu_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=4,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=2000,
    max_position_embeddings=1024,
)


def write_model(folder: Path) -> Path:
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SHAPE)).to(torch.bfloat16).save_pretrained(folder)
    text = (Path(__file__).parent.parent / "README.md").read_text()
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=SHAPE["vocab_size"], special_tokens=["<unk>"]))
    PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>").save_pretrained(folder)
    calib = folder / "calib.txt"
    calib.write_text(text * 4)
    return calib


def prune(model: Path, out: Path, calib: Path, *extra: str) -> float:
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "eggs_ptp",
        "prune",
        str(model),
        "-o",
        str(out),
        "--method",
        "wanda",
        "--nsamples",
        "16",
        "--seqlen",
        "256",
        "--calib",
        str(calib),
        "--dtype",
        "bfloat16",
        "-q",
        *extra,
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)
    if finished.returncode:
        raise SystemExit(f"{' '.join(extra)} failed:\n{finished.stderr[-2000:]}")
    return time.perf_counter() - started


def compare(reference: Path, other: Path) -> dict:
    left, right = (
        dict(kv for p in sorted(f.glob("*.safetensors")) for kv in load_file(p).items()) for f in (reference, other)
    )
    agree = sum(int(((left[k] != 0) == (right[k] != 0)).sum()) for k in left)
    total = sum(left[k].numel() for k in left)
    return {
        "mask_agreement": agree / total,
        "max_abs_difference": max(float((left[k].float() - right[k].float()).abs().max()) for k in left),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eggs-gpu-scale-"))
    model = work / "model"
    calib = write_model(model)
    runs = {
        "cpu": ["--device", "cpu"],
        "cuda": ["--device", "cuda"],
        "cuda low-memory": ["--device", "cuda", "--low-memory"],
    }
    if torch.cuda.device_count() >= 2:
        runs["cuda 2 NCCL ranks"] = ["--device", "cuda", "--nproc", "2"]
    results = {"device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "shape": SHAPE, "runs": {}}
    for label, extra in runs.items():
        out = work / label.replace(" ", "-")
        seconds = prune(model, out, calib, *extra)
        row = {"seconds": seconds, **(compare(work / "cpu", out) if label != "cpu" else {})}
        report = json.loads((out / "sparsity.json").read_text())["summary"]
        row.update(peak_rss_mb=report["peak_rss_mb"], peak_cuda_mb=report.get("peak_cuda_mb"))
        results["runs"][label] = row
        print(label, row, flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "gpu_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Scale paths on {results['device']} ({results['gpus']} GPUs)",
        "",
        "| run | seconds | mask agreement with CPU | max abs weight difference | peak CUDA MB |",
        "|---|---|---|---|---|",
    ]
    for label, row in results["runs"].items():
        lines.append(
            f"| {label} | {row['seconds']:.1f} | {row.get('mask_agreement', 1.0):.6f} | "
            f"{row.get('max_abs_difference', 0.0):.3g} | {row.get('peak_cuda_mb') or '-'} |"
        )
    (args.output / "gpu_scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
