"""Integer weight grids: symmetric int8 per output channel, and int4 in groups along the input.

A grid maps each weight of row r, column c to ``(q - z) * s`` where ``g = c // group_size``,
``s = scales[r, g]`` (float16) and ``z = zeros[r, g]`` (uint8; 0 for int8, 8 for symmetric int4
when no zero points are stored). The product of a small integer and a float16 is exact in fp32, so
dequantization is bit-exact wherever it runs: here, in the CPU kernel, after a round trip through
a file. Scales are fitted on the kept weights only, so a group's pruned zeros never stretch it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANTIZE = ("none", "int8", "int4")
SCALE_DTYPE = torch.float16
_SMALLEST_SCALE = 2.0**-24  # float16's smallest subnormal: a scale never rounds to 0
# Groups must not straddle the kernel's 32-column chunks, nor any M-group of an N:M pattern.
GROUP_MULTIPLE = 32


@dataclass(frozen=True)
class QuantScheme:
    """Args:
    bits: 8 (signed values, symmetric) or 4 (unsigned nibbles).
    symmetric: int4 only may be asymmetric: a zero point per group, the range from min to max.
    group_size: input columns per scale; None is one scale per output channel.
    """

    bits: int
    symmetric: bool = True
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantization takes 8 or 4 bits, got {self.bits}")
        if self.bits == 8 and not self.symmetric:
            raise ValueError("int8 quantization is symmetric per output channel; asymmetric grids need int4")
        if self.group_size is not None and (self.group_size < 1 or self.group_size % GROUP_MULTIPLE):
            raise ValueError(f"group size must be a positive multiple of {GROUP_MULTIPLE}, got {self.group_size}")

    @classmethod
    def parse(cls, name: str, group_size: int = 128, asymmetric: bool = False) -> QuantScheme | None:
        """The scheme a user names (``none``, ``int8``, ``int4``); int8 ignores the group size."""
        if name not in QUANTIZE:
            raise ValueError(f"unknown quantization {name!r}; choose one of {', '.join(QUANTIZE)}")
        if name == "none":
            if asymmetric:
                raise ValueError("asymmetric grids need --quantize int4")
            return None
        if name == "int8":
            return cls(8, not asymmetric, None)
        return cls(4, not asymmetric, group_size)

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def stored_range(self) -> tuple[int, int]:
        """The integers stored: signed for int8, unsigned nibbles for int4."""
        return (-128, 127) if self.bits == 8 else (0, 15)

    @property
    def implied_zero(self) -> int:
        return 0 if self.bits == 8 else 8

    def group_columns(self, cols: int) -> int:
        return cols if self.group_size is None else min(self.group_size, cols)

    def groups(self, cols: int) -> int:
        return -(-cols // self.group_columns(cols))

    def to_dict(self) -> dict[str, object]:
        return {"bits": self.bits, "symmetric": self.symmetric, "group_size": self.group_size}

    @classmethod
    def from_dict(cls, record: dict[str, object]) -> QuantScheme:
        try:
            return cls(int(record["bits"]), bool(record["symmetric"]), record.get("group_size"))  # type: ignore[arg-type]
        except (KeyError, TypeError) as error:
            raise ValueError(f"a quantization record needs bits, symmetric and group_size: {error}") from None

    def fit(self, weight: torch.Tensor, kept: torch.Tensor) -> Grid:
        """The grid of ``weight`` (rows, cols) whose every group's range covers its kept weights."""
        rows, cols = weight.shape
        width, groups = self.group_columns(cols), self.groups(cols)
        padding = groups * width - cols
        w = torch.nn.functional.pad(weight.float(), (0, padding)).reshape(rows, groups, width)
        keep = torch.nn.functional.pad(kept, (0, padding)).reshape(rows, groups, width)
        high = torch.where(keep, w, 0.0).amax(dim=-1)  # (rows, groups); 0 always inside the range
        low = torch.where(keep, w, 0.0).amin(dim=-1)
        if self.symmetric:
            positive = self.stored_range[1] - self.implied_zero  # 127 or 7
            scale = torch.maximum(high, -low) / positive
            zeros = None
        else:
            scale = (high - low) / (self.levels - 1)
        scale = torch.where(scale > 0, scale, 1.0).clamp_min(_SMALLEST_SCALE).to(SCALE_DTYPE)
        if not self.symmetric:
            zeros = (-low / scale.float()).round().clamp(0, self.levels - 1).to(torch.uint8)
        return Grid(self, scale, zeros, cols)


