"""``eggs-ptp inspect``: how connected each pruned layer's bipartite graph stayed.

Works on an eggs-ptp checkpoint (layers and pattern from ``sparsity.json``) and on any other model
folder or hub id, pruned or not, inferring the mask from the zero weights. Writes ``inspect.json``
(and with ``--plot`` PNG figures) into the output folder, each file atomically; it never deletes
anything there, so ``--overwrite`` only replaces files of the same name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from tqdm.auto import tqdm

from eggs_ptp.cli.main import trust_remote_code_option
from eggs_ptp.models.loading import hide_loading_bars
from eggs_ptp.pattern import Pattern

if TYPE_CHECKING:
    from eggs_ptp.graph import LayerGraphMetrics

INSPECT_FILE = "inspect.json"
INSPECT_TYPE = "eggs-ptp/inspect"
INSPECT_VERSION = 1


def _tile_pattern(explicit: str | None, recorded: str | None) -> tuple[int, int] | None:
    """The N:M the per-tile counts use: ``--pattern``, else the checkpoint's own when it is N:M."""
    if explicit is not None:
        pattern = Pattern.parse(explicit)
        if not pattern.structured:
            raise ValueError(f"--pattern must be N:M (for example 2:4) for per-tile counts, got {explicit!r}")
        return pattern.n, pattern.m
    if recorded is not None:
        pattern = Pattern.parse(recorded)
        return (pattern.n, pattern.m) if pattern.structured else None
    return None


def _table(rows: list[dict[str, Any]], b: int, tiles: bool) -> list[str]:
    width = max([len("layer")] + [len(row["name"]) for row in rows])
    header = (
        f"{'layer':<{width}}  {'shape':>11}  {'kept':>5}  {'in-min':>6}  {'in-mean':>8}  {'zero-in':>7}  {f'in<{b}':>6}"
    )
    header += f"  {f'tile<{b}':>7}" * tiles + f"  {'gap':>6}  {'expansion*':>10}"
    lines = [header]
    for row in rows:
        shape = f"{row['shape'][0]}x{row['shape'][1]}"
        line = (
            f"{row['name']:<{width}}  {shape:>11}  {row['kept_fraction']:>5.3f}  {row['in_degree_min']:>6}  "
            f"{row['in_degree_mean']:>8.1f}  {row['zero_inputs']:>7}  {row['below_b_inputs']:>6}"
        )
        line += f"  {row['tiles']['below_b_fraction']:>7.4f}" * tiles
        lines.append(line + f"  {row['spectral_gap']:>6.4f}  {row['expansion_min']:>10.2f}")
    return lines


def _summary_line(summary: dict[str, Any]) -> str:
    return (
        f"summary: {summary['layers']} layers | in-degree min: mean {summary['in_degree_min_mean']:.1f}, "
        f"worst {summary['in_degree_min_worst']} | zero-degree inputs {summary['zero_inputs']} | "
        f"mean spectral gap {summary['mean_spectral_gap']:.4f} | min expansion (est.) {summary['expansion_min']:.2f}"
    )


def _plots(name: str, rows: list[dict[str, Any]], metrics: list[LayerGraphMetrics], out: Path) -> list[str]:
    """Write the figures into ``out``; return the file names written."""
    from eggs_ptp.graph.plots import connectivity_vs_error, degree_histograms, heatmap

    heatmap([(row["name"], m) for row, m in zip(rows, metrics)], out / "heatmap.png", title=name)
    degree_histograms({name: metrics}, out / "degree-histogram.png")
    written = ["heatmap.png", "degree-histogram.png"]
    points = [(m, row["recon_error"]) for row, m in zip(rows, metrics)]
    if connectivity_vs_error({name: points}, out / "connectivity-vs-error.png") is not None:
        written.append("connectivity-vs-error.png")
    return written


