"""Two real processes writing one output: the second is refused at once, naming the first; a lock
left by a killed writer is taken over; a race never mixes two runs' results."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from fault import FAULT, assert_identical, command, environment, leftovers, run


@pytest.fixture(scope="module")
def setup(tiny_run):
    folder, model, calib = tiny_run
    references = {}
    for seed in ("0", "5"):
        references[seed] = folder / f"reference-{seed}"
        done = run(command(model, references[seed], calib, "--seed", seed))
        assert done.returncode == 0, done.stderr
    return folder, model, calib, references


def test_a_second_writer_is_refused_and_a_dead_writers_lock_taken_over(setup):
    folder, model, calib, references = setup
    out = folder / "shared"
    first = subprocess.Popen(
        [sys.executable, str(FAULT), "block-0", "pause:120", *command(model, out, calib, "--seed", "0")],
        env=environment(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stderr.readline().startswith("paused")  # it holds the lock, block 0 committed
        second = run(command(model, out, calib, "--seed", "5", "--resume", "--overwrite"))
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"is being written by process {first.pid} " in lines[0]
        assert "(started at " in lines[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not out.exists()
    resumed = run(command(model, out, calib, "--seed", "0", "--resume"))  # the stale lock is taken over
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at block 1" in resumed.stdout
    assert_identical(out, references["0"])
    assert leftovers(out) == []


def test_racing_writers_never_mix_their_results(setup):
    folder, model, calib, references = setup
    out = folder / "raced"
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "eggs_ptp", *command(model, out, calib, "--seed", seed, "--resume", "--overwrite")],
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("0", "5")
    ]
    outcomes = [(racer.wait(), racer.stderr.read()) for racer in racers]
    assert any(code == 0 for code, _ in outcomes), outcomes
    for code, stderr in outcomes:
        assert code == 0 or (code == 2 and "is being written by process" in stderr), stderr
    seed = str(json.loads((out / "sparsity.json").read_text())["config"]["seed"])
    assert_identical(out, references[seed])  # the record and the weights come from the same run
    assert run(["verify", str(out)]).returncode == 0
    assert leftovers(out) == []