@dataclass
class Grid:
    """One layer's fitted grid: ``scales`` (rows, groups) float16, ``zeros`` (rows, groups) uint8 or None."""

    scheme: QuantScheme
    scales: torch.Tensor
    zeros: torch.Tensor | None
    cols: int

    def _per_column(self, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point (rows, len(columns)) as fp32, for the given input columns."""
        width = self.scheme.group_columns(self.cols)
        index = torch.arange(self.cols, device=self.scales.device)[columns] // width
        scale = self.scales.float()[:, index]
        zero = (
            self.zeros.float()
            if self.zeros is not None
            else torch.full_like(self.scales, self.scheme.implied_zero, dtype=torch.float32)
        )[:, index]
        return scale, zero

    def quantize(self, weight: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
        """The stored integers (int16) nearest ``weight``'s columns ``columns``, clamped to the grid."""
        scale, zero = self._per_column(columns)
        low, high = self.scheme.stored_range
        return (weight.float() / scale + zero).round().clamp(low, high).to(torch.int16)

    def dequantize(self, q: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
        scale, zero = self._per_column(columns)
        return (q.float() - zero) * scale

    def round(self, weight: torch.Tensor, columns: slice = slice(None)) -> torch.Tensor:
        """The nearest grid values (fp32) of ``weight``'s columns ``columns``."""
        return self.dequantize(self.quantize(weight, columns), columns)

    def round_column(self, column_values: torch.Tensor, column: int) -> torch.Tensor:
        """The nearest grid values (fp32) of one input column's weights (rows,)."""
        group = column // self.scheme.group_columns(self.cols)
        scale = self.scales[:, group].float()
        zero = self.zeros[:, group].float() if self.zeros is not None else float(self.scheme.implied_zero)
        low, high = self.scheme.stored_range
        return ((column_values.float() / scale + zero).round().clamp(low, high) - zero) * scale

    def refit_group(self, group: int, weight: torch.Tensor, kept: torch.Tensor) -> None:
        """Re-fit group ``group``'s scales (and zero points) on its current columns ``weight``."""
        fitted = self.scheme.fit(weight, kept)
        self.scales[:, group] = fitted.scales[:, 0]
        if self.zeros is not None:
            self.zeros[:, group] = fitted.zeros[:, 0]

    def off_grid(self, weight: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Where a kept value of ``weight`` (in its own dtype) is not a grid value in that dtype."""
        on = self.round(weight).to(weight.dtype) == weight
        return kept & ~on

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The grid as ``NAME.weight.scales`` (and ``NAME.weight.zeros``) for a safetensors file."""
        found = {f"{name}.weight.scales": self.scales.contiguous()}
        if self.zeros is not None:
            found[f"{name}.weight.zeros"] = self.zeros.contiguous()
        return found

    @classmethod
    def from_tensors(cls, scheme: QuantScheme, name: str, tensors: dict[str, torch.Tensor], cols: int) -> Grid:
        key = f"{name}.weight.scales"
        if key not in tensors:
            raise ValueError(f"{name}: its scales ({key}) are missing")
        scales = tensors[key]
        zeros = tensors.get(f"{name}.weight.zeros")
        expected = [scales.shape[0], scheme.groups(cols)] if scales.dim() == 2 else None
        if scales.dtype != SCALE_DTYPE or list(scales.shape) != expected:
            raise ValueError(
                f"{name}: scales must be float16 (rows, {scheme.groups(cols)}), got {scales.dtype} {list(scales.shape)}"
            )
        if (zeros is None) != scheme.symmetric:
            raise ValueError(
                f"{name}: a {'symmetric' if scheme.symmetric else 'asymmetric'} grid "
                f"{'has no' if scheme.symmetric else 'needs'} zero points"
            )
        if zeros is not None and (zeros.dtype != torch.uint8 or zeros.shape != scales.shape):
            raise ValueError(
                f"{name}: zero points must be uint8 shaped like the scales, got {zeros.dtype} {list(zeros.shape)}"
            )
        if not bool(torch.isfinite(scales).all()) or not bool((scales > 0).all()):
            raise ValueError(f"{name}: scales must be finite and positive")
        return cls(scheme, scales, zeros, cols)


__all__ = ["GROUP_MULTIPLE", "QUANTIZE", "SCALE_DTYPE", "Grid", "QuantScheme"]
