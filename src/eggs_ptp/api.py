"""The one orchestrator of a prune, shared by the Python API and the CLI.

``prune(model, tokenizer, config, run)`` prunes a model in memory and returns it with its report.
``prune_to_folder(source, out, config, run)`` loads a model (or, with ``run.low_memory``, opens its
checkpoint lazily), prunes it with progress kept beside ``out`` for ``--resume``, optionally
measures perplexity before and after, and writes the checkpoint atomically.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from eggs_ptp.allocation import block_outlier_ratio, owl_sparsities
from eggs_ptp.config import PruneConfig
from eggs_ptp.data import CalibrationSet, SequenceStart, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.eval import perplexity
from eggs_ptp.formats.checkpoint import save_pruned, staged_folder, write_record
from eggs_ptp.formats.output import check_output_target, claim_output
from eggs_ptp.formats.sharded import write_sharded
from eggs_ptp.methods import build_method
from eggs_ptp.models import context_length, find_blocks, load_model
from eggs_ptp.models.lazy import LazyBlocks, LazyModel
from eggs_ptp.models.loading import hide_loading_bars, load_tokenizer, resolve, resolve_folder, weights_signature
from eggs_ptp.options import RunOptions, resolve_device
from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import HeadRecord, quantize_head
from eggs_ptp.report import PruneReport, peak_cuda_mb, peak_rss_mb
from eggs_ptp.settings import setting
from eggs_ptp.walk import (
    BlockAccess,
    BlockCall,
    InMemory,
    LayerReport,
    capture_block_inputs,
    prunable_layers,
    survey_blocks,
    walk_and_prune,
)
from eggs_ptp.walk.activations import ActivationStore, Streams
from eggs_ptp.walk.distributed import Ranks
from eggs_ptp.walk.resume import Resumed, RunProgress, progress_folder

log = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class Evaluation:
    """Perplexity of the dense and the pruned model on the same windows, recorded in the report."""

    text: str = setting("wiki", "Evaluation text ('wiki' = the held-out split).", "--eval-text")
    windows: int | None = setting(None, "Evaluation windows [default: all of the text].", "--eval-windows")
    seqlen: int | None = setting(None, "Evaluation context length [default: --seqlen].", "--eval-seqlen")

    def __post_init__(self) -> None:
        if self.windows is not None and self.windows < 1:
            raise ValueError(f"--eval-windows must be at least 1, got {self.windows}")
        if self.seqlen is not None and self.seqlen < 1:
            raise ValueError(f"--eval-seqlen must be at least 1, got {self.seqlen}")


def effective_seqlen(model: PreTrainedModel, tokenizer: object, requested: int) -> int:
    """``requested``, capped by the context the model declares (never sized by it)."""
    limit = context_length(model, tokenizer)
    if limit is not None and requested > limit:
        log.warning("seqlen %d exceeds the model's context %d; using %d", requested, limit, limit)
        return limit
    return requested


def build_calibration(model: PreTrainedModel, tokenizer: object, config: PruneConfig) -> CalibrationSet:
    """Tokenise ``config.calib`` and draw the seeded calibration windows, each beginning as the
    tokenizer begins a sequence. A method that reads no calibration still gets one window, to measure
    reconstruction error."""
    source = load_text(config.calib, "calibration")
    seqlen = effective_seqlen(model, tokenizer, config.seqlen)
    needs = build_method(config.method, config.parsed_pattern).needs_calibration or config.allocation is not None
    return sample_windows(
        tokenize(tokenizer, source.text),
        config.nsamples if needs else 1,
        seqlen,
        config.seed,
        source.description,
        SequenceStart.of(tokenizer),
    )


def perplexity_meter(
    model: PreTrainedModel, tokenizer: object, text: str, windows: int | None, seqlen: int, progress: bool = True
):
    """Tokenise the evaluation text once; return a function measuring a model on it, on windows that
    begin as the tokenizer begins a sequence."""
    source = load_text(text, "evaluation")
    seqlen = effective_seqlen(model, tokenizer, seqlen)
    tokens, start = tokenize(tokenizer, source.text), SequenceStart.of(tokenizer)
    return lambda measured: perplexity(measured, tokens, seqlen, windows, source.description, progress, start)


def prune(
    model: PreTrainedModel,
    tokenizer: object,
    config: PruneConfig | None = None,
    run: RunOptions | None = None,
    *,
    calibration: CalibrationSet | None = None,
    model_info: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PruneReport]:
    """Prune ``model`` in place, block by block, and return it with its report.

    Args:
        config: what to compute [default: ``PruneConfig()``, EGGS at 2:4].
        run: how to run [default: ``RunOptions()``]; with ``run.progress_dir`` progress is kept there
            after every block, and ``run.resume`` continues a killed run.
        calibration: pre-drawn windows, to reuse one calibration set across runs; drawn from
            ``config.calib`` when None.
        model_info: recorded in the report as the model's provenance.
    """
    config, run = config or PruneConfig(), run or RunOptions()
    if run.resume and run.progress_dir is None:
        raise ValueError("resume continues the progress kept in progress_dir; give RunOptions(progress_dir=...)")
    ranks = run.ranks or Ranks.from_environment(next(model.parameters()).device)
    lock = claim_output(Path(run.progress_dir)) if run.progress_dir and (ranks is None or ranks.is_writer) else None
    with lock or nullcontext():
        return _prune_in_memory(model, tokenizer, config, run, ranks, calibration, model_info)


def _prune_in_memory(
    model: PreTrainedModel,
    tokenizer: object,
    config: PruneConfig,
    run: RunOptions,
    ranks: Ranks | None,
    calibration: CalibrationSet | None,
    model_info: dict[str, Any] | None,
) -> tuple[PreTrainedModel, PruneReport]:
    calibration = calibration or build_calibration(model, tokenizer, config)
    progress = None
    if run.progress_dir is not None:
        signature = {
            "class": type(model).__name__,
            "name_or_path": getattr(model.config, "name_or_path", None),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        progress = _open_progress(
            Path(run.progress_dir),
            config,
            calibration,
            model_info,
            signature,
            next(model.parameters()).dtype,
            run,
            ranks,
        )
    pruned, report = _prune_loaded(model, config, run, ranks, calibration, progress, model_info or {})
    if progress:
        progress.finish()
    return pruned, report


def prune_to_folder(
    source: str | Path,
    out: str | Path,
    config: PruneConfig | None = None,
    run: RunOptions | None = None,
    *,
    evaluation: Evaluation | None = None,
) -> PruneReport:
    """Prune the model ``source`` (a hub id, a local folder or the embedded default's short name) and
    write it, dense with zeros, with ``sparsity.json``, to ``out``.

    Progress is kept beside ``out`` after every block, so ``run.resume`` continues a killed run with
    identical results. With ``run.low_memory`` peak memory is about one block, the embedding and the
    calibration activations, not the model; the output is then written block by block.
    ``evaluation`` measures dense and pruned perplexity (in memory only).

    Before anything loads, ``out`` is checked (never the input folder or the working folder, never a
    non-empty folder without ``run.overwrite``) and locked against a second writer until it is in place.
    """
    config, run, out = config or PruneConfig(), run or RunOptions(), Path(out)
    if run.low_memory and evaluation is not None:
        raise ValueError("--low-memory holds one block at a time: evaluate the output with eggs-ptp eval instead")
    if run.low_memory and config.method.quantize_head:
        raise ValueError("--low-memory writes the head as it was read: drop --quantize-head or --low-memory")
    device = resolve_device(run.device)
    ranks = run.ranks or Ranks.from_environment(device)
    writer = ranks is None or ranks.is_writer
    if writer:
        check_output_target(out, run.overwrite, inputs=[resolve(str(source))])
    if not run.progress:
        hide_loading_bars()
    with claim_output(out) if writer else nullcontext():
        if run.low_memory:
            location = resolve_folder(str(source), run.trust_remote_code)
            return _prune_lazily(location, str(source), out, config, run, device, ranks)
        return _prune_to_folder(str(source), out, config, run, device, ranks, evaluation)


def _prune_to_folder(
    source: str,
    out: Path,
    config: PruneConfig,
    run: RunOptions,
    device: torch.device,
    ranks: Ranks | None,
    evaluation: Evaluation | None,
) -> PruneReport:
    writer = ranks is None or ranks.is_writer
    loaded = load_model(source, run.torch_dtype, run.device_map, run.trust_remote_code)
    if not run.device_map:
        loaded.model.to(device)
    info = {"source": loaded.source, "location": loaded.location, "revision": loaded.revision}
    calibration = build_calibration(loaded.model, loaded.tokenizer, config)
    progress = _open_progress(
        progress_folder(out), config, calibration, info, weights_signature(loaded.location), run.torch_dtype, run, ranks
    )
    measure = dense = None
    if evaluation is not None and writer:
        measure = perplexity_meter(
            loaded.model,
            loaded.tokenizer,
            evaluation.text,
            evaluation.windows,
            evaluation.seqlen or config.seqlen,
            run.progress,
        )
        dense = measure(loaded.model)
    model, report = _prune_loaded(loaded.model, config, run, ranks, calibration, progress, info)
    if writer:
        if measure:
            report.evaluation = {"perplexity": {"dense": dense.to_dict(), "pruned": measure(model).to_dict()}}
        save_pruned(model, loaded.tokenizer, report, out, run.overwrite)
    progress.finish()
    return report


def _prune_loaded(
    model: PreTrainedModel,
    config: PruneConfig,
    run: RunOptions,
    ranks: Ranks | None,
    calibration: CalibrationSet,
    progress: RunProgress | None,
    model_info: dict[str, Any],
) -> tuple[PreTrainedModel, PruneReport]:
    started = time.perf_counter()
    prefix, blocks = find_blocks(model)
    was_training = model.training
    model.eval()
    try:
        result = _Walk(model, blocks, prefix, config, run, ranks, progress).execute(calibration)
        if result.resumed:
            for index in range(result.resumed.next_block):
                blocks[index].load_state_dict(_strip(progress.load_block(index), f"{prefix}.{index}."))
    finally:
        model.train(was_training)
    head = quantize_head(model) if config.method.quantize_head else None
    return model, _report(model, next(model.parameters()).dtype, config, calibration, result, started, model_info, head)


def _prune_lazily(
    location: Path,
    source: str,
    out: Path,
    config: PruneConfig,
    run: RunOptions,
    device: torch.device,
    ranks: Ranks | None,
) -> PruneReport:
    started = time.perf_counter()
    lazy = LazyModel(location, run.torch_dtype, device, run.trust_remote_code)
    model = lazy.model
    tokenizer = load_tokenizer(location, run.trust_remote_code)
    calibration = build_calibration(model, tokenizer, config)
    prefix, blocks = find_blocks(model)
    info = {"source": source, "location": str(location)}
    progress = _open_progress(
        progress_folder(out), config, calibration, info, lazy.checkpoint.signature(), run.torch_dtype, run, ranks
    )
    handles = lazy.materialise_on_call(blocks)
    try:
        result = _Walk(
            model, blocks, prefix, config, run, ranks, progress, LazyBlocks(lazy, blocks), lazy.device
        ).execute(calibration)
    finally:
        for handle in handles:
            handle.remove()
    report = _report(
        model,
        run.torch_dtype,
        config,
        calibration,
        result,
        started,
        {**info, "checkpoint_bytes": lazy.checkpoint.nbytes, "low_memory": True},
    )
    if ranks is None or ranks.is_writer:
        with staged_folder(out) as staging:
            write_sharded(staging, lazy, [progress.block_file(i) for i in range(len(blocks))], run.progress)
            model.config.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            if (location / GENERATION_CONFIG).is_file():
                shutil.copyfile(location / GENERATION_CONFIG, staging / GENERATION_CONFIG)
            report.peak_rss_mb = peak_rss_mb()
            write_record(staging, report)
    progress.finish()
    return report


@dataclass
class _Result:
    layers: list[LayerReport]
    allocation: dict[str, Any] | None
    resumed: Resumed | None


@dataclass
class _Walk:
    """One walk over a model's blocks: capture (or resume), allocate, prune, persist."""

    model: nn.Module
    blocks: nn.ModuleList
    prefix: str
    config: PruneConfig
    options: RunOptions
    ranks: Ranks | None
    progress: RunProgress | None
    access: BlockAccess = field(default_factory=InMemory)
    device: torch.device | None = None

    def execute(self, calibration: CalibrationSet) -> _Result:
        windows = self.ranks.share(calibration.windows) if self.ranks else calibration.windows
        if not len(windows):
            raise ValueError(
                f"{len(calibration.windows)} calibration windows cannot be shared by "
                f"{self.ranks.world} processes; draw at least one per process"
            )
        config = self.config
        if not prunable_layers(
            self.blocks, self.prefix, config.parsed_pattern, config.include, config.exclude, config.experts
        ):
            raise ValueError(
                f"no layer can be pruned: every linear layer is excluded by --include/--exclude or has an input "
                f"width not divisible by M for pattern {config.pattern}; check them"
            )
        try:
            layers, allocation, resumed = self._walk(windows)
        except BaseException as error:
            if self.progress:
                self.progress.abandon(error)
            raise
        return _Result(layers, allocation, resumed)

    def _walk(self, windows: torch.Tensor) -> tuple[list[LayerReport], dict[str, Any] | None, Resumed | None]:
        options = self.options
        offload = (
            Path(options.offload_dir) / f"rank-{self.ranks.rank if self.ranks else 0}" / "block-00000"
            if options.offload_dir
            else None
        )
        activation_dtype = options.torch_activation_dtype
        resumed = self.progress.open(options.resume, activation_dtype, offload) if self.progress else None
        method = build_method(self.config.method, self.config.parsed_pattern)
        if resumed:  # the calls (masks, positions) are the same for every window: one window gives them
            _, calls = capture_block_inputs(
                self.model, self.blocks, windows[:1], options.progress, None, self.access, self.device
            )
            hidden, layers, allocation, start = resumed.inputs, resumed.layers, resumed.allocation, resumed.next_block
            dense = resumed.dense_inputs
        else:
            hidden, calls = capture_block_inputs(
                self.model,
                self.blocks,
                windows,
                options.progress,
                ActivationStore(activation_dtype, offload),
                self.access,
                self.device,
            )
            layers, start, dense = [], 0, None
            allocation = self._owl(calls, hidden) if self.config.allocation else None
        self.access.captured()
        pattern = (
            [Pattern(sparsity=s) for s in allocation["block_sparsity"]] if allocation else self.config.parsed_pattern
        )
        clock = time.perf_counter() - (resumed.seconds if resumed else 0.0)

        def save(index: int, block_layers: list[LayerReport], outputs: Streams) -> None:
            layers.extend(block_layers)
            if self.progress:
                self.progress.save_block(
                    index,
                    self.blocks[index].state_dict(prefix=f"{self.prefix}.{index}."),
                    layers,
                    outputs.pruned,
                    allocation,
                    time.perf_counter() - clock,
                    outputs.dense,
                    {layer.name: layer.grid for layer in block_layers if layer.grid is not None},
                )

        walk_and_prune(
            self.blocks,
            self.prefix,
            calls,
            hidden,
            method,
            pattern,
            self.config.include,
            self.config.exclude,
            options.progress,
            on_block=save,
            permute=self.config.permute,
            access=self.access,
            start=start,
            ranks=self.ranks,
            experts=self.config.experts,
            dense=dense,
        )
        return layers, allocation, resumed

    def _owl(self, calls: list[BlockCall], hidden: ActivationStore) -> dict[str, Any]:
        """OWL's per-block sparsities from a dense survey of every block's Wanda-score outliers."""
        owl = self.config.allocation
        ratios = survey_blocks(
            self.blocks,
            self.prefix,
            calls,
            hidden,
            lambda layers: block_outlier_ratio(layers, owl.threshold),
            self.config.include,
            self.config.exclude,
            self.options.progress,
            self.access,
            self.ranks,
            self.config.experts,
        )
        sparsities = owl_sparsities(ratios, self.config.parsed_pattern.sparsity, owl.deviation)
        return {
            "method": "owl",
            "lambda": owl.deviation,
            "threshold": owl.threshold,
            "outlier_ratio": ratios,
            "block_sparsity": sparsities,
        }


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in tensors.items()}


