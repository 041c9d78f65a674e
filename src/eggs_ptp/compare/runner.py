"""Run a compare grid on one model: the dense baseline and the tokenised texts once, then every cell.

``results.json`` is rewritten atomically after each cell, so an interrupted grid loses at most the
cell in flight, and ``resume=True`` runs only the cells it lacks. Every cell restores the dense
weights, draws its seeded calibration windows from the one tokenised calibration text, prunes,
and is scored on the same held-out windows and task passages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eggs_ptp.api import effective_seqlen, prune
from eggs_ptp.atomic import write_atomic
from eggs_ptp.compare.provenance import hardware, mask_sha256, model_identity, versions
from eggs_ptp.compare.spec import Cell, CompareSpec
from eggs_ptp.config import PruneConfig
from eggs_ptp.data import DEFAULT_TEXT, DataError, SequenceStart, load_text, sample_windows
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.errors import read_json
from eggs_ptp.eval import PeakRss, perplexity
from eggs_ptp.methods import build_method
from eggs_ptp.models import LoadedModel
from eggs_ptp.options import RunOptions

RESULTS_FILE = "results.json"
RECORD_TYPE = "eggs-ptp/compare"
RECORD_VERSION = 1
SAMPLING = "torch.Generator().manual_seed(seed); randint over window starts"


class GridContext:
    """The parts every cell shares, built once: the model's dense weights, both tokenised texts and
    the task data.

    Args:
        snapshot: keep a copy of the dense weights to restore before each cell (needed when more
            than one cell runs on this model object).
    """

    def __init__(self, loaded: LoadedModel, spec: CompareSpec, snapshot: bool = True) -> None:
        self.loaded, self.spec = loaded, spec
        model, tokenizer = loaded.model, loaded.tokenizer
        self.calib_source = load_text(spec.calib, "calibration")
        self.eval_source = load_text(spec.eval_text, "evaluation")
        self.calib_tokens = tokenize(tokenizer, self.calib_source.text)
        self.eval_tokens = tokenize(tokenizer, self.eval_source.text)
        self.start = SequenceStart.of(tokenizer)
        self.seqlen = effective_seqlen(model, tokenizer, spec.seqlen)
        self.eval_seqlen = effective_seqlen(model, tokenizer, spec.eval_seqlen)
        available = self.eval_tokens.numel() // self.start.text_length(self.eval_seqlen)
        self.eval_windows = available if spec.eval_windows is None else spec.eval_windows
        if not 0 < self.eval_windows <= available:
            raise DataError(
                f"the evaluation text holds {available} windows of {self.eval_seqlen} tokens, "
                f"not {self.eval_windows}; lower --eval-windows or --eval-seqlen"
            )
        self.tasks = None
        self.harness: dict[str, Any] | None = None  # the harness's settings, once it has run
        if spec.task:
            from eggs_ptp.eval.harness import OFFLINE_TASK, load_tasks

            self.tasks = load_tasks([OFFLINE_TASK])
        self._dense = {k: v.detach().clone() for k, v in model.state_dict().items()} if snapshot else None

    def provenance(self) -> dict[str, Any]:
        """Calibration, evaluation and task descriptions precise enough to redraw every input."""
        spec = self.spec
        task = None
        if spec.task:
            from eggs_ptp.eval.lastword import describe

            task = {
                **describe(),
                "limit": spec.task_limit,
                "metric": "acc: every token of the word is the "
                "greedy choice; loglikelihood: the word's log-likelihood in nats",
            }
        whole = "the whole source (a file or hub split is used as given)"
        return {
            "calibration": {
                "source": self.calib_source.description,
                "split": "calibration" if spec.calib == DEFAULT_TEXT else whole,
                "nsamples": spec.nsamples,
                "seqlen": self.seqlen,
                "seeds": list(spec.seeds),
                "sampling": SAMPLING,
                "sequence_start": list(self.start.tokens),
                "text_tokens": self.calib_tokens.numel(),
            },
            "evaluation": {
                "text": self.eval_source.description,
                "split": "evaluation" if spec.eval_text == DEFAULT_TEXT else whole,
                "seqlen": self.eval_seqlen,
                "windows": self.eval_windows,
                "tokens": self.eval_windows * self.eval_seqlen,
                "protocol": "first non-overlapping windows, each scored on its own",
                "sequence_start": list(self.start.tokens),
            },
            "task": task,
        }

    def evaluate(self) -> dict[str, Any]:
        """Perplexity (and task scores) of the model as it is now."""
        result = perplexity(
            self.loaded.model,
            self.eval_tokens,
            self.eval_seqlen,
            self.eval_windows,
            self.eval_source.description,
            progress=False,
            start=self.start,
        )
        return {"perplexity": result.perplexity, "mean_loss": result.mean_loss, "task": self.task_scores()}

    def task_scores(self) -> dict[str, Any] | None:
        if self.tasks is None:
            return None
        from eggs_ptp.eval.harness import OFFLINE_TASK, evaluate_tasks

        result = evaluate_tasks(
            self.loaded.model,
            self.loaded.tokenizer,
            self.tasks,
            limit=self.spec.task_limit,
            batch_size=self.spec.batch_size,
            progress=False,
        )
        self.harness = result["settings"]
        return result["tasks"][OFFLINE_TASK]

    def run_cell(
        self, cell: Cell, status: Callable[[str], None] = lambda _: None, config: PruneConfig | None = None
    ) -> dict[str, Any]:
        """Prune a fresh copy of the dense weights as ``cell`` says and score it.

        Args:
            config: the cell's pruning config; built from the spec when None (``--check`` passes
                the recorded one, so later changes of defaults cannot hide a difference).
        """
        model = self.loaded.model
        config = config or self.spec.config(cell)
        if self._dense is not None:
            model.load_state_dict(self._dense)
        calibration = sample_windows(
            self.calib_tokens, self.spec.nsamples, self.seqlen, cell.seed, self.calib_source.description, self.start
        )
        status("pruning")
        with PeakRss() as peak:
            started = time.perf_counter()
            _, report = prune(model, self.loaded.tokenizer, config, RunOptions(progress=False), calibration=calibration)
            seconds = time.perf_counter() - started
        status("perplexity" + (" and task" if self.tasks is not None else ""))
        scores = self.evaluate()
        summary = report.summary()
        return {
            "key": cell.key,
            "method": cell.method,
            "pattern": cell.pattern,
            "seed": cell.seed,
            **scores,
            "prune_seconds": seconds,
            "peak_rss_mb": peak.mb,
            "kept_fraction": summary["kept_fraction"],
            "mean_recon_error": summary["mean_recon_error"],
            "pruned_layers": summary["pruned_layers"],
            "mask_sha256": mask_sha256(model, report.pruned_layers),
            "config": config.to_dict(),
            "stages": build_method(config.method, config.parsed_pattern).describe(),
        }


def _session(context: GridContext, command: str | None) -> dict[str, Any]:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "versions": versions(),
        "hardware": hardware(next(context.loaded.model.parameters()).device),
    }


def read_results(path: Path) -> dict[str, Any]:
    """A ``results.json`` written by compare, or a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give the results.json of a compare run")
    record = read_json(path)
    if not isinstance(record, dict) or record.get("type") != RECORD_TYPE:
        raise ValueError(f"{path} is not a compare results file (no type {RECORD_TYPE!r})")
    if record.get("schema_version") != RECORD_VERSION:
        raise ValueError(
            f"{path} has schema version {record.get('schema_version')}, this eggs-ptp reads {RECORD_VERSION}"
        )
    return record


