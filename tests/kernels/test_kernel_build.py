"""Building the CPU kernel: cached by source hash, written atomically, one-line failures."""

import os
import subprocess
import sys

import pytest

from eggs_ptp.kernels.build import KernelBuildError, build, library_path


def test_build_once_then_reuse(tmp_path):
    path = build(tmp_path)
    assert path == library_path(tmp_path) and path.name.startswith("nm_linear-") and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert build(tmp_path) == path and path.stat().st_mtime_ns == stamp  # not compiled again
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_missing_and_failing_compilers_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(KernelBuildError, match=r"^no C compiler found \(install gcc, or set CC\)$"):
        build(tmp_path)
    with pytest.raises(KernelBuildError, match=r"^.*false could not compile nm_linear\.c: no output$"):
        build(tmp_path, compiler="false")  # exits 1 without a word
    assert not list(tmp_path.iterdir())


def test_the_install_step_reports_the_code_path(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "eggs_ptp.kernels"],
        capture_output=True,
        text=True,
        env={**os.environ, "EGGS_PTP_CACHE": str(tmp_path)},
        timeout=300,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert done.stdout.startswith(f"eggs-ptp CPU kernel: {library_path(tmp_path / 'kernels')} (")
    assert list((tmp_path / "kernels").glob("nm_linear-*.so"))