def _open_progress(
    folder: Path,
    config: PruneConfig,
    calibration: CalibrationSet,
    model_info: dict[str, Any] | None,
    weights: dict[str, Any],
    dtype: torch.dtype,
    run: RunOptions,
    ranks: Ranks | None,
) -> RunProgress:
    """The run's progress in ``folder``, fingerprinted by what its results depend on; a resume must
    match the fingerprint exactly."""
    fingerprint = {
        "config": config.to_dict(),
        "model": {"source": (model_info or {}).get("location"), **weights},
        "calibration": calibration.describe(),
        "dtype": str(dtype),
        "activation_dtype": str(run.torch_activation_dtype or dtype),
        "processes": ranks.world if ranks else 1,
    }
    return RunProgress(folder, fingerprint, ranks)


def _report(
    model: nn.Module,
    dtype: torch.dtype,
    config: PruneConfig,
    calibration: CalibrationSet,
    result: _Result,
    started: float,
    model_info: dict[str, Any],
    head: HeadRecord | None = None,
) -> PruneReport:
    info = {
        "class": type(model).__name__,
        "model_type": model.config.model_type,
        "dtype": str(dtype).replace("torch.", ""),
        **model_info,
    }
    return PruneReport(
        config=config,
        model=info,
        calibration=calibration.describe(),
        layers=result.layers,
        seconds=time.perf_counter() - started + (result.resumed.seconds if result.resumed else 0.0),
        peak_rss_mb=peak_rss_mb(),
        allocation=result.allocation,
        resumed_at_block=result.resumed.next_block if result.resumed else None,
        peak_cuda_mb=peak_cuda_mb(),
        head=head,
    )


__all__ = [
    "Evaluation",
    "build_calibration",
    "effective_seqlen",
    "perplexity_meter",
    "prune",
    "prune_to_folder",
]
