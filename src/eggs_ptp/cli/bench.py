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


@click.command(name="bench")
@click.argument("folder", metavar="MODEL_DIR", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON result; the markdown table goes beside it as .md [default: ./bench-MODEL_DIR.json].",
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
@click.option("--threads", type=int, default=None, help="Torch and kernel threads [default: torch's default].")
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
    folder: Path,
    output: Path | None,
    overwrite: bool,
    tokens: str,
    repeats: int,
    prompt_tokens: int,
    new_tokens: int,
    dtype: str | None,
    threads: int | None,
    seed: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure the pruned checkpoint MODEL_DIR dense against its compact N:M form.

    MODEL_DIR is an eggs-ptp prune output (dense with zeros; packed into a temporary folder here)
    or an eggs-ptp pack output. Reports weight bytes on disk and in memory, per-layer times at each
    token count, prefill time and greedy decode tokens/s, each as a sparse/dense ratio.

    \b
    Example:
      eggs-ptp bench smollm2-2of4 -o benchmarks/results/bench.json
    """
    import torch

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
    )
    output = output if output is not None else Path(f"bench-{folder.resolve().name}.json")
    if output.suffix != ".json":
        raise ValueError(f"--output must end in .json (the markdown goes beside it), got {output}")
    markdown = output.with_suffix(".md")
    existing = [str(path) for path in (output, markdown) if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"{' and '.join(existing)} already exist; pass --overwrite to replace them")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if quiet:
        hide_loading_bars()
    output.resolve().parent.mkdir(parents=True, exist_ok=True)
    result = run_bench(folder, settings, progress=not quiet)
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
            "decode_speedup": result["decode_tokens_per_s"]["ratio"]["median"],
            "pruned_layers_1_token_time_ratio": result["pruned_layers_total"].get("1", {}).get("ratio"),
            "greedy_identical": result["greedy"]["identical"],
        },
    )


__all__ = ["bench_command"]
