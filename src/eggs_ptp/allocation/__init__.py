"""Per-block sparsity allocation: how much of the target sparsity each block carries."""

from eggs_ptp.allocation.owl import block_outlier_ratio, outlier_ratio, owl_sparsities

__all__ = ["block_outlier_ratio", "outlier_ratio", "owl_sparsities"]
