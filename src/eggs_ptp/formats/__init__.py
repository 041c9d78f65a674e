"""Checkpoint formats: dense-with-zeros safetensors plus ``sparsity.json``, and their checks."""

from eggs_ptp.formats.checkpoint import (
    OutputExistsError,
    check_output_target,
    read_report,
    save_pruned,
    write_json_atomic,
)
from eggs_ptp.formats.verify import VerifyError, verify_checkpoint
from eggs_ptp.pattern import pattern_violations

__all__ = [
    "OutputExistsError",
    "VerifyError",
    "check_output_target",
    "pattern_violations",
    "read_report",
    "save_pruned",
    "verify_checkpoint",
    "write_json_atomic",
]