def write_results(path: Path, record: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(record, indent=2) + "\n")


def existing_record(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The record to continue, or None to start afresh; refuses to clobber anything unasked."""
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; give a folder path")
    if not out.is_dir() or not any(out.iterdir()) or overwrite:
        return None
    if not resume:
        raise ValueError(
            f"output folder {out} exists and is not empty; pass --resume to continue its grid "
            "or --overwrite to start over"
        )
    return read_results(out / RESULTS_FILE)


def check_settings(record: dict[str, Any], spec: CompareSpec, out: Path) -> None:
    """Refuse to resume a grid whose shared settings (all but the grid axes) differ from ``spec``."""
    recorded = CompareSpec.from_dict(record["settings"]).shared()
    for name, value in spec.shared().items():
        if recorded.get(name) != value:
            raise ValueError(
                f"{out / RESULTS_FILE} was run with {name}={recorded.get(name)!r}, not {value!r}; "
                "resume with the same settings or use another output folder"
            )


def check_sequence_start(record: dict[str, Any], start: SequenceStart, path: Path) -> None:
    """Refuse to resume or re-run the grid of the results file ``path`` when its windows began otherwise
    than ``start`` (the tokenizer changed); a record from before windows had a sequence start began with none."""
    for part in ("calibration", "evaluation"):
        recorded = record[part].get("sequence_start", [])
        if recorded != list(start.tokens):
            raise ValueError(
                f"{path} has {part} windows starting with {recorded}, but this tokenizer starts a sequence "
                f"with {list(start.tokens)}; use the tokenizer it was run with"
            )


def _check_resumable(
    record: dict[str, Any], spec: CompareSpec, identity: dict[str, Any], start: SequenceStart, out: Path
) -> None:
    check_settings(record, spec, out)
    check_sequence_start(record, start, out / RESULTS_FILE)
    if record["model"]["weights_sha256"] != identity["weights_sha256"]:
        raise ValueError(
            f"{out / RESULTS_FILE} was computed on other weights ({record['model']['id']}, sha256 "
            f"{record['model']['weights_sha256'][:12]}), not these; use another output folder"
        )


def _merged_spec(record: dict[str, Any], spec: CompareSpec) -> CompareSpec:
    """The recorded grid extended by this run's methods, patterns and seeds (order kept)."""
    old = CompareSpec.from_dict(record["settings"])
    return replace(
        spec, methods=old.methods + spec.methods, patterns=old.patterns + spec.patterns, seeds=old.seeds + spec.seeds
    )


def _seed_independent_twin(rows: list[dict[str, Any]], cell: Cell, spec: CompareSpec) -> dict[str, Any] | None:
    """A finished row ``cell`` would reproduce exactly: same method and pattern, when the method
    reads no calibration (magnitude), so that the seed changes nothing."""
    config = spec.config(cell)
    if build_method(config.method, config.parsed_pattern).needs_calibration:
        return None
    return next(
        (
            row
            for row in rows
            if row["method"] == cell.method and row["pattern"] == cell.pattern and "same_as" not in row
        ),
        None,
    )


def run_compare(
    loaded: LoadedModel,
    spec: CompareSpec,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or finish) the grid into ``out`` and write its report; returns the results record.

    Args:
        resume: continue ``out/results.json``; only its missing cells run. Settings other than the
            grid axes must match, and so must the model's weights.
        overwrite: start over in a non-empty ``out`` (its report files are replaced).
        command: the command line, recorded for reproduction.
    """
    from eggs_ptp.compare.render import write_report

    out = Path(out)
    record = existing_record(out, resume, overwrite)
    identity = model_identity(loaded)
    if record is not None:
        _check_resumable(record, spec, identity, SequenceStart.of(loaded.tokenizer), out)
    done = {row["key"] for row in record["cells"]} if record else set()
    todo = [cell for cell in spec.cells() if cell.key not in done]
    context = GridContext(loaded, spec, snapshot=len(todo) > 1)
    session = _session(context, command)
    if record is None:
        record = {
            "type": RECORD_TYPE,
            "schema_version": RECORD_VERSION,
            "model": identity,
            "settings": spec.to_dict(),
            **context.provenance(),
            "sessions": [],
            "dense": None,
            "cells": [],
        }
    else:
        record["settings"] = _merged_spec(record, spec).to_dict()
        record["calibration"]["seeds"] = record["settings"]["seeds"]
    record["sessions"].append(session)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    grid = tqdm(
        total=len(spec.cells()),
        initial=len(spec.cells()) - len(todo),
        desc="compare",
        unit="cell",
        disable=not progress,
    )
    try:
        if record["dense"] is None:
            grid.set_postfix_str("dense baseline")
            record["dense"] = context.evaluate()
            if record["task"] is not None:
                record["task"]["harness"] = context.harness
            write_results(path, record)
        for cell in todo:
            twin = _seed_independent_twin(record["cells"], cell, spec)
            if twin:  # a calibration-free method prunes the same at every seed: score it once
                row = {**twin, "key": cell.key, "seed": cell.seed, "same_as": twin["key"]}
            else:
                row = context.run_cell(cell, lambda stage, key=cell.key: grid.set_postfix_str(f"{key}: {stage}"))
            row["session"] = len(record["sessions"]) - 1
            record["cells"].append(row)
            write_results(path, record)
            grid.update()
        grid.set_postfix_str("report")
        write_report(record, out)
    finally:
        grid.close()
    return record


__all__ = [
    "RECORD_TYPE",
    "RECORD_VERSION",
    "RESULTS_FILE",
    "SAMPLING",
    "GridContext",
    "check_sequence_start",
    "check_settings",
    "existing_record",
    "read_results",
    "run_compare",
    "write_results",
]
