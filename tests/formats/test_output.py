"""Claiming an output: the checks before any work, the lock, and what a claim cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from eggs_ptp.formats import OutputError, OutputExistsError, OutputLockedError, check_output_target, claim_output
from eggs_ptp.formats.output import lock_path

from helpers import SRC

# A process that holds the claim on argv[1] until killed.
HOLD = """
import sys, time
from eggs_ptp.formats import claim_output
with claim_output(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_claim_held_by_another_process_is_refused_naming_it(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], env={**os.environ, "PYTHONPATH": str(SRC)}, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        owner = json.loads(lock_path(out).read_text())
        assert owner["pid"] == holder.pid and owner["started"]
        with pytest.raises(OutputLockedError, match=rf"is being written by process {holder.pid} on .* \(started at "):
            with claim_output(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_output(out):  # the dead holder's lock is taken over
        with claim_output(out):  # and a claim within a claim of this process is the same claim
            assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()


def test_a_lock_file_without_a_holder_is_taken_over(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text('{"pid": 999999, "host": "gone", "started": "long ago"}')
    with claim_output(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()


def test_a_claim_removes_dead_writers_staging_and_its_own_new_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with claim_output(out):
            assert out.parent.is_dir()
            raise RuntimeError
    assert not (tmp_path / "a").exists()
    (tmp_path / ".x.partial-abc").mkdir()
    (tmp_path / ".x.partial-abc" / "model.safetensors").write_bytes(b"0" * 100)
    (tmp_path / ".x.replaced-12").mkdir()
    (tmp_path / ".xy.partial-keep").mkdir()  # another output's
    with claim_output(tmp_path / "x"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".xy.partial-keep"]


def test_output_checks(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for out, message in [
        (model, "is the input"),
        (model / "x", "is inside the input"),
        (tmp_path, "contains the input"),
    ]:
        with pytest.raises(OutputError, match=message):
            check_output_target(out, overwrite=True, inputs=[model])
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_target(model, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_target(tmp_path / "file", overwrite=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_target(tmp_path / "file" / "a" / "b", overwrite=False)
    monkeypatch.chdir(model)
    with pytest.raises(OutputError, match="current folder"):
        check_output_target(tmp_path, overwrite=True)
    check_output_target(tmp_path / "new" / "deep", overwrite=False)  # fine, and creates nothing
    assert not (tmp_path / "new").exists()
    check_output_target("hub-org/model-id", overwrite=False, inputs=["hub-org/model-id"])  # a hub id is no folder
