"""SIGKILL at chosen and at random points of real runs: no complete-looking output ever exists
before the end, and ``--resume`` then gives a checkpoint byte-identical to an uninterrupted run,
with nothing left beside it."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest

from fault import assert_identical, command, environment, leftovers, run


@pytest.fixture(scope="module")
def setup(tiny_run):
    folder, model, calib = tiny_run
    references = {}
    for mode, extra in (("in-memory", ()), ("low-memory", ("--low-memory",))):
        reference = folder / f"reference-{mode}"
        started = time.monotonic()
        done = run(command(model, reference, calib, *extra))
        assert done.returncode == 0, done.stderr
        references[mode] = (reference, extra, time.monotonic() - started)
    return folder, model, calib, references


@pytest.mark.parametrize(
    "mode, point",
    [
        ("in-memory", "calibration"),
        ("in-memory", "block-1"),
        ("in-memory", "save"),
        ("low-memory", "block-0"),
        ("low-memory", "save"),
    ],
)
def test_sigkill_then_resume_is_byte_identical(setup, mode, point):
    folder, model, calib, references = setup
    reference, extra, _ = references[mode]
    out = folder / f"{mode}-{point}"
    killed = run(command(model, out, calib, *extra), fault=(point, "kill"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()  # never a complete-looking folder before the end
    resumed = run(command(model, out, calib, *extra, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(out, reference)
    assert leftovers(out) == []  # progress, staging folder with its full-size file, lock: all gone


@pytest.mark.parametrize("draw", range(2))
def test_sigkill_at_a_random_moment_then_resume_is_byte_identical(setup, draw):
    folder, model, calib, references = setup
    reference, extra, seconds = references["in-memory"]
    out = folder / f"random-{draw}"
    delay = random.Random(draw).uniform(seconds / 2, seconds)  # the later half: past the imports
    process = subprocess.Popen(
        [sys.executable, "-m", "eggs_ptp", *command(model, out, calib, *extra)],
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    whole = out.exists()  # killed after the final rename (or it beat the signal): then it is complete
    if whole:
        assert_identical(out, reference)
    resumed = run(command(model, out, calib, *extra, "--resume", *(("--overwrite",) if whole else ())))
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(out, reference)
    assert leftovers(out) == []
