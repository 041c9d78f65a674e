"""Mask selectors: turn a (out, in) score into a bool keep-mask under a sparsity pattern."""

from eggs_ptp.selectors.base import Selector, select_in_chunks
from eggs_ptp.selectors.eggs import RULES, EggsSelector, GuaranteeError, check_guarantee
from eggs_ptp.selectors.topk import TopKSelector, select_nm, select_per_row

__all__ = [
    "RULES",
    "EggsSelector",
    "GuaranteeError",
    "Selector",
    "TopKSelector",
    "check_guarantee",
    "select_in_chunks",
    "select_nm",
    "select_per_row",
]
