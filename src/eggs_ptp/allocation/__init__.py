"""Per-block sparsity allocation: how much of the target sparsity each block carries."""

from eggs_ptp.allocation.owl import outlier_ratio, owl_sparsities

__all__ = ["outlier_ratio", "owl_sparsities"]
