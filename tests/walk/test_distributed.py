"""Calibration shared by gloo processes under torchrun equals one process, also when killed and resumed."""

import json

import pytest
import torch

from eggs_ptp.walk.resume import completed_blocks

from helpers import assert_same_weights, checkpoint_weights, prune_args, python, run_cli


@pytest.mark.parametrize("method, extra", [("wanda", ()), ("sparsegpt", ()), ("ria", ("--low-memory", "--permute"))])
def test_two_gloo_processes_equal_one(model_dir, calib, tmp_path, method, extra):
    single, double = tmp_path / "single", tmp_path / "double"
    assert run_cli(*prune_args(model_dir, single, calib, "--method", method, "--nsamples", 6, *extra)).exit_code == 0
    finished = python(
        "-m",
        "eggs_ptp",
        *prune_args(model_dir, double, calib, "--method", method, "--nsamples", 6, "--nproc", 2, *extra),
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("saved to") == 1  # only rank 0 writes and reports
    left, right = checkpoint_weights(single), checkpoint_weights(double)
    for key in left:
        assert torch.equal(left[key] != 0, right[key] != 0), f"mask of {key}"
        torch.testing.assert_close(left[key], right[key], rtol=2e-2, atol=2e-2, msg=key)
    report = json.loads((double / "sparsity.json").read_text())
    assert report["calibration"]["nsamples"] == 6


KILL_AFTER_BLOCK_1 = """
import os, sys
import eggs_ptp.walk.resume as resume
from eggs_ptp.cli import main

original = resume.RunProgress.save_block

def save_then_die(self, index, *args, **kwargs):
    original(self, index, *args, **kwargs)
    if index == 1:
        os._exit(9)

resume.RunProgress.save_block = save_then_die
sys.argv[0] = "eggs-ptp"
main()
"""


@pytest.mark.slow
def test_two_gloo_processes_resume_where_they_were_killed(model_dir, calib, tmp_path):
    killer = tmp_path / "kill_after_block_1.py"
    killer.write_text(KILL_AFTER_BLOCK_1, encoding="utf-8")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    args = ("--method", "sparsegpt", "--nsamples", 6)

    finished = python("-m", "eggs_ptp", *prune_args(model_dir, reference, calib, *args, "--nproc", 2))
    assert finished.returncode == 0, finished.stderr[-3000:]
    killed = python(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        2,
        killer,
        *prune_args(model_dir, resumed, calib, *args),
    )
    assert killed.returncode != 0 and not resumed.exists()
    progress = tmp_path / ".resumed.progress"
    assert completed_blocks(progress) == 2
    assert sorted(path.name for path in (progress / "inputs-00002").iterdir()) == ["rank-0", "rank-1"]
    finished = python("-m", "eggs_ptp", *prune_args(model_dir, resumed, calib, *args, "--nproc", 2, "--resume"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resumed at block 2" in finished.stdout
    assert_same_weights(reference, resumed)
    assert not progress.exists()