@click.command(name="inspect")
@click.argument("source", metavar="CHECKPOINT_OR_MODEL")
@click.option(
    "--layers",
    "layers",
    multiple=True,
    help="Only these layers: an exact name or a glob such as '*.mlp.*' (repeatable).",
)
@click.option(
    "--b",
    "b",
    type=int,
    default=1,
    show_default=True,
    help="Also count inputs (and tile columns) keeping fewer than B weights.",
)
@click.option(
    "--pattern",
    default=None,
    help="N:M for the per-tile counts [default: the checkpoint's, else inferred from its zeros].",
)
@click.option("--tile-height", type=int, default=None, help="Rows per tile for the per-tile counts [default: M].")
@click.option("--plot", is_flag=True, help="Also write PNG figures: heat map, degree histogram, connectivity vs error.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for inspect.json and figures [default: ./inspect-NAME].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into a non-empty --out (replaces inspect.json and figures, deletes nothing).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@trust_remote_code_option
def inspect_command(
    source: str,
    layers: tuple[str, ...],
    b: int,
    pattern: str | None,
    tile_height: int | None,
    plot: bool,
    out: Path | None,
    overwrite: bool,
    as_json: bool,
    quiet: bool,
    trust_remote_code: bool,
) -> None:
    """Connectivity of every pruned layer of CHECKPOINT_OR_MODEL seen as a bipartite graph.

    Per layer: kept fraction, input-degree minimum and mean, inputs with no kept weight (and fewer
    than B), per-tile counts, the spectral gap of the normalised biadjacency, and an estimate of
    vertex expansion min |Gamma(T)|/|T| over small input sets.

    \b
    Example:
      eggs-ptp inspect smollm2-2of4 --plot --layers '*.mlp.*'
    """

    from eggs_ptp.formats import check_output_target, write_json_atomic
    from eggs_ptp.graph import layer_metrics, open_masks, source_name, summarise

    if b < 0:
        raise ValueError(f"--b must be >= 0, got {b}")
    if tile_height is not None and tile_height < 1:
        raise ValueError(f"--tile-height must be >= 1, got {tile_height}")
    explicit_tiles = _tile_pattern(pattern, None)
    out = out if out is not None else Path(f"inspect-{source_name(source)}")
    check_output_target(out, overwrite)
    if quiet:
        hide_loading_bars()
    masks = open_masks(source, layers, trust_remote_code)
    tiles = explicit_tiles or _tile_pattern(None, masks.pattern)
    if tile_height is not None and tiles is None:
        raise ValueError(f"--tile-height needs an N:M pattern, and {masks.name} records none; pass --pattern N:M")
    record: dict[str, Any] = {
        "type": INSPECT_TYPE,
        "schema_version": INSPECT_VERSION,
        "source": source,
        "name": masks.name,
        "has_report": masks.has_report,
        "method": masks.method,
        "pattern": masks.pattern,
        "pattern_inferred": masks.pattern_inferred,
        "b": b,
        "tiles": {"n": tiles[0], "m": tiles[1], "height": tile_height or tiles[1]} if tiles else None,
        "dense": masks.dense,
        "skipped_layers": masks.skipped,
    }
    described = (
        f"{masks.method or 'unknown method'}, pattern {masks.pattern or 'unknown'}"
        + " (inferred)" * masks.pattern_inferred
    )
    click.echo(
        f"{masks.name}: {described} | B={b}"
        + (f" | tiles {tiles[0]}:{tiles[1]} x {tile_height or tiles[1]} rows" if tiles else "")
    )
    rows, metrics = [], []
    if masks.dense:
        click.echo(
            f"dense / not pruned: none of the {len(masks.layers) + len(masks.skipped)} selected layers has a "
            "zero weight"
        )
    else:
        for layer in tqdm(masks.masks(), total=len(masks.layers), desc="inspect layers", disable=quiet, leave=False):
            result = layer_metrics(layer.mask, b=b, pattern=tiles, tile_height=tile_height)
            metrics.append(result)
            rows.append(
                {
                    "name": layer.name,
                    "transposed": layer.transposed,
                    "recon_error": layer.recon_error,
                    **result.to_dict(),
                }
            )
        for line in _table(rows, b, tiles is not None):
            click.echo(line)
        click.echo(
            "* expansion: min |Gamma(T)|/|T| over random and greedy sets T of inputs; an estimate, not a certificate"
        )
    for name, reason in masks.skipped.items():
        click.echo(f"skipped {name}: {reason}")
    summary = summarise(metrics)
    if metrics:
        click.echo(_summary_line(summary))
    out.mkdir(exist_ok=True)
    figures = _plots(masks.name, rows, metrics, out) if plot and metrics else []
    write_json_atomic(out / INSPECT_FILE, {**record, "summary": summary, "figures": figures, "layers": rows})
    click.echo(f"wrote {out / INSPECT_FILE}" + "".join(f", {out / name}" for name in figures))
    if as_json:
        click.echo(
            json.dumps(
                {"source": source, "out": str(out), "dense": masks.dense, "summary": summary, "figures": figures}
            )
        )


__all__ = ["INSPECT_FILE", "INSPECT_TYPE", "INSPECT_VERSION", "inspect_command"]
