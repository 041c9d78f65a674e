"""``eggs-ptp pack``: store an N:M checkpoint as kept values plus a bitmask, so it shrinks on disk."""

from __future__ import annotations

from pathlib import Path

import click

from eggs_ptp.cli.main import emit_json


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"


@click.command(name="pack")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option(
    "--overwrite", is_flag=True, help="Replace a non-empty OUT (only once the packed checkpoint is complete)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
def pack_command(folder: Path, out: Path, overwrite: bool, as_json: bool) -> None:
    """Pack the N:M checkpoint DIR (from eggs-ptp prune) into the compact format in OUT.

    Each pruned layer keeps only its N-of-M values and a 1-bit-per-column mask (compressed-tensors'
    sparse-24-bitmask layout); everything else is copied unchanged. Load it with
    eggs_ptp.formats.compact.load_compact.

    \b
    Example:
      eggs-ptp pack smollm2-2of4 smollm2-2of4-compact
    """
    from eggs_ptp.formats.compact import pack_checkpoint

    result = pack_checkpoint(folder, out, overwrite)
    click.echo(f"pattern {result.pattern} | {result.layers} pruned layers")
    click.echo(
        f"pruned layers: dense {_size(result.pruned_dense_bytes)} -> compact "
        f"{_size(result.pruned_compact_bytes)} ({result.pruned_ratio:.4f}x)"
    )
    click.echo(
        f"checkpoint:    dense {_size(result.file_dense_bytes)} -> compact "
        f"{_size(result.file_compact_bytes)} ({result.file_ratio:.4f}x)"
    )
    if result.signed_zeros_cleared:
        click.echo(f"{result.signed_zeros_cleared} pruned weights held -0.0 and load back as +0.0 (equal in value)")
    click.echo(f"saved to {out}")
    emit_json(as_json, {"source": str(folder), **result.to_dict()})


__all__ = ["pack_command"]
