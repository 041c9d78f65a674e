"""``eggs-ptp compare``: which method, which pattern, at what cost, on one model, with error bars."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from eggs_ptp.cli.main import DTYPES, emit_json, trust_remote_code_option
from eggs_ptp.compare.spec import CompareSpec
from eggs_ptp.data import DEFAULT_TEXT
from eggs_ptp.methods import split_methods
from eggs_ptp.models import DEFAULT_MODEL

_DEFAULTS = CompareSpec.__dataclass_fields__


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _split(text))
    except ValueError:
        raise ValueError(f"seeds must be whole numbers separated by commas, like 0,1,2; got {text!r}") from None


def command_line(model: str, output: Path, spec: CompareSpec, dtype: str) -> str:
    """The full command that reruns this grid, every setting spelled out."""
    parts = [
        "eggs-ptp",
        "compare",
        model,
        "-o",
        str(output),
        "--methods",
        ",".join(spec.methods),
        "--patterns",
        ",".join(spec.patterns),
        "--seeds",
        ",".join(map(str, spec.seeds)),
        "--nsamples",
        str(spec.nsamples),
        "--seqlen",
        str(spec.seqlen),
        "--calib",
        spec.calib,
        "--eval-text",
        spec.eval_text,
        "--eval-seqlen",
        str(spec.eval_seqlen),
        "--eval-windows",
        str(spec.eval_windows or 0),
        "--dtype",
        dtype,
    ]
    if spec.task:
        parts += ["--batch-size", str(spec.batch_size)] + (
            ["--task-limit", str(spec.task_limit)] if spec.task_limit else []
        )
    else:
        parts.append("--no-task")
    return shlex.join(parts)


def _check(
    path: Path, model: str | None, cell: str | None, tolerance: float, as_json: bool, trust_remote_code: bool
) -> None:
    from eggs_ptp.compare import check_results

    result = check_results(path, cell, model=model, tolerance=tolerance, trust_remote_code=trust_remote_code)
    masks = "identical" if result.masks_match else "DIFFERENT"
    verdict = "reproduces" if result.reproduced else "does NOT reproduce"
    click.echo(
        f"{result.key}: masks {masks}; perplexity recorded {result.recorded_perplexity:.4f}, now "
        f"{result.measured_perplexity:.4f} (relative difference {result.relative_difference:.2e}, "
        f"tolerance {result.tolerance:.0e}): {verdict}"
    )
    emit_json(as_json, {"results": str(path), **result.to_dict()})
    if not result.reproduced:
        sys.exit(1)


@click.command(name="compare")
@click.argument("model", required=False, default=None)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for results.json, results.md, the PNG figures and report.html.",
)
@click.option(
    "--methods",
    default=",".join(_DEFAULTS["methods"].default),
    show_default=True,
    help="Comma-separated methods: names, or names with settings, e.g. 'eggs(b=1),eggs(b=2),eggs+update'.",
)
@click.option(
    "--patterns",
    default=",".join(_DEFAULTS["patterns"].default),
    show_default=True,
    help="Comma-separated N:M patterns or unstructured sparsities, e.g. 2:4,4:8,0.5.",
)
@click.option(
    "--seeds",
    default=",".join(map(str, _DEFAULTS["seeds"].default)),
    show_default=True,
    help="Comma-separated calibration seeds; perplexity is reported as mean ± std over them.",
)
@click.option(
    "--nsamples",
    type=int,
    default=_DEFAULTS["nsamples"].default,
    show_default=True,
    help="Calibration windows per cell.",
)
@click.option(
    "--seqlen",
    type=int,
    default=_DEFAULTS["seqlen"].default,
    show_default=True,
    help="Tokens per calibration window (capped by the model's context).",
)
@click.option(
    "--calib",
    default=DEFAULT_TEXT,
    show_default=True,
    help="Calibration text: 'wiki' (embedded), a .txt/.jsonl file, or hf:DATASET.",
)
@click.option(
    "--eval-text", default=DEFAULT_TEXT, show_default=True, help="Perplexity text ('wiki' = the held-out split)."
)
@click.option("--eval-seqlen", type=int, default=None, help="Perplexity context length [default: --seqlen].")
@click.option(
    "--eval-windows",
    type=int,
    default=_DEFAULTS["eval_windows"].default,
    show_default=True,
    help="Perplexity windows (0 = all of the text).",
)
@click.option(
    "--task/--no-task",
    default=True,
    show_default=True,
    help="Also score the offline zero-shot task eggs_wiki_lastword (needs eggs-ptp[eval]).",
)
@click.option("--task-limit", type=int, default=None, help="Score only the task's first N passages [default: all].")
@click.option(
    "--batch-size",
    type=int,
    default=_DEFAULTS["batch_size"].default,
    show_default=True,
    help="Task: requests per forward pass.",
)
@click.option(
    "--dtype",
    type=click.Choice(list(DTYPES)),
    default="float32",
    show_default=True,
    help="Dtype to load and prune the model in.",
)
@click.option("--resume", is_flag=True, help="Continue the grid in OUTPUT: run only the cells its results.json lacks.")
@click.option("--overwrite", is_flag=True, help="Start over in a non-empty OUTPUT, replacing its report files.")
@click.option(
    "--check",
    "check",
    type=click.Path(path_type=Path),
    default=None,
    help="Re-run one cell of this results.json and report whether it reproduces (exit 1 if not).",
)
@click.option(
    "--cell", default=None, help="With --check: the cell key, e.g. 'wanda|2:4|seed1' [default: the first cell]."
)
@click.option(
    "--tolerance",
    type=float,
    default=1e-3,
    show_default=True,
    help="With --check: largest relative perplexity difference that still reproduces.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@trust_remote_code_option
def compare_command(
    model: str | None,
    output: Path | None,
    methods: str,
    patterns: str,
    seeds: str,
    nsamples: int,
    seqlen: int,
    calib: str,
    eval_text: str,
    eval_seqlen: int | None,
    eval_windows: int,
    task: bool,
    task_limit: int | None,
    batch_size: int,
    dtype: str,
    resume: bool,
    overwrite: bool,
    check: Path | None,
    cell: str | None,
    tolerance: float,
    as_json: bool,
    quiet: bool,
    trust_remote_code: bool,
) -> None:
    """Prune MODEL with every method x pattern x calibration seed and compare them in one report.

    The dense baseline and the tokenised texts are computed once and shared by every cell. Per
    cell: perplexity on held-out text, accuracy on the offline last-word task, pruning seconds
    and peak memory. OUTPUT receives results.json (after every cell, so --resume continues an
    interrupted grid), results.md (best per pattern in bold), two PNG figures and a
    self-contained report.html.

    \b
    Examples:
      eggs-ptp compare smollm2-135m -o cmp --methods wanda,ria --patterns 2:4,4:8 --seeds 0,1,2
      eggs-ptp compare --check cmp/results.json --cell 'ria|2:4|seed1'
    """
    from eggs_ptp.eval.harness import quiet_harness_logs

    quiet_harness_logs()
    if check is not None:
        _check(check, model, cell, tolerance, as_json, trust_remote_code)
        return
    if output is None:
        raise click.UsageError("give the output folder with -o OUTPUT (or --check RESULTS to re-run a cell)")
    spec = CompareSpec(
        methods=tuple(split_methods(methods)),
        patterns=_split(patterns),
        seeds=_seeds(seeds),
        nsamples=nsamples,
        seqlen=seqlen,
        calib=calib,
        eval_text=eval_text,
        eval_seqlen=eval_seqlen or seqlen,
        eval_windows=eval_windows or None,
        task=task,
        task_limit=task_limit,
        batch_size=batch_size,
    )
    if spec.task:
        from eggs_ptp.eval.harness import HarnessError, require_harness

        try:
            require_harness()
        except HarnessError as error:
            raise HarnessError(f"{error}, or pass --no-task") from None
    _run(model or DEFAULT_MODEL, output, spec, dtype, resume, overwrite, as_json, quiet, trust_remote_code)


def _run(
    model: str,
    output: Path,
    spec: CompareSpec,
    dtype: str,
    resume: bool,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
    trust_remote_code: bool,
) -> None:
    from dataclasses import asdict

    from eggs_ptp.cli.main import load_quietly
    from eggs_ptp.compare import RESULTS_FILE, run_compare
    from eggs_ptp.compare.render import SUMMARY_HEAD, summary_rows
    from eggs_ptp.compare.runner import check_settings, existing_record
    from eggs_ptp.compare.summary import groups
    from eggs_ptp.formats.output import check_output_target, claim_output
    from eggs_ptp.models.loading import resolve

    for pair in spec.skipped():
        click.echo(f"not run: {pair['method']} at {pair['pattern']} ({pair['reason']})")
    check_output_target(output, True, inputs=[resolve(model)])  # emptiness is the record's to judge
    existing = existing_record(output, resume, overwrite)  # refuse before the model loads, not after
    if existing is not None:
        check_settings(existing, spec, output)
    with claim_output(output):
        loaded = load_quietly(model, dtype, quiet, trust_remote_code=trust_remote_code)
        try:
            record = run_compare(
                loaded,
                spec,
                output,
                resume=resume,
                overwrite=overwrite,
                progress=not quiet,
                command=command_line(model, output, spec, dtype),
            )
        except KeyboardInterrupt:
            click.echo(f"interrupted; finished cells are in {output / RESULTS_FILE}: rerun with --resume", err=True)
            sys.exit(130)
    widths = [max(len(h), *(len(cells[i]) for cells, _ in summary_rows(record))) for i, h in enumerate(SUMMARY_HEAD)]
    for cells, best in [(SUMMARY_HEAD, False), *summary_rows(record)]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + ("  <- best" if best else ""))
    click.echo(f"wrote {output}: results.json, results.md, perplexity.png, perplexity_vs_time.png, report.html")
    emit_json(
        as_json,
        {
            "output": str(output),
            "cells": len(record["cells"]),
            "dense": record["dense"],
            "groups": [asdict(g) for g in groups(record)],
        },
    )


__all__ = ["command_line", "compare_command"]
