"""The orchestrator: prune and prune_to_folder, shared by the CLI and the Python API."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eggs_ptp import EggsConfig, Evaluation, PruneConfig, RunOptions, prune, prune_to_folder
from eggs_ptp.walk.resume import ResumeError, completed_blocks

from helpers import QUIET, Killed, assert_same_weights, kill_after_block, prune_args, run_cli

LOW_MEMORY = RunOptions(low_memory=True, device="cpu", progress=False)


def test_resume_through_the_api_refuses_a_changed_seed(model_dir, calib, tmp_path, monkeypatch):
    config = PruneConfig(method="wanda", nsamples=4, seqlen=16, calib=str(calib))
    with monkeypatch.context() as patch:
        kill_after_block(patch, 0)
        with pytest.raises(Killed):
            prune_to_folder(model_dir, tmp_path / "o", config, LOW_MEMORY)
    with pytest.raises(ResumeError, match="config.seed was 0, now 1"):
        prune_to_folder(model_dir, tmp_path / "o", config.replace(seed=1), LOW_MEMORY.replace(resume=True))


def test_prune_to_folder_measures_and_writes_what_the_cli_would(model_dir, calib, tmp_path):
    config = PruneConfig(method=EggsConfig(tile_height=4), nsamples=4, seqlen=16, calib=str(calib))
    report = prune_to_folder(
        model_dir,
        tmp_path / "o",
        config,
        RunOptions(device="cpu", progress=False),
        evaluation=Evaluation(text=str(calib), windows=3, seqlen=16),
    )
    recorded = json.loads((tmp_path / "o" / "sparsity.json").read_text())
    assert recorded["config"] == config.to_dict() and recorded["schema_version"] == 2
    scores = recorded["evaluation"]["perplexity"]
    assert scores["dense"]["windows"] == scores["pruned"]["windows"] == 3
    assert scores["pruned"]["perplexity"] == report.evaluation["perplexity"]["pruned"]["perplexity"]
    assert not (tmp_path / ".o.progress").exists()  # progress is dropped once the output is in place
    via_cli = run_cli(*prune_args(model_dir, tmp_path / "cli", calib, "--method", "eggs", "--tile-height", 4))
    assert via_cli.exit_code == 0, via_cli.output
    assert_same_weights(tmp_path / "o", tmp_path / "cli")


def test_prune_in_memory_keeps_progress_for_resume_in_progress_dir(model_dir, calib, tmp_path, monkeypatch):
    config = PruneConfig(method="sparsegpt", nsamples=4, seqlen=16, calib=str(calib))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference, _ = prune(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, config, QUIET)
    options = QUIET.replace(progress_dir=tmp_path / "progress")
    with monkeypatch.context() as patch:
        kill_after_block(patch, 1)
        with pytest.raises(Killed):
            prune(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, config, options)
    assert completed_blocks(tmp_path / "progress") == 2
    resumed, report = prune(
        AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, config, options.replace(resume=True)
    )
    assert report.resumed_at_block == 2 and not (tmp_path / "progress").exists()
    for (name, left), right in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(left, right), name


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RunOptions(low_memory=True, device_map="auto"), "cannot use --device-map"),
        (lambda: RunOptions(dtype="float8"), "unknown dtype 'float8'"),
        (lambda: RunOptions(activation_dtype="int8"), "unknown dtype 'int8'"),
    ],
)
def test_run_options_name_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_resume_in_memory_needs_a_progress_folder(model_dir):
    with pytest.raises(ValueError, match="give RunOptions\\(progress_dir=...\\)"):
        prune(AutoModelForCausalLM.from_pretrained(model_dir), None, PruneConfig(), QUIET.replace(resume=True))


def test_low_memory_cannot_evaluate(model_dir, tmp_path):
    with pytest.raises(ValueError, match="evaluate the output with eggs-ptp eval"):
        prune_to_folder(model_dir, tmp_path / "o", PruneConfig(), LOW_MEMORY, evaluation=Evaluation())
