"""What ``--quantize-head`` costs in quality: perplexity with the output head in its own dtype, and
rounded to nearest on int8 (per output channel) and int4 (groups of 128), for the dense model and
for any pruned checkpoints given (their head is the dense model's, so the rounding is the same
whatever the method). The head is rounded in memory exactly as ``prune --quantize-head`` does.

    python benchmarks/head_quality.py --second-text /tmp/pydoc --checkpoints /tmp/wanda-2of4-int8

Writes ``results/head_quality.json`` and ``results/head_quality.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from eggs_ptp.api import perplexity_meter
from eggs_ptp.data import SequenceStart
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import perplexity
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.models import load_model
from eggs_ptp.quant import QuantScheme, quantize_head
from eggs_ptp.report import library_versions
from quality import second_text

RESULTS = Path(__file__).parent / "results"
HEADS = {"as stored": None, "int8 per channel": QuantScheme(8), "int4 g128": QuantScheme(4, True, 128)}


def describe(source: str) -> str:
    """The model itself, or a pruned checkpoint by its method, pattern and calibration."""
    report = Path(source) / "sparsity.json"
    if not report.is_file():
        return f"`{source}` dense"
    record = json.loads(report.read_text())
    calibration = record["config"]
    return f"`{record['method']}` {record['pattern']}, {calibration['nsamples']} x {calibration['seqlen']}"


def render(record: dict) -> str:
    lines = [
        "# The output head rounded to nearest (`--quantize-head`)",
        "",
        f"Evaluation: {record['evaluation']}. `python benchmarks/head_quality.py` ({record['hardware']}).",
        "",
        "| model | head | perplexity | change | second text | change |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        base = next(r for r in record["rows"] if r["model"] == row["model"] and r["head"] == "as stored")
        change = row["perplexity"] / base["perplexity"] - 1
        second_change = row["second_perplexity"] / base["second_perplexity"] - 1
        lines.append(
            f"| {row['label']} | {row['head']} | {row['perplexity']:.2f} | {change:+.1%} | "
            f"{row['second_perplexity']:.2f} | {second_change:+.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--checkpoints", nargs="*", default=[], type=Path, help="pruned checkpoints (dense with zeros)")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--second-text", type=Path, required=True, help="an extracted python3.11-doc package")
    args = parser.parse_args()

    rows = []
    text, description = second_text(args.second_text)
    for source in [args.model, *map(str, args.checkpoints)]:
        loaded = load_model(source)
        measure = perplexity_meter(loaded.model, loaded.tokenizer, "wiki", args.windows, args.seqlen, progress=False)
        second, start = tokenize(loaded.tokenizer, text), SequenceStart.of(loaded.tokenizer)
        stored = {k: v.clone() for k, v in loaded.model.state_dict().items()}
        for head, scheme in HEADS.items():
            loaded.model.load_state_dict(stored)
            if scheme is not None:
                quantize_head(loaded.model, scheme)
            row = {
                "model": source,
                "label": describe(source),
                "head": head,
                "perplexity": measure(loaded.model).perplexity,
                "second_perplexity": perplexity(
                    loaded.model, second, args.seqlen, args.windows, description, progress=False, start=start
                ).perplexity,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    record = {
        "model": args.model,
        "evaluation": f"wiki evaluation split and {description}, first {args.windows} windows of {args.seqlen}",
        "hardware": f"{torch.get_num_threads()} torch threads, CPU",
        "versions": library_versions(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "head_quality.json", record)
    (RESULTS / "head_quality.md").write_text(render(record))


if __name__ == "__main__":
    sys.exit(main())
