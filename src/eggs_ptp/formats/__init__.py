"""Checkpoint formats: dense-with-zeros safetensors plus ``sparsity.json``, and their checks."""

from eggs_ptp.formats.checkpoint import (
    read_report,
    save_pruned,
    write_json_atomic,
)
from eggs_ptp.formats.output import OutputError, OutputExistsError, OutputLockedError, check_output_target, claim_output
from eggs_ptp.formats.verify import VerifyError, verify_checkpoint
from eggs_ptp.pattern import pattern_violations

__all__ = [
    "OutputError",
    "OutputExistsError",
    "OutputLockedError",
    "VerifyError",
    "check_output_target",
    "claim_output",
    "pattern_violations",
    "read_report",
    "save_pruned",
    "verify_checkpoint",
    "write_json_atomic",
]
