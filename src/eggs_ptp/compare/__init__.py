"""``compare``: a grid of methods x patterns x calibration seeds on one model, and its report."""

from eggs_ptp.compare.check import CheckResult, check_results
from eggs_ptp.compare.runner import RESULTS_FILE, read_results, run_compare
from eggs_ptp.compare.spec import Cell, CompareSpec

__all__ = ["RESULTS_FILE", "Cell", "CheckResult", "CompareSpec", "check_results", "read_results", "run_compare"]
