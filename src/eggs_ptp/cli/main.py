"""``eggs-ptp prune | eval | verify``: thin wrappers over the Python API.

User errors (bad patterns, missing models, short texts, existing outputs, NaN activations) are
printed as one ``error:`` line and exit with status 2; ``verify`` exits 1 when a layer breaks its
pattern. Set ``EGGS_PTP_TRACEBACK=1`` to see the full traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import click
import torch

from eggs_ptp.config import ALLOCATIONS, PruneConfig
from eggs_ptp.data import DEFAULT_TEXT
from eggs_ptp.methods import build_method, method_help, method_names
from eggs_ptp.models import DEFAULT_MODEL
from eggs_ptp.selectors import RULES
from eggs_ptp.walk import NonFiniteActivationError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# By this package's convention every bad-input error is a ValueError subclass with a one-line
# message; NaN/Inf in activations or in the loss are the user's model's problem, not a bug.
_USER_ERRORS = (ValueError, NonFiniteActivationError, FloatingPointError)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the package's user-facing errors into one line on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _USER_ERRORS as error:
            if os.environ.get("EGGS_PTP_TRACEBACK"):
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)

    return wrapper


def emit_json(enabled: bool, payload: dict[str, Any]) -> None:
    if enabled:
        click.echo(json.dumps(payload, default=str))


def _methods_help() -> str:
    return "; ".join(f"{name}: {method_help(name)}" for name in method_names())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def main(verbose: bool) -> None:
    """Prune Hugging Face causal LMs to N:M sparsity with EGGS-PTP and its baselines.

    MODEL is the embedded default's short name (smollm2-135m), a hub id, or a local folder.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def load_quietly(model: str, dtype: str, quiet: bool, device_map: str | None = None):
    from transformers.utils import logging as transformers_logging

    from eggs_ptp.models import load_model

    if quiet:
        transformers_logging.disable_progress_bar()

    return load_model(model, DTYPES[dtype], device_map)


def _perplexity_meter(loaded, text: str, windows: int | None, seqlen: int, quiet: bool):
    """Tokenise the evaluation text once; return a function measuring a model on it."""
    from eggs_ptp.api import effective_seqlen
    from eggs_ptp.data import load_text
    from eggs_ptp.data.calibration import tokenize
    from eggs_ptp.eval import perplexity

    source = load_text(text, "evaluation")
    seqlen = effective_seqlen(loaded.model, loaded.tokenizer, seqlen)
    tokens = tokenize(loaded.tokenizer, source.text)
    return lambda model: perplexity(model, tokens, seqlen, windows, source.description, not quiet)


