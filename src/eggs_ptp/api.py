"""The Python API: ``prune(model, tokenizer, ...)`` returns the pruned model and its report."""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers import PreTrainedModel

from eggs_ptp.config import PruneConfig
from eggs_ptp.data import CalibrationSet, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.methods import build_method
from eggs_ptp.models import context_length, find_blocks
from eggs_ptp.report import PruneReport, peak_rss_mb
from eggs_ptp.walk import capture_block_inputs, walk_and_prune

log = logging.getLogger(__name__)


def effective_seqlen(model: PreTrainedModel, tokenizer: object, requested: int) -> int:
    """``requested``, capped by the context the model declares (never sized by it)."""
    limit = context_length(model, tokenizer)
    if limit is not None and requested > limit:
        log.warning("seqlen %d exceeds the model's context %d; using %d", requested, limit, limit)
        return limit
    return requested


def build_calibration(model: PreTrainedModel, tokenizer: object, config: PruneConfig) -> CalibrationSet:
    """Tokenise ``config.calib`` and draw the seeded calibration windows."""
    source = load_text(config.calib, "calibration")
    seqlen = effective_seqlen(model, tokenizer, config.seqlen)
    return sample_windows(tokenize(tokenizer, source.text), config.nsamples, seqlen, config.seed, source.description)


def prune(
    model: PreTrainedModel,
    tokenizer: object,
    config: PruneConfig | None = None,
    *,
    calibration: CalibrationSet | None = None,
    progress: bool = True,
    model_info: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[PreTrainedModel, PruneReport]:
    """Prune ``model`` in place, block by block, and return it with its report.

    Args:
        config: the run's settings; ``overrides`` replace single fields (``prune(m, t, method="ria")``).
        calibration: pre-drawn windows, to reuse one calibration set across runs; drawn from
            ``config.calib`` when None.
        model_info: recorded in the report as the model's provenance.
    """
    config = config or PruneConfig()
    if overrides:
        config = config.replace(**overrides)
    method = build_method(config)
    pattern = config.parsed_pattern
    started = time.perf_counter()
    if calibration is None:
        calibration = build_calibration(model, tokenizer, config)
    prefix, blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    try:
        hidden, calls = capture_block_inputs(model, blocks, calibration.windows, progress)
        layers = walk_and_prune(
            blocks, prefix, calls, hidden, method, pattern, config.include, config.exclude, progress,
            permute=config.permute,
        )
    finally:
        model.train(was_training)
    if not any(layer.skipped is None for layer in layers):
        raise ValueError(
            "no layer was pruned: every linear layer was excluded or skipped; "
            "check --include/--exclude and the pattern"
        )
    info = {"class": type(model).__name__, "model_type": model.config.model_type,
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), **(model_info or {})}
    report = PruneReport(
        config=config,
        model=info,
        calibration=calibration.describe(),
        layers=layers,
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak_rss_mb(),
    )
    return model, report


__all__ = ["build_calibration", "effective_seqlen", "prune"]
