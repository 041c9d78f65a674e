"""``eggs-ptp bench``: the dense model against its compact sparse form, size and speed side by side."""

from __future__ import annotations

from pathlib import Path

import click

from eggs_ptp.cli.main import emit_json
from eggs_ptp.models.loading import hide_loading_bars


def _token_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--tokens must be comma-separated counts such as 1,8,128, got {text!r}") from None


def _thread_counts(text: str) -> tuple[int | None, ...]:
    """``1,all``: ``all`` is torch's default thread count."""
    try:
        counts = tuple(None if part.strip() == "all" else int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--threads must be comma-separated counts or 'all', such as 1,all, got {text!r}") from None
    if any(count is not None and count < 1 for count in counts):
        raise ValueError(f"--threads must be >= 1, got {text}")
    return counts


def _baselines(text: str) -> tuple[str, ...]:
    return () if text.strip() == "none" else tuple(part.strip() for part in text.split(","))


@click.command(name="bench")
@click.argument(
    "folders",
    metavar="MODEL_DIR...",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON result; the markdown table goes beside it as .md [default: ./bench-FIRST_MODEL_DIR.json].",
)
@click.option("--overwrite", is_flag=True, help="Replace existing result files.")
@click.option("--tokens", default="1,8,128", show_default=True, help="Token counts for the per-layer times.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed repeats of every measurement.")
@click.option("--prompt-tokens", type=int, default=128, show_default=True, help="Prompt length for prefill and decode.")
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Greedy tokens generated after the prompt.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default=None,
    help="Load both models in this dtype [default: the checkpoint's].",
)
@click.option(
    "--threads",
    default="1,all",
    show_default=True,
    help="Thread counts, each a full pass of the timings ('all' = torch's default count).",
)
@click.option(
    "--baselines",
    default="bf16,int8",
    show_default=True,
    help="Dense references besides fp: bf16 (the same weights) and int8 (torch's dynamic int8 nn.Linear); or none.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random layer inputs (and prompt, without a tokenizer).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def bench_command(
    folders: tuple[Path, ...],
    output: Path | None,
    overwrite: bool,
    tokens: str,
    repeats: int,
    prompt_tokens: int,
    new_tokens: int,
    dtype: str | None,
    threads: str,
    baselines: str,
    seed: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure pruned checkpoints of one model against its dense form, side by side in one process.

    Each MODEL_DIR is an eggs-ptp prune output (dense with zeros; packed into a temporary folder
    here) or an eggs-ptp pack output, with fp, int8 or int4 kept values; the first one's weights
    computed dense are the reference, and also give the bf16 and torch int8 dense baselines.
    Reports weight bytes, per-layer times at each token count, prefill time and greedy decode
    tokens/s as ratios to the reference, at each thread count, and whether each compact model's
    greedy output equals its own dense form's.

    \b
    Example:
      eggs-ptp bench smollm2-2of4 smollm2-2of4-int8 -o benchmarks/results/bench.json
    """

    from eggs_ptp.atomic import write_atomic
    from eggs_ptp.eval.speed import BenchSettings, render_markdown, run_bench
    from eggs_ptp.formats import write_json_atomic

    settings = BenchSettings(
        tokens=_token_counts(tokens),
        repeats=repeats,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        dtype=dtype,
        seed=seed,
        threads=_thread_counts(threads),
        baselines=_baselines(baselines),
    )
    output = output if output is not None else Path(f"bench-{folders[0].resolve().name}.json")
    if output.suffix != ".json":
        raise ValueError(f"--output must end in .json (the markdown goes beside it), got {output}")
    markdown = output.with_suffix(".md")
    existing = [str(path) for path in (output, markdown) if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"{' and '.join(existing)} already exist; pass --overwrite to replace them")
    if quiet:
        hide_loading_bars()
    output.resolve().parent.mkdir(parents=True, exist_ok=True)
    result = run_bench(list(folders), settings, progress=not quiet)
    table = render_markdown(result)
    write_json_atomic(output, result)
    write_atomic(markdown, table)
    click.echo(table)
    click.echo(f"wrote {output} and {markdown}")
    emit_json(
        as_json,
        {
            "output": str(output),
            "markdown": str(markdown),
            "decode_speedup": {
                str(run["threads"]): {label: ratio["median"] for label, ratio in run["decode_speedup"].items()}
                for run in result["runs"]
            },
            "greedy_identical": all(entry["identical"] for entry in result["greedy"]["variants"].values()),
        },
    )


__all__ = ["bench_command"]
