"""A full disk and a read-only one: one line naming the path, nothing complete-looking, progress
kept for ``--resume`` where blocks finished. Real small tmpfs mounts where the machine allows
``mount`` (root in a container that permits it); otherwise those tests skip, and the injected
ENOSPC below still runs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import assert_same_weights, one_error_line, run_cli


def prune_args(model, out, calib, *extra):
    return ["prune", model, "-o", out, "--nsamples", 2, "--seqlen", 16, "--calib", calib, "-q", *extra]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial"))


@pytest.fixture
def mount_tmpfs():
    """Mount a tmpfs of the given options; unmounted afterwards. Skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = Path("/tmp") / f"eggs-ptp-tmpfs-{uuid.uuid4().hex[:8]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            point.rmdir()
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
        mounted.append(point)
        return point

    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and the mount command")
    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)
        point.rmdir()


def test_a_full_disk_says_so_and_resume_finishes(tiny_llama_dir, text_file, tmp_path, mount_tmpfs):
    reference = tmp_path / "reference"
    assert run_cli(*prune_args(tiny_llama_dir, reference, text_file)).exit_code == 0
    weights = (reference / "model.safetensors").stat().st_size
    disk = mount_tmpfs(f"size={weights * 3 // 2}")  # room for the progress, not for the checkpoint too
    out = disk / "out"
    line = one_error_line(run_cli(*prune_args(tiny_llama_dir, out, text_file)))
    assert "no space left on the device" in line
    assert not out.exists() and leftovers(out) == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    if "--resume" in line:  # some blocks finished before the disk filled: continue from them
        result = run_cli(*prune_args(tiny_llama_dir, out, text_file, "--resume"))
    else:
        result = run_cli(*prune_args(tiny_llama_dir, out, text_file))
    assert result.exit_code == 0, result.output
    assert_same_weights(out, reference)
    assert sorted(p.name for p in disk.iterdir()) == ["out"]


def test_a_read_only_disk_is_refused_before_any_work(tiny_llama_dir, text_file, mount_tmpfs):
    disk = mount_tmpfs("ro,size=1m")
    line = one_error_line(run_cli(*prune_args(tiny_llama_dir, disk / "a" / "b", text_file)))
    assert f"{disk} is not writable" in line
    assert list(disk.iterdir()) == []


def test_an_injected_full_disk_during_the_save_keeps_the_progress(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    """Without a mount: the final save fails with ENOSPC after every block finished."""
    import transformers

    def no_space(self, folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.safetensors"))

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(transformers.PreTrainedModel, "save_pretrained", no_space)
        line = one_error_line(run_cli(*prune_args(tiny_llama_dir, out, text_file)))
    assert "no space left on the device" in line and "the 2 finished blocks are kept" in line and "--resume" in line
    assert not out.exists() and leftovers(out) == []
    result = run_cli(*prune_args(tiny_llama_dir, out, text_file, "--resume"))
    assert result.exit_code == 0 and "resumed at block 2" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
