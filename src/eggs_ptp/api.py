"""The Python API: ``prune(model, tokenizer, ...)`` prunes a model in memory and returns it with its
report; ``prune_checkpoint(folder, out, ...)`` prunes a checkpoint too large for memory, one block
at a time, straight to an output folder."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

from eggs_ptp.allocation import block_outlier_ratio, owl_sparsities
from eggs_ptp.config import PruneConfig
from eggs_ptp.data import CalibrationSet, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.methods import build_method
from eggs_ptp.models import context_length, find_blocks
from eggs_ptp.formats.checkpoint import REPORT_FILE, check_output_target, staged_folder, write_json_atomic
from eggs_ptp.formats.sharded import write_sharded
from eggs_ptp.models.lazy import LazyBlocks, LazyModel
from eggs_ptp.pattern import Pattern
from eggs_ptp.report import PruneReport, peak_cuda_mb, peak_rss_mb
from eggs_ptp.walk import BlockAccess, BlockCall, InMemory, LayerReport, capture_block_inputs, survey_blocks, walk_and_prune
from eggs_ptp.walk.activations import ActivationStore
from eggs_ptp.walk.distributed import Ranks
from eggs_ptp.walk.resume import Resumed, RunProgress, progress_folder

log = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"


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
    activation_dtype: torch.dtype | None = None,
    offload_dir: Path | None = None,
    run_progress: RunProgress | None = None,
    resume: bool = False,
    ranks: Ranks | None = None,
    **overrides: Any,
) -> tuple[PreTrainedModel, PruneReport]:
    """Prune ``model`` in place, block by block, and return it with its report.

    Args:
        config: the run's settings; ``overrides`` replace single fields (``prune(m, t, method="ria")``).
        calibration: pre-drawn windows, to reuse one calibration set across runs; drawn from
            ``config.calib`` when None.
        model_info: recorded in the report as the model's provenance.
        activation_dtype: dtype the calibration activations are kept in [default: the model's].
        offload_dir: keep the activations on disk here instead of in memory.
        run_progress: persist progress after every block, so that ``resume`` can continue a killed run.
        ranks: this process's place when launched by ``torchrun``; windows are split across ranks.
    """
    config = _resolve(config, overrides)
    started = time.perf_counter()
    calibration = calibration or build_calibration(model, tokenizer, calibration_config(config))
    prefix, blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    try:
        run = _walk(model, blocks, prefix, config, calibration, progress, InMemory(), None, activation_dtype,
                    offload_dir, run_progress, resume, ranks)
        if run.resumed:
            for index in range(run.resumed.next_block):
                blocks[index].load_state_dict(_strip(run_progress.load_block(index), f"{prefix}.{index}."))
    finally:
        model.train(was_training)
    return model, _report(model, next(model.parameters()).dtype, config, calibration, run, started, model_info)


def prune_checkpoint(
    location: str | Path,
    out: Path,
    config: PruneConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    tokenizer: object | None = None,
    calibration: CalibrationSet | None = None,
    progress: bool = True,
    model_info: dict[str, Any] | None = None,
    activation_dtype: torch.dtype | None = None,
    offload_dir: Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ranks: Ranks | None = None,
    **overrides: Any,
) -> PruneReport:
    """Prune the safetensors checkpoint in folder ``location`` with one decoder block in memory at a
    time, writing the result to ``out`` block by block (see :mod:`eggs_ptp.models.lazy`).

    Peak memory is about one block, the embedding and the calibration activations, not the model.
    Progress is kept beside ``out`` after every block; ``resume`` continues a killed run. The
    tokenizer is loaded from ``location`` unless given; it is saved with the output.
    """
    config = _resolve(config, overrides)
    out = Path(out)
    writer = ranks is None or ranks.is_writer
    if writer:
        check_output_target(out, overwrite)
    started = time.perf_counter()
    lazy = LazyModel(Path(location), dtype, torch.device(device))
    model = lazy.model
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(location)
    calibration = calibration or build_calibration(model, tokenizer, calibration_config(config))
    prefix, blocks = find_blocks(model)
    fingerprint = run_fingerprint(config, calibration, model_info, lazy.checkpoint.signature(), dtype,
                                  activation_dtype, ranks)
    checkpoint = RunProgress(progress_folder(out), fingerprint, ranks)
    handles = lazy.materialise_on_call(blocks)
    try:
        run = _walk(model, blocks, prefix, config, calibration, progress, LazyBlocks(lazy, blocks), lazy.device,
                    activation_dtype, offload_dir, checkpoint, resume, ranks)
    finally:
        for handle in handles:
            handle.remove()
    report = _report(model, dtype, config, calibration, run, started,
                     {**(model_info or {}), "checkpoint_bytes": lazy.checkpoint.nbytes, "low_memory": True})
    if writer:
        with staged_folder(out) as staging:
            write_sharded(staging, lazy, [checkpoint.block_file(i) for i in range(len(blocks))], progress)
            model.config.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            if (Path(location) / GENERATION_CONFIG).is_file():
                shutil.copyfile(Path(location) / GENERATION_CONFIG, staging / GENERATION_CONFIG)
            report.peak_rss_mb = peak_rss_mb()
            write_json_atomic(staging / REPORT_FILE, report.to_dict())
    checkpoint.finish()
    return report


@dataclass
class _Run:
    layers: list[LayerReport]
    allocation: dict[str, Any] | None
    resumed: Resumed | None


def _walk(
    model: nn.Module, blocks: nn.ModuleList, prefix: str, config: PruneConfig, calibration: CalibrationSet,
    progress: bool, access: BlockAccess, device: torch.device | None, activation_dtype: torch.dtype | None,
    offload_dir: Path | None, checkpoint: RunProgress | None, resume: bool, ranks: Ranks | None,
) -> _Run:
    windows = ranks.share(calibration.windows) if ranks else calibration.windows
    if not len(windows):
        raise ValueError(f"{len(calibration.windows)} calibration windows cannot be shared by {ranks.world} "
                         "processes; draw at least one per process")
    offload = Path(offload_dir) / f"rank-{ranks.rank if ranks else 0}" / "block-00000" if offload_dir else None
    resumed = checkpoint.open(resume, activation_dtype, offload) if checkpoint else None
    try:
        layers, allocation = _resume_or_start(model, blocks, prefix, config, windows, progress, access, device,
                                              activation_dtype, offload, checkpoint, resumed, ranks)
    except BaseException:
        if checkpoint:
            checkpoint.discard_if_empty()
        raise
    if not any(layer.skipped is None for layer in layers):
        raise ValueError(
            "no layer was pruned: every linear layer was excluded or skipped; "
            "check --include/--exclude and the pattern"
        )
    return _Run(layers, allocation, resumed)


def _resume_or_start(
    model: nn.Module, blocks: nn.ModuleList, prefix: str, config: PruneConfig, windows: torch.Tensor,
    progress: bool, access: BlockAccess, device: torch.device | None, activation_dtype: torch.dtype | None,
    offload: Path | None, checkpoint: RunProgress | None, resumed: Resumed | None, ranks: Ranks | None,
) -> tuple[list[LayerReport], dict[str, Any] | None]:
    method = build_method(config)
    if resumed:  # the calls (masks, positions) are the same for every window: one window gives them
        _, calls = capture_block_inputs(model, blocks, windows[:1], progress, None, access, device)
        hidden, layers, allocation, start = resumed.inputs, resumed.layers, resumed.allocation, resumed.next_block
    else:
        hidden, calls = capture_block_inputs(model, blocks, windows, progress, ActivationStore(activation_dtype, offload),
                                             access, device)
        layers, start = [], 0
        allocation = _owl_allocation(config, blocks, prefix, calls, hidden, progress, access, ranks) \
            if config.allocation == "owl" else None
    access.captured()
    pattern = [Pattern(sparsity=s) for s in allocation["block_sparsity"]] if allocation else config.parsed_pattern
    clock = time.perf_counter() - (resumed.seconds if resumed else 0.0)

    def save(index: int, block_layers: list[LayerReport], outputs: ActivationStore) -> None:
        layers.extend(block_layers)
        if checkpoint:
            checkpoint.save_block(index, blocks[index].state_dict(prefix=f"{prefix}.{index}."), layers, outputs,
                                  allocation, time.perf_counter() - clock)

    walk_and_prune(blocks, prefix, calls, hidden, method, pattern, config.include, config.exclude, progress,
                   on_block=save, permute=config.permute, access=access, start=start, ranks=ranks)
    return layers, allocation


def _owl_allocation(config: PruneConfig, blocks: nn.ModuleList, prefix: str, calls: list[BlockCall],
                    hidden: ActivationStore, progress: bool, access: BlockAccess, ranks: Ranks | None) -> dict[str, Any]:
    """OWL's per-block sparsities from a dense survey of every block's Wanda-score outliers."""
    ratios = survey_blocks(
        blocks, prefix, calls, hidden, lambda layers: block_outlier_ratio(layers, config.owl_threshold),
        config.include, config.exclude, progress, access, ranks,
    )
    sparsities = owl_sparsities(ratios, config.parsed_pattern.sparsity, config.owl_lambda)
    return {"method": "owl", "lambda": config.owl_lambda, "threshold": config.owl_threshold,
            "outlier_ratio": ratios, "block_sparsity": sparsities}


def _resolve(config: PruneConfig | None, overrides: dict[str, Any]) -> PruneConfig:
    config = config or PruneConfig()
    return config.replace(**overrides) if overrides else config


def calibration_config(config: PruneConfig) -> PruneConfig:
    """A method without calibration still gets one window, to measure reconstruction error."""
    needs = build_method(config).needs_calibration or config.allocation != "uniform"
    return config if needs else config.replace(nsamples=1)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in tensors.items()}


def run_fingerprint(config: PruneConfig, calibration: CalibrationSet, model_info: dict[str, Any] | None,
                    weights: dict[str, Any], dtype: torch.dtype, activation_dtype: torch.dtype | None,
                    ranks: Ranks | None) -> dict[str, Any]:
    """What a run's results depend on; a resume must match it exactly."""
    return {"config": config.to_dict(), "model": {"source": (model_info or {}).get("location"), **weights},
            "calibration": calibration.describe(), "dtype": str(dtype),
            "activation_dtype": str(activation_dtype or dtype), "processes": ranks.world if ranks else 1}


def _report(model: nn.Module, dtype: torch.dtype, config: PruneConfig, calibration: CalibrationSet, run: _Run,
            started: float, model_info: dict[str, Any] | None) -> PruneReport:
    info = {"class": type(model).__name__, "model_type": model.config.model_type,
            "dtype": str(dtype).replace("torch.", ""), **(model_info or {})}
    return PruneReport(
        config=config,
        model=info,
        calibration=calibration.describe(),
        layers=run.layers,
        seconds=time.perf_counter() - started + (run.resumed.seconds if run.resumed else 0.0),
        peak_rss_mb=peak_rss_mb(),
        allocation=run.allocation,
        resumed_at_block=run.resumed.next_block if run.resumed else None,
        peak_cuda_mb=peak_cuda_mb(),
    )


__all__ = ["build_calibration", "calibration_config", "effective_seqlen", "prune", "prune_checkpoint", "run_fingerprint"]
