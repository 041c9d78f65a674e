"""Hash every pruned weight, per method, to show that a change of code changes no result.

Each cell restores the dense weights, prunes with small calibration (8 x 128 tokens of the wiki
text, seed 0) and hashes the model's tensors: the kept masks alone, and the weights bit for bit.
With ``--reference``, each hash is compared with a file of the same shape written by older code:
``benchmarks/results/mask_hashes_reference.json`` at commit 6e74778 (fp64 calibration statistics,
before windows began with the tokenizer's sequence start), ``mask_hashes_reference_fp32.json`` at
27638a6 (fp32 statistics, before the method configs became types).

    python benchmarks/mask_hashes.py --reference benchmarks/results/mask_hashes_reference.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import time
from pathlib import Path

from eggs_ptp import OwlAllocation, PruneConfig, RunOptions, prune
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.methods import method_config
from eggs_ptp.models import load_model

RESULTS = Path(__file__).parent / "results"

# (method name, pattern, settings): method settings go to the method's config, the rest to PruneConfig.
CELLS = [
    ("magnitude", "2:4", {}),
    ("wanda", "2:4", {}),
    ("ria", "2:4", {}),
    ("sparsegpt", "2:4", {}),
    ("eggs", "2:4", {}),
    ("eggs+update", "2:4", {}),
    ("eggs", "4:8", {"b": 2, "rule": "diagonal"}),
    ("eggs", "2:4", {"permute": True}),
    ("eggs", "2:4", {"auto": True}),
    ("sparsegpt+refit", "2:4", {}),
    ("wanda", "0.5", {"allocation": "owl"}),
]
SHARED = ("permute", "allocation")


def config_for(method: str, pattern: str, settings: dict) -> PruneConfig:
    own = {k: v for k, v in settings.items() if k not in SHARED}
    return PruneConfig(
        method=method_config(method, **own),
        pattern=pattern,
        nsamples=8,
        seqlen=128,
        seed=0,
        permute=settings.get("permute", False),
        allocation=OwlAllocation() if settings.get("allocation") == "owl" else None,
    )


def hashes(model) -> dict[str, str]:
    masks, weights = hashlib.sha256(), hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        masks.update(name.encode())
        masks.update((tensor != 0).numpy().tobytes())
        weights.update(name.encode())
        weights.update(tensor.numpy().tobytes())
    return {"masks": masks.hexdigest(), "weights": weights.hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=None)
    parser.add_argument("--name", default="mask_hashes")
    args = parser.parse_args()
    reference = json.loads(args.reference.read_text())["cells"] if args.reference else {}
    loaded = load_model("smollm2-135m")
    dense = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"code": commit, "settings": "smollm2-135m fp32, wiki calibration 8 x 128, seed 0", "cells": {}}
    lines = [
        "# Mask and weight hashes per method",
        "",
        f"Code: {commit}; {record['settings']}. Reference: {args.reference or 'none'}.",
        "",
        "| cell | masks | weights | same masks | same weights | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for method, pattern, settings in CELLS:
        loaded.model.load_state_dict(dense)
        started = time.perf_counter()
        model, report = prune(
            loaded.model, loaded.tokenizer, config_for(method, pattern, settings), RunOptions(progress=False)
        )
        key = f"{method}|{pattern}|{json.dumps(settings, sort_keys=True)}"
        cell = {**hashes(model), "recon": report.summary()["mean_recon_error"]}
        record["cells"][key] = cell
        seconds = time.perf_counter() - started
        old = reference.get(key, {})
        same = [("yes" if old.get(k) == cell[k] else "NO") if old else "–" for k in ("masks", "weights")]
        lines.append(
            f"| {key} | {cell['masks'][:12]} | {cell['weights'][:12]} | {same[0]} | {same[1]} | {seconds:.0f} |"
        )
        print(lines[-1], flush=True)
    write_json_atomic(RESULTS / f"{args.name}.json", record)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
