"""``eggs-ptp prune | eval | verify``: thin wrappers over the Python API.

Every command runs inside one handler: user errors (bad patterns, missing models, short texts,
existing or locked outputs, NaN activations) and the failures a user meets (a full disk, a
read-only folder, a truncated or malicious checkpoint, broken JSON) are printed as one ``error:``
line and exit with status 2; ``verify`` exits 1 when a checkpoint fails its check. ``--debug`` (or
``EGGS_PTP_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from safetensors import SafetensorError

from eggs_ptp.api import Evaluation
from eggs_ptp.cli.options import (
    GroupedCommand,
    GroupedOption,
    given,
    method_from_options,
    method_options,
    options_for,
    values_for,
)
from eggs_ptp.config import ALLOCATIONS, OwlAllocation, PruneConfig
from eggs_ptp.data import DEFAULT_TEXT
from eggs_ptp.errors import describe_os_error, describe_read_error
from eggs_ptp.methods import build_method, method_help, method_names
from eggs_ptp.models import DEFAULT_MODEL
from eggs_ptp.options import DTYPES, RunOptions
from eggs_ptp.walk import NonFiniteActivationError

# By this package's convention every bad-input error is a ValueError subclass with a one-line
# message; NaN/Inf in activations or in the loss are the user's model's problem, not a bug. The
# rest are what the machine or a file can do to any run.
_USER_ERRORS = (ValueError, NonFiniteActivationError, FloatingPointError)
_MET_ERRORS = (OSError, SafetensorError, pickle.UnpicklingError, MemoryError)


def one_line(error: BaseException) -> str:
    """The message a user sees for ``error``: its own for the package's errors, one naming the file
    for the operating system's and the file formats'."""
    if isinstance(error, OSError):
        return describe_os_error(error)
    if isinstance(error, MemoryError):
        return "out of memory; try --low-memory, --offload-dir, a smaller --nsamples or --seqlen"
    return describe_read_error("a model file", error) or " ".join(str(error).split()) or type(error).__name__


class Commands(click.Group):
    """The command group, with one error handler around every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (*_USER_ERRORS, *_MET_ERRORS) as error:
            if ctx.params.get("debug") or os.environ.get("EGGS_PTP_DEBUG", "") not in ("", "0"):
                raise
            click.echo(f"error: {one_line(error)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)


def emit_json(enabled: bool, payload: dict[str, Any]) -> None:
    if enabled:
        click.echo(json.dumps(payload, default=str))


def _methods_help() -> str:
    return "; ".join(f"{name}: {method_help(name)}" for name in method_names())


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.option("--debug", is_flag=True, help="Show the full traceback of a failure (also EGGS_PTP_DEBUG=1).")
def main(verbose: bool, debug: bool) -> None:
    """Prune Hugging Face causal LMs to N:M sparsity with EGGS-PTP and its baselines.

    MODEL is the embedded default's short name (smollm2-135m), a hub id, or a local folder.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def load_quietly(model: str, dtype: str, quiet: bool, device_map: str | None = None, trust_remote_code: bool = False):
    from eggs_ptp.models import load_model
    from eggs_ptp.models.loading import hide_loading_bars

    if quiet:
        hide_loading_bars()

    return load_model(model, DTYPES[dtype], device_map, trust_remote_code)


trust_remote_code_option = click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Run the Python code a model folder or hub repository ships, if it has any; only for code you trust.",
)


def _prune_options() -> list[click.Parameter]:
    declared: set[str] = set()
    method = "Method"
    shared = "Pattern, calibration and layers"
    return [
        GroupedOption(
            ["--method"],
            type=click.Choice(method_names()),
            default="eggs",
            show_default=True,
            help=_methods_help(),
            group=method,
        ),
        *method_options(declared),
        *options_for(PruneConfig, shared, declared),
        GroupedOption(
            ["--sparsity"],
            type=float,
            default=None,
            group=shared,
            help="Unstructured: prune this fraction of each output row instead of N:M (same as --pattern 0.5).",
        ),
        GroupedOption(
            ["--allocation"],
            type=click.Choice(ALLOCATIONS),
            default="uniform",
            show_default=True,
            group="Allocation",
            help="Unstructured: per-layer sparsity, uniform or outlier-weighted (OWL), same mean.",
        ),
        *options_for(OwlAllocation, "Allocation", declared),
        *options_for(RunOptions, "How to run", declared),
        GroupedOption(
            ["--nproc"],
            type=int,
            default=1,
            show_default=True,
            group="How to run",
            help="Split calibration over this many processes (torch.distributed; gloo on CPU, NCCL on "
            "GPU), launched by torchrun.",
        ),
        GroupedOption(
            ["--eval/--no-eval", "evaluate"],
            default=False,
            show_default=True,
            group="Evaluation",
            help="Measure dense and pruned perplexity side by side.",
        ),
        *options_for(Evaluation, "Evaluation", declared),
        GroupedOption(
            ["-o", "--output", "output"],
            type=click.Path(path_type=Path),
            required=True,
            help="Folder for the pruned checkpoint.",
            group="Output",
        ),
        GroupedOption(
            ["--json", "as_json"], is_flag=True, help="Print one JSON object as the last line.", group="Output"
        ),
        GroupedOption(["-q", "--quiet"], is_flag=True, help="No progress bars.", group="Output"),
    ]


def _prune_config(ctx: click.Context, values: dict[str, Any]) -> PruneConfig:
    if values["sparsity"] is not None:
        if given(ctx, ["pattern"]):
            raise click.UsageError("give --pattern or --sparsity, not both")
        values = {**values, "pattern": str(values["sparsity"])}
    if values["allocation"] == "uniform" and given(ctx, ["owl_lambda", "owl_threshold"]):
        raise click.UsageError("--owl-lambda and --owl-threshold set the OWL allocation; add --allocation owl")
    allocation = OwlAllocation(**values_for(OwlAllocation, values)) if values["allocation"] == "owl" else None
    method = method_from_options(values["method"], values, ctx)
    return PruneConfig(**values_for(PruneConfig, values, method=method, allocation=allocation))


@main.command(cls=GroupedCommand, params=_prune_options())
@click.argument("model", default=DEFAULT_MODEL)
@click.pass_context
def prune(ctx: click.Context, model: str, **values: Any) -> None:
    """Prune MODEL and save it, dense with zeros, with sparsity.json, to OUTPUT.

    \b
    Example:
      eggs-ptp prune smollm2-135m -o smollm2-2of4 --method eggs --pattern 2:4 --eval
    """
    from eggs_ptp.api import prune_to_folder
    from eggs_ptp.options import resolve_device
    from eggs_ptp.walk.distributed import Ranks

    if values["nproc"] > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _launch(values["nproc"])
    config = _prune_config(ctx, values)
    output = values["output"]
    device = resolve_device(values["device"])
    ranks = Ranks.from_environment(device)
    writer = ranks is None or ranks.is_writer
    quiet = values["quiet"] or not writer
    run = RunOptions(**values_for(RunOptions, values, progress=not quiet, ranks=ranks))
    evaluation = Evaluation(**values_for(Evaluation, values)) if values["evaluate"] else None
    if writer:
        shared = {k: v for k, v in config.to_dict().items() if k not in ("type", "schema_version", "method")}
        settings = ", ".join(f"{k}={v}" for k, v in {"method": config.method.label, **shared}.items())
        stages = " ".join(
            f"{k}={v}" for k, v in build_method(config.method, config.parsed_pattern).describe().items() if v
        )
        processes = f" processes={ranks.world}" if ranks else ""
        click.echo(
            f"model={model} dtype={run.dtype} device={run.device_map or device}"
            f"{processes} | {settings}\nstages: {stages}"
        )
    with _resume_hint(output):
        report = prune_to_folder(model, output, config, run, evaluation=evaluation)
    if writer:
        _print_prune(report, output, values["as_json"])


def _print_prune(report, output: Path, as_json: bool) -> None:
    summary = report.summary()
    config = report.config
    click.echo(
        f"pruned {summary['pruned_layers']} layers ({summary['skipped_layers']} skipped), kept "
        f"{summary['kept_fraction']:.4f} of their weights, mean reconstruction error "
        f"{summary['mean_recon_error']:.4f}, in {summary['seconds']:.1f} s (peak RSS {summary['peak_rss_mb']:.0f} MB)"
        + (f", resumed at block {report.resumed_at_block}" if report.resumed_at_block is not None else "")
    )
    if tokens := summary["routed_tokens_per_expert"]:
        click.echo(
            f"{summary['expert_matrices']} expert matrices pruned ({config.experts} calibration); calibration tokens "
            f"routed to an expert: min {tokens['min']}, median {tokens['median']}, max {tokens['max']}"
        )
    for layer in report.skipped_layers:
        click.echo(f"skipped {layer.name}: {layer.skipped}")
    payload: dict[str, Any] = {}
    if report.evaluation:
        dense, pruned = report.evaluation["perplexity"]["dense"], report.evaluation["perplexity"]["pruned"]
        payload["perplexity"] = {
            "dense": dense["perplexity"],
            "pruned": pruned["perplexity"],
            **{k: pruned[k] for k in ("seqlen", "windows", "tokens", "text")},
        }
        click.echo(
            f"perplexity  dense {dense['perplexity']:.2f}  ->  {config.method.label} {config.pattern} "
            f"{pruned['perplexity']:.2f}   ({pruned['windows']} windows x {pruned['seqlen']} tokens = "
            f"{pruned['tokens']} tokens of {pruned['text']})"
        )
    click.echo(f"saved to {output}")
    emit_json(
        as_json, {"output": str(output), "method": config.method.label, "pattern": config.pattern, **summary, **payload}
    )


def _launch(nproc: int) -> None:
    """Re-run this command as ``nproc`` processes under torchrun (single node) and exit with its status."""
    from torch.distributed import run as torchrun

    arguments = sys.argv[1:]
    for number, argument in enumerate(arguments):
        if argument == "--nproc":
            del arguments[number : number + 2]
            break
        if argument.startswith("--nproc="):
            del arguments[number]
            break
    try:
        torchrun.main(["--standalone", "--nproc-per-node", str(nproc), "-m", "eggs_ptp", *arguments])
    except Exception as error:  # torchrun raises ChildFailedError with every rank's traceback
        click.echo(f"error: a process of the {nproc}-process run failed: {str(error).splitlines()[0]}", err=True)
        sys.exit(1)
    sys.exit(0)


@contextlib.contextmanager
def _resume_hint(output: Path) -> Iterator[None]:
    """On Ctrl-C, or a full disk, after some blocks finished, say where their progress is and how to
    continue."""
    from eggs_ptp.errors import FileError
    from eggs_ptp.walk.resume import completed_blocks, progress_folder

    folder = progress_folder(output)
    try:
        yield
    except KeyboardInterrupt:
        done = completed_blocks(folder) if folder.is_dir() else 0
        if not done:
            raise
        click.echo(
            f"interrupted after {done} blocks; their progress is kept in {folder}: rerun the same "
            "command with --resume to continue",
            err=True,
        )
        sys.exit(130)
    except OSError as error:
        done = completed_blocks(folder) if folder.is_dir() else 0
        if not done:
            raise
        raise FileError(
            f"{describe_os_error(error)}; the {done} finished blocks are kept in {folder}: "
            "rerun the same command with --resume to continue"
        ) from error


@main.command(name="eval")
@click.argument("model", default=DEFAULT_MODEL)
@click.option(
    "--text",
    default=DEFAULT_TEXT,
    show_default=True,
    help="Evaluation text: 'wiki' (held-out split), a .txt/.jsonl file, or hf:DATASET.",
)
@click.option(
    "--windows", type=click.IntRange(min=1), default=None, help="Number of non-overlapping windows [default: all]."
)
@click.option(
    "--seqlen",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Context length per window (capped by the model's).",
)
@click.option(
    "--tasks",
    default=None,
    help="Instead of perplexity, run these lm-evaluation-harness tasks zero-shot (comma-separated), e.g. "
    "boolq,hellaswag, or the offline eggs_wiki_lastword.",
)
@click.option("--limit", type=int, default=None, help="Tasks: score only the first N documents of each (quick checks).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Tasks: requests per forward pass.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@trust_remote_code_option
def eval_command(
    model: str,
    text: str,
    windows: int | None,
    seqlen: int,
    tasks: str | None,
    limit: int | None,
    batch_size: int,
    dtype: str,
    as_json: bool,
    quiet: bool,
    trust_remote_code: bool,
) -> None:
    """Perplexity of MODEL (dense, pruned, or packed compact) on held-out text, in non-overlapping
    windows; or, with --tasks, its zero-shot scores from lm-evaluation-harness.

    \b
    Examples:
      eggs-ptp eval smollm2-2of4 --windows 40 --seqlen 512
      eggs-ptp eval smollm2-2of4 --tasks eggs_wiki_lastword
    """
    if tasks is not None:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        _eval_tasks(model, names, limit, batch_size, dtype, as_json, quiet, trust_remote_code)
        return
    from eggs_ptp.api import perplexity_meter

    loaded = _load_evaluable(model, dtype, quiet, trust_remote_code)
    result = perplexity_meter(loaded.model, loaded.tokenizer, text, windows, seqlen, not quiet)(loaded.model)
    click.echo(
        f"perplexity {result.perplexity:.3f}  ({result.windows} windows x {result.seqlen} tokens = "
        f"{result.tokens} tokens of {result.text})"
    )
    emit_json(as_json, {"model": model, **result.to_dict()})


def _load_evaluable(model: str, dtype: str, quiet: bool, trust_remote_code: bool):
    from eggs_ptp.eval.loading import load_evaluable
    from eggs_ptp.models.loading import hide_loading_bars

    if quiet:
        hide_loading_bars()
    return load_evaluable(model, DTYPES[dtype], trust_remote_code)


def _eval_tasks(
    model: str,
    names: list[str],
    limit: int | None,
    batch_size: int,
    dtype: str,
    as_json: bool,
    quiet: bool,
    trust_remote_code: bool,
) -> None:
    """Harness tasks load (and fetch their data) before the model, so a missing dataset fails fast."""
    from eggs_ptp.eval.harness import evaluate_tasks, load_tasks, quiet_harness_logs

    quiet_harness_logs()
    task_set = load_tasks(names)
    loaded = _load_evaluable(model, dtype, quiet, trust_remote_code)
    result = evaluate_tasks(
        loaded.model, loaded.tokenizer, task_set, limit=limit, batch_size=batch_size, progress=not quiet
    )
    for name, scores in {**result["tasks"], **result["groups"]}.items():
        shown = "  ".join(
            f"{metric} {value:.4f}"
            + (f" ± {scores[metric + '_stderr']:.4f}" if isinstance(scores.get(metric + "_stderr"), float) else "")
            for metric, value in scores.items()
            if isinstance(value, float) and not metric.endswith("_stderr") and metric != "version"
        )
        counts = f"  ({scores['samples']} documents, {scores['n_shot']}-shot)" if "samples" in scores else ""
        click.echo(f"{name}  {shown}{counts}")
    settings = result["settings"]
    click.echo(
        f"{settings['harness']}, batch {settings['batch_size']}, context {settings['max_length']} tokens"
        + (f", first {limit} documents per task" if limit else "")
    )
    emit_json(as_json, {"model": model, **result})


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def verify(folder: Path, as_json: bool) -> None:
    """Check that every pruned layer in FOLDER obeys the pattern in its sparsity.json."""
    from eggs_ptp.formats import VerifyError, read_report, verify_checkpoint

    try:
        checked = verify_checkpoint(folder)
    except VerifyError as error:
        click.echo(f"FAIL {error}", err=True)
        emit_json(as_json, {"folder": str(folder), "ok": False, "error": str(error)})
        sys.exit(1)
    quantization = read_report(folder).get("quantization") or {}
    head = quantization.get("head")
    on_grid = f"; their kept weights lie on their int{quantization['bits']} grids" if quantization else ""
    if head:
        on_grid += f", the output head on its int{head['quantization']['bits']} grid"
    click.echo(f"OK {checked} pruned layers obey their pattern{on_grid}")
    emit_json(as_json, {"folder": str(folder), "ok": True, "layers": checked, "head_on_grid": head is not None})


__all__ = [
    "Commands",
    "emit_json",
    "eval_command",
    "load_quietly",
    "main",
    "one_line",
    "prune",
    "trust_remote_code_option",
    "verify",
]
