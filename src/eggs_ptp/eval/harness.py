"""Zero-shot tasks through EleutherAI's lm-evaluation-harness, on a model object already in memory.

The harness (``pip install 'eggs-ptp[eval]'``) wraps the model with its own ``HFLM`` class, so a
dense, pruned or compact-loaded model is scored exactly as the field scores checkpoints, with no
fork and no patch. Its task index is extended with this package's offline task
(``eggs_wiki_lastword``, :mod:`eggs_ptp.eval.lastword`) through ``TaskManager(include_path=...)``.
``HFLM`` gets ``add_bos_token`` from the tokenizer's sequence start, so a request begins as eggs-ptp's
perplexity windows do: with the BOS of a tokenizer that adds one, and with no appended EOS otherwise.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import nn

from eggs_ptp.data import SequenceStart
from eggs_ptp.eval.lastword import TASK_NAME as OFFLINE_TASK

TASKS_DIR = Path(__file__).parent / "tasks"
INSTALL = "pip install 'eggs-ptp[eval]'"
# Standard errors of mean metrics are closed-form; only ratio metrics (perplexity, F1) bootstrap.
BOOTSTRAP_ITERS = 1000


class HarnessError(ValueError):
    """The harness is missing, a task is unknown, or its data cannot be fetched; one line, with advice."""


def require_harness() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessError(f"zero-shot tasks need lm-evaluation-harness, which is not installed; run: {INSTALL}")


def quiet_harness_logs() -> None:
    """For command lines: keep the harness's per-request warnings and the hub's retry messages off
    stderr unless ``-v`` set logging to INFO, so a failure stays one line."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        for name in ("lm_eval", "datasets", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _offline_only(tasks: Sequence[str]) -> bool:
    """True when every task ships with this package (indexing the harness's own takes ~10 s)."""
    return all(name == OFFLINE_TASK for name in tasks)


def _task_manager(tasks: Sequence[str]) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=not _offline_only(tasks))


@dataclass(frozen=True)
class TaskSet:
    """Harness Task/Group objects with their data loaded, and the index they came from (which
    ``simple_evaluate`` would otherwise rebuild from every YAML the harness ships, ~10 s)."""

    objects: tuple[Any, ...]
    manager: Any


def load_tasks(tasks: Sequence[str]) -> TaskSet:
    """Load harness ``tasks`` by name, fetching their data.

    Raises:
        HarnessError: a name is unknown, or its dataset cannot be fetched (offline, not cached).
    """
    require_harness()
    if not tasks:
        raise HarnessError(f"no task given; name harness tasks such as boolq,hellaswag or the offline {OFFLINE_TASK}")
    manager = _task_manager(tasks)
    loaded: list[Any] = []
    for name in tasks:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise HarnessError(
                f"unknown harness task {name!r}; {hint}`lm_eval ls tasks` lists the "
                f"{len(manager.all_tasks)} known names, and {OFFLINE_TASK} runs offline"
            )
        try:
            found = manager.load([name])
        except OSError as error:  # datasets/huggingface_hub report "cannot fetch" as OSError subclasses
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise HarnessError(
                f"harness task {name!r} cannot fetch its dataset ({reason}): the Hugging Face hub is "
                f"unreachable and the dataset is not cached; run it once with hub access to cache it, "
                f"or use the offline task {OFFLINE_TASK}"
            ) from error
        loaded.extend([found["groups"][name]] if name in found["groups"] else found["tasks"].values())
    return TaskSet(tuple(loaded), manager)


def _lm_class(progress: bool) -> type:
    """The harness's ``HFLM``, or with ``progress=False`` a subclass with its per-request bars off
    (for callers that draw their own)."""
    from lm_eval.models.huggingface import HFLM

    if progress:
        return HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def _metrics(block: dict[str, Any]) -> dict[str, Any]:
    """``{"acc,none": x, "acc_stderr,none": s}`` -> ``{"acc": x, "acc_stderr": s}``."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        if "," not in key:
            continue
        metric, filtered = key.split(",", 1)
        out[metric if filtered == "none" else key] = None if value == "N/A" else value
    return out


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str] | TaskSet,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` zero-shot on harness ``tasks`` (names, or a :func:`load_tasks` set to reuse).

    Args:
        limit: score only the first ``limit`` documents of each task (quick checks; reported).
        batch_size: requests per forward pass; the harness sorts them by length, so padding is small.

    Returns:
        ``{"tasks": {name: {metric: value, ..., "samples": n, "n_shot": k, "version": v}},
        "groups": {...}, "settings": {...}}``; settings name the harness version, batch size,
        limit, the context length the harness used (longer inputs lose tokens on the left) and how
        requests start (``add_bos_token``, ``sequence_start``).
    """
    from lm_eval import simple_evaluate

    task_set = tasks if isinstance(tasks, TaskSet) else load_tasks(list(tasks))
    start = SequenceStart.of(tokenizer)
    # True: the tokenizer's special tokens, its BOS among them; False: none, not even an appended EOS.
    lm = _lm_class(progress)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=len(start) > 0)
    was_training = model.training
    # The harness draws a per-task "building contexts" bar that has no switch; without progress its
    # stderr goes to a buffer (bars drawn by the caller keep their own stream, logging keeps its).
    hidden = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    try:
        with hidden:
            output = simple_evaluate(
                model=lm,
                tasks=list(task_set.objects),
                task_manager=task_set.manager,
                limit=limit,
                log_samples=False,
                bootstrap_iters=BOOTSTRAP_ITERS,
            )
    finally:
        model.train(was_training)
    scores = {
        name: {
            **_metrics(output["results"][name]),
            "samples": counts["effective"],
            "n_shot": output["n-shot"].get(name),
            "version": output["versions"].get(name),
        }
        for name, counts in output["n-samples"].items()
    }
    return {
        "tasks": scores,
        "groups": {name: _metrics(block) for name, block in output.get("groups", {}).items()},
        "settings": {
            "harness": f"lm-eval {metadata.version('lm_eval')}",
            "batch_size": batch_size,
            "limit": limit,
            "max_length": lm.max_length,
            "bootstrap_iters": BOOTSTRAP_ITERS,
            "add_bos_token": lm.add_bos_token,
            "sequence_start": list(start.tokens),
        },
    }


__all__ = [
    "INSTALL",
    "OFFLINE_TASK",
    "TASKS_DIR",
    "HarnessError",
    "TaskSet",
    "evaluate_tasks",
    "load_tasks",
    "quiet_harness_logs",
    "require_harness",
]
