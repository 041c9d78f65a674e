"""lm-evaluation-harness on in-memory models: the offline task end to end, and one-line failures."""

import json
import sys

import datasets
import huggingface_hub
import pytest
from click.testing import CliRunner
from lm_eval.tasks import TaskManager

from eggs_ptp.cli import main
from eggs_ptp.eval import harness
from eggs_ptp.eval.harness import OFFLINE_TASK, evaluate_tasks, load_tasks
from eggs_ptp.formats.compact import pack_checkpoint

from helpers import one_error_line, pruned_checkpoint, tiny_model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """Only the shipped task plus a hub task that cannot be fetched: no ~10 s scan of the harness's
    own YAMLs, and no network (the hub is in offline mode, as with HF_HUB_OFFLINE=1)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "hub_only.yaml").write_text(
        "task: hub_only\ndataset_path: eggs-ptp-tests/no-such-dataset\noutput_type: loglikelihood\n"
        "test_split: test\ndoc_to_text: '{{text}}'\ndoc_to_target: '{{text}}'\n"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(
        harness,
        "_task_manager",
        lambda tasks: TaskManager(include_path=[str(harness.TASKS_DIR), str(folder)], include_defaults=False),
    )


def test_offline_task_scores_a_tiny_model(tokenizer):
    tasks = load_tasks([OFFLINE_TASK])
    model = tiny_model("llama")
    first = evaluate_tasks(model, tokenizer, tasks, limit=12, batch_size=4, progress=False)
    scores = first["tasks"][OFFLINE_TASK]
    assert 0.0 <= scores["acc"] <= 1.0 and scores["loglikelihood"] < 0
    assert scores["samples"] == 12 and scores["n_shot"] == 0
    assert first["settings"]["harness"].startswith("lm-eval ") and first["settings"]["limit"] == 12
    # the loaded task set is reusable, and scoring is deterministic
    assert evaluate_tasks(model, tokenizer, tasks, limit=12, batch_size=4, progress=False)["tasks"] == first["tasks"]


def test_eval_tasks_on_dense_pruned_and_compact_checkpoints(tmp_path, tokenizer, tiny_llama_dir):
    dense = run("eval", tiny_llama_dir, "--tasks", OFFLINE_TASK, "--limit", 6, "--json", "-q")
    assert dense.exit_code == 0, dense.output
    assert f"{OFFLINE_TASK}  acc " in dense.stdout and "(6 documents, 0-shot)" in dense.stdout
    folder, _ = pruned_checkpoint(tmp_path / "pruned", tokenizer=tokenizer)
    pack_checkpoint(folder, tmp_path / "compact")
    scores = []
    for checkpoint in (folder, tmp_path / "compact"):
        result = run("eval", checkpoint, "--tasks", OFFLINE_TASK, "--limit", 6, "--json", "-q")
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout.splitlines()[-1])["tasks"][OFFLINE_TASK])
    assert scores[0] == scores[1]  # the compact checkpoint decodes to the same model, bit for bit
    assert scores[0] != json.loads(dense.stdout.splitlines()[-1])["tasks"][OFFLINE_TASK]


def test_perplexity_eval_reads_compact_checkpoints(tmp_path, tokenizer, text_file):
    folder, _ = pruned_checkpoint(tmp_path / "pruned", tokenizer=tokenizer)
    pack_checkpoint(folder, tmp_path / "compact")
    ppl = [
        json.loads(
            run("eval", f, "--text", text_file, "--seqlen", 16, "--windows", 2, "--json", "-q").stdout.splitlines()[-1]
        )["perplexity"]
        for f in (folder, tmp_path / "compact")
    ]
    assert ppl[0] == ppl[1]


def test_unknown_task_is_one_line_with_suggestions(local_index, tiny_llama_dir):
    line = one_error_line(run("eval", tiny_llama_dir, "--tasks", "eggs_wiki_lastwrd", "-q"))
    assert "unknown harness task 'eggs_wiki_lastwrd'" in line and f"did you mean {OFFLINE_TASK}" in line


def test_unfetchable_dataset_is_one_line(local_index, tiny_llama_dir):
    line = one_error_line(run("eval", tiny_llama_dir, "--tasks", f"{OFFLINE_TASK},hub_only", "-q"))
    assert "harness task 'hub_only' cannot fetch its dataset" in line and OFFLINE_TASK in line


def test_missing_harness_says_how_to_install(monkeypatch, tiny_llama_dir):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    line = one_error_line(run("eval", tiny_llama_dir, "--tasks", OFFLINE_TASK, "-q"))
    assert "pip install 'eggs-ptp[eval]'" in line