@main.command()
@click.argument("model", default=DEFAULT_MODEL)
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True, help="Folder for the pruned checkpoint.")
@click.option("--method", type=click.Choice(method_names()), default="eggs", show_default=True, help=_methods_help())
@click.option("--pattern", default=None, help="N:M, keep N of every M along the input dimension [default: 2:4].")
@click.option("--sparsity", type=float, default=None, help="Unstructured: prune this fraction of each output row instead of N:M.")
@click.option("--b", "b", type=int, default=PruneConfig.b, show_default=True, help="EGGS: kept weights every input channel keeps per tile (0 = RIA).")
@click.option("--rule", type=click.Choice(RULES), default=PruneConfig.rule, show_default=True, help="EGGS selection rule.")
@click.option("--tile-height", type=int, default=None, help="EGGS: rows per tile, a multiple of M [default: the benchmarked multiple of M].")
@click.option("--alpha", type=float, default=PruneConfig.alpha, show_default=True, help="RIA/EGGS: exponent of the activation norm.")
@click.option("--nsamples", type=int, default=PruneConfig.nsamples, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=int, default=PruneConfig.seqlen, show_default=True, help="Tokens per calibration window (capped by the model's context).")
@click.option("--seed", type=int, default=PruneConfig.seed, show_default=True, help="Seed of the calibration window starts.")
@click.option("--calib", default=DEFAULT_TEXT, show_default=True, help="Calibration text: 'wiki' (embedded), a .txt/.jsonl file, or hf:DATASET[:CONFIG[:SPLIT]].")
@click.option("--include", multiple=True, help="Only prune layers whose name matches this glob (repeatable), e.g. '*.mlp.*'.")
@click.option("--exclude", multiple=True, help="Never prune layers whose name matches this glob (repeatable).")
@click.option("--damping", type=float, default=PruneConfig.damping, show_default=True, help="SparseGPT: Hessian damping, a fraction of its mean diagonal.")
@click.option("--blocksize", type=int, default=PruneConfig.blocksize, show_default=True, help="SparseGPT: columns per update block.")
@click.option("--auto", is_flag=True, help="EGGS: choose rule, B and H per layer from its calibration reconstruction error.")
@click.option("--permute", is_flag=True, help="N:M: permute input channels where the permutation folds exactly into the producing layer.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=PruneConfig.allocation, show_default=True, help="Unstructured: per-layer sparsity, uniform or outlier-weighted (OWL), same mean.")
@click.option("--owl-lambda", type=float, default=PruneConfig.owl_lambda, show_default=True, help="OWL: largest deviation of a block's sparsity from the mean.")
@click.option("--owl-threshold", type=float, default=PruneConfig.owl_threshold, show_default=True, help="OWL: an outlier's score is this multiple of its layer's mean score.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True, help="Dtype to load and prune the model in.")
@click.option("--low-memory", is_flag=True, help="Read the safetensors checkpoint lazily and hold one decoder block in memory at a time; the output is written block by block.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same command from its last finished block.")
@click.option("--activation-dtype", type=click.Choice(list(DTYPES)), default=None, help="Dtype the calibration activations are kept in [default: --dtype].")
@click.option("--offload-dir", type=click.Path(path_type=Path), default=None, help="Keep calibration activations on disk here instead of in memory.")
@click.option("--device", default="auto", show_default=True, help="Compute device: auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
@click.option("--device-map", default=None, help="Spread the model over several devices with accelerate (auto, balanced, sequential); not with --low-memory.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Split calibration over this many processes (torch.distributed; gloo on CPU, NCCL on GPU), launched by torchrun.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder (only once the new checkpoint is complete).")
@click.option("--eval/--no-eval", "evaluate", default=False, show_default=True, help="Measure dense and pruned perplexity side by side.")
@click.option("--eval-text", default=DEFAULT_TEXT, show_default=True, help="Evaluation text ('wiki' = the held-out split).")
@click.option("--eval-windows", type=int, default=None, help="Evaluation windows [default: all of the text].")
@click.option("--eval-seqlen", type=int, default=None, help="Evaluation context length [default: --seqlen].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@user_errors
def prune(model: str, output: Path, method: str, pattern: str | None, sparsity: float | None, b: int, rule: str,
          tile_height: int, alpha: float, nsamples: int, seqlen: int, seed: int, calib: str,
          include: tuple[str, ...], exclude: tuple[str, ...], damping: float, blocksize: int, auto: bool,
          permute: bool, allocation: str, owl_lambda: float, owl_threshold: float, dtype: str, low_memory: bool,
          resume: bool, activation_dtype: str | None, offload_dir: Path | None, device: str, device_map: str | None,
          nproc: int, overwrite: bool, evaluate: bool, eval_text: str, eval_windows: int | None, eval_seqlen: int | None,
          as_json: bool, quiet: bool) -> None:
    """Prune MODEL and save it, dense with zeros, with sparsity.json, to OUTPUT.

    \b
    Example:
      eggs-ptp prune smollm2-135m -o smollm2-2of4 --method eggs --pattern 2:4 --eval
    """
    if pattern is not None and sparsity is not None:
        raise click.UsageError("give --pattern or --sparsity, not both")
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _launch(nproc)
    config = PruneConfig(
        method=method, pattern=pattern or (str(sparsity) if sparsity is not None else "2:4"), b=b, rule=rule,
        tile_height=tile_height, alpha=alpha, nsamples=nsamples, seqlen=seqlen, seed=seed, calib=calib,
        include=include, exclude=exclude, damping=damping, blocksize=blocksize, auto=auto, permute=permute,
        allocation=allocation, owl_lambda=owl_lambda, owl_threshold=owl_threshold,
    )
    if low_memory and (evaluate or device_map):
        raise click.UsageError("--low-memory holds one block at a time: evaluate the output with eggs-ptp eval, "
                               "and use --device rather than --device-map")
    from eggs_ptp.walk.distributed import Ranks

    compute_device = _device(device)
    ranks = Ranks.from_environment(compute_device)
    writer = ranks is None or ranks.is_writer
    quiet = quiet or not writer
    from eggs_ptp.formats import check_output_target

    check_output_target(output, overwrite)
    settings = ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k not in ("type", "schema_version"))
    stages = " ".join(f"{k}={v}" for k, v in build_method(config).describe().items() if v)
    if writer:
        processes = f" processes={ranks.world}" if ranks else ""
        click.echo(f"model={model} dtype={dtype} device={device_map or compute_device}{processes} | {settings}\n"
                   f"stages: {stages}")
    options = dict(activation_dtype=DTYPES[activation_dtype] if activation_dtype else None, offload_dir=offload_dir,
                   resume=resume, ranks=ranks)
    if low_memory:
        report = _prune_low_memory(model, output, config, dtype, compute_device, overwrite, quiet, options)
        payload = None
    else:
        report, payload = _prune_in_memory(model, output, config, dtype, compute_device, device_map, overwrite,
                                           evaluate, eval_text, eval_windows, eval_seqlen or seqlen, quiet, options)
    if not writer:
        return
    summary = report.summary()
    click.echo(
        f"pruned {summary['pruned_layers']} layers ({summary['skipped_layers']} skipped), kept "
        f"{summary['kept_fraction']:.4f} of their weights, mean reconstruction error "
        f"{summary['mean_recon_error']:.4f}, in {summary['seconds']:.1f} s (peak RSS {summary['peak_rss_mb']:.0f} MB)"
        + (f", resumed at block {report.resumed_at_block}" if report.resumed_at_block is not None else "")
    )
    for layer in report.skipped_layers:
        click.echo(f"skipped {layer.name}: {layer.skipped}")
    if payload and "perplexity" in payload:
        scores = payload["perplexity"]
        click.echo(
            f"perplexity  dense {scores['dense']:.2f}  ->  {config.method} {config.pattern} {scores['pruned']:.2f}"
            f"   ({scores['windows']} windows x {scores['seqlen']} tokens = {scores['tokens']} tokens of {scores['text']})"
        )
    click.echo(f"saved to {output}")
    emit_json(as_json, {"output": str(output), "method": config.method, "pattern": config.pattern, **summary,
                        **(payload or {})})


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as error:
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec} was asked for, but torch sees no CUDA device; use --device cpu")
    return device


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
    """On Ctrl-C after some blocks finished, say where their progress is and how to continue."""
    from eggs_ptp.walk.resume import completed_blocks, progress_folder

    try:
        yield
    except KeyboardInterrupt:
        folder = progress_folder(output)
        done = completed_blocks(folder)
        if not done:
            raise
        click.echo(f"interrupted after {done} blocks; their progress is kept in {folder}: rerun the same "
                   "command with --resume to continue", err=True)
        sys.exit(130)


def _prune_in_memory(model: str, output: Path, config: PruneConfig, dtype: str, device: torch.device,
                     device_map: str | None, overwrite: bool, evaluate: bool, eval_text: str,
                     eval_windows: int | None, eval_seqlen: int, quiet: bool, options: dict[str, Any]):
    from eggs_ptp.api import build_calibration, calibration_config, prune as prune_model, run_fingerprint
    from eggs_ptp.formats import save_pruned
    from eggs_ptp.models.loading import weights_signature
    from eggs_ptp.walk.resume import RunProgress, progress_folder

    ranks = options["ranks"]
    writer = ranks is None or ranks.is_writer
    loaded = load_quietly(model, dtype, quiet, device_map)
    if not device_map:
        loaded.model.to(device)
    info = {"source": loaded.source, "location": loaded.location, "revision": loaded.revision}
    calibration = build_calibration(loaded.model, loaded.tokenizer, calibration_config(config))
    checkpoint = RunProgress(
        progress_folder(output),
        run_fingerprint(config, calibration, info, weights_signature(loaded.location), DTYPES[dtype],
                        options["activation_dtype"], ranks),
        ranks,
    )
    measure = dense = None
    if evaluate and writer:
        measure = _perplexity_meter(loaded, eval_text, eval_windows, eval_seqlen, quiet)
        dense = measure(loaded.model)
    with _resume_hint(output):
        pruned_model, report = prune_model(loaded.model, loaded.tokenizer, config, calibration=calibration,
                                           progress=not quiet, model_info=info, run_progress=checkpoint, **options)
        payload: dict[str, Any] = {}
        if writer:
            if measure:
                pruned = measure(pruned_model)
                report.evaluation = {"perplexity": {"dense": dense.to_dict(), "pruned": pruned.to_dict()}}
                payload["perplexity"] = {"dense": dense.perplexity, "pruned": pruned.perplexity,
                                         "seqlen": pruned.seqlen, "windows": pruned.windows, "tokens": pruned.tokens,
                                         "text": pruned.text}
            save_pruned(pruned_model, loaded.tokenizer, report, output, overwrite)
    checkpoint.finish()
    return report, payload


def _prune_low_memory(model: str, output: Path, config: PruneConfig, dtype: str, device: torch.device,
                      overwrite: bool, quiet: bool, options: dict[str, Any]):
    from eggs_ptp.api import prune_checkpoint
    from eggs_ptp.models.loading import resolve_folder

    location = resolve_folder(model)
    with _resume_hint(output):
        return prune_checkpoint(location, output, config, dtype=DTYPES[dtype], device=device, progress=not quiet,
                                overwrite=overwrite, model_info={"source": model, "location": str(location)}, **options)


@main.command(name="eval")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--text", default=DEFAULT_TEXT, show_default=True, help="Evaluation text: 'wiki' (held-out split), a .txt/.jsonl file, or hf:DATASET.")
@click.option("--windows", type=int, default=None, help="Number of non-overlapping windows [default: all].")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Context length per window (capped by the model's).")
@click.option("--tasks", default=None, help="Instead of perplexity, run these lm-evaluation-harness tasks zero-shot (comma-separated), e.g. boolq,hellaswag, or the offline eggs_wiki_lastword.")
@click.option("--limit", type=int, default=None, help="Tasks: score only the first N documents of each (quick checks).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Tasks: requests per forward pass.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@user_errors
def eval_command(model: str, text: str, windows: int | None, seqlen: int, tasks: str | None, limit: int | None,
                 batch_size: int, dtype: str, as_json: bool, quiet: bool) -> None:
    """Perplexity of MODEL (dense, pruned, or packed compact) on held-out text, in non-overlapping
    windows; or, with --tasks, its zero-shot scores from lm-evaluation-harness.

    \b
    Examples:
      eggs-ptp eval smollm2-2of4 --windows 40 --seqlen 512
      eggs-ptp eval smollm2-2of4 --tasks eggs_wiki_lastword
    """
    if tasks is not None:
        _eval_tasks(model, [t.strip() for t in tasks.split(",") if t.strip()], limit, batch_size, dtype, as_json, quiet)
        return
    loaded = _load_evaluable(model, dtype, quiet)
    measure = _perplexity_meter(loaded, text, windows, seqlen, quiet)
    result = measure(loaded.model)
    click.echo(
        f"perplexity {result.perplexity:.3f}  ({result.windows} windows x {result.seqlen} tokens = "
        f"{result.tokens} tokens of {result.text})"
    )
    emit_json(as_json, {"model": model, **result.to_dict()})


def _load_evaluable(model: str, dtype: str, quiet: bool):
    from transformers.utils import logging as transformers_logging

    from eggs_ptp.models.evaluable import load_evaluable

    if quiet:
        transformers_logging.disable_progress_bar()
    return load_evaluable(model, DTYPES[dtype])


def _eval_tasks(model: str, names: list[str], limit: int | None, batch_size: int, dtype: str, as_json: bool,
                quiet: bool) -> None:
    """Harness tasks load (and fetch their data) before the model, so a missing dataset fails fast."""
    from eggs_ptp.eval.harness import evaluate_tasks, load_tasks, quiet_harness_logs

    quiet_harness_logs()
    task_set = load_tasks(names)
    loaded = _load_evaluable(model, dtype, quiet)
    result = evaluate_tasks(loaded.model, loaded.tokenizer, task_set, limit=limit, batch_size=batch_size,
                            progress=not quiet)
    for name, scores in {**result["tasks"], **result["groups"]}.items():
        shown = "  ".join(
            f"{metric} {value:.4f}" + (f" ± {scores[metric + '_stderr']:.4f}"
                                       if isinstance(scores.get(metric + "_stderr"), float) else "")
            for metric, value in scores.items()
            if isinstance(value, float) and not metric.endswith("_stderr") and metric != "version"
        )
        counts = f"  ({scores['samples']} documents, {scores['n_shot']}-shot)" if "samples" in scores else ""
        click.echo(f"{name}  {shown}{counts}")
    settings = result["settings"]
    click.echo(f"{settings['harness']}, batch {settings['batch_size']}, context {settings['max_length']} tokens"
               + (f", first {limit} documents per task" if limit else ""))
    emit_json(as_json, {"model": model, **result})


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def verify(folder: Path, as_json: bool) -> None:
    """Check that every pruned layer in FOLDER obeys the pattern in its sparsity.json."""
    from eggs_ptp.formats import VerifyError, verify_checkpoint

    try:
        checked = verify_checkpoint(folder)
    except VerifyError as error:
        click.echo(f"FAIL {error}", err=True)
        emit_json(as_json, {"folder": str(folder), "ok": False, "error": str(error)})
        sys.exit(1)
    except ValueError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    click.echo(f"OK {checked} pruned layers obey their pattern")
    emit_json(as_json, {"folder": str(folder), "ok": True, "layers": checked})
