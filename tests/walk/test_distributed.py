"""Calibration shared by gloo processes under torchrun equals one process bit for bit, also when killed and resumed."""

import json
import os

import pytest
import torch

from eggs_ptp.walk.resume import completed_blocks

from helpers import assert_same_weights, prune_args, python, run_cli


@pytest.mark.parametrize(
    "method, extra",
    [
        ("wanda", ()),
        ("eggs", ()),
        ("sparsegpt", ()),
        ("ria", ("--low-memory", "--permute")),
        ("sparsegpt", ("--target", "model", "--sequential")),
    ],
)
def test_two_gloo_processes_equal_one_bit_for_bit(model_dir, calib, tmp_path, method, extra):
    single, double = tmp_path / "single", tmp_path / "double"
    # torchrun gives each rank OMP_NUM_THREADS threads (1 unless set); the single run gets as many,
    # since SparseGPT's Cholesky factor, unlike the calibration statistics, depends on the count.
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        result = run_cli(*prune_args(model_dir, single, calib, "--method", method, "--nsamples", 6, *extra))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    finished = python(
        "-m",
        "eggs_ptp",
        *prune_args(model_dir, double, calib, "--method", method, "--nsamples", 6, "--nproc", 2, *extra),
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("saved to") == 1  # only rank 0 writes and reports
    assert_same_weights(single, double)
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
