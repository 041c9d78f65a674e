"""The Python API: ``prune(model, tokenizer, ...)`` returns the pruned model and its report."""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers import PreTrainedModel

from eggs_ptp.allocation import block_outlier_ratio, owl_sparsities
from eggs_ptp.config import PruneConfig
from eggs_ptp.data import CalibrationSet, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.methods import build_method
from eggs_ptp.models import context_length, find_blocks
from eggs_ptp.report import PruneReport, peak_rss_mb
from eggs_ptp.pattern import Pattern
from eggs_ptp.walk import capture_block_inputs, survey_blocks, walk_and_prune

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
        # A method without calibration still gets one window, to measure reconstruction error.
        needed = config if method.needs_calibration or config.allocation != "uniform" else config.replace(nsamples=1)
        calibration = build_calibration(model, tokenizer, needed)
    prefix, blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    allocation = None
    try:
        hidden, calls = capture_block_inputs(model, blocks, calibration.windows, progress)
        if config.allocation == "owl":
            allocation = _owl_allocation(config, blocks, prefix, calls, hidden, progress)
        layers = walk_and_prune(
            blocks, prefix, calls, hidden, method,
            [Pattern(sparsity=s) for s in allocation["block_sparsity"]] if allocation else pattern,
            config.include, config.exclude, progress, permute=config.permute,
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
        allocation=allocation,
    )
    return model, report


def _owl_allocation(config: PruneConfig, blocks, prefix, calls, hidden, progress: bool) -> dict[str, Any]:
    """OWL's per-block sparsities from a dense survey of every block's Wanda-score outliers."""
    ratios = survey_blocks(
        blocks, prefix, calls, hidden, lambda layers: block_outlier_ratio(layers, config.owl_threshold),
        config.include, config.exclude, progress,
    )
    sparsities = owl_sparsities(ratios, config.parsed_pattern.sparsity, config.owl_lambda)
    return {"method": "owl", "lambda": config.owl_lambda, "threshold": config.owl_threshold,
            "outlier_ratio": ratios, "block_sparsity": sparsities}


__all__ = ["build_calibration", "effective_seqlen", "prune"]
