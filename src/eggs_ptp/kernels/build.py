"""Compile the CPU kernel (``nm_linear.c``) into a shared library, once per source version.

The library lives in ``<eggs-ptp cache>/kernels/nm_linear-<hash>.so``, keyed by the source, the
flags and the machine type, so an edited kernel is rebuilt and two versions never collide. It is
compiled into a temporary file beside the target and renamed into place, so a crash or a second
process building at the same time never leaves a half-written library. ``scripts/setup.sh`` runs
``python -m eggs_ptp.kernels`` at install; otherwise the first sparse layer builds it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("nm_linear.c")
FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared")
OPENMP_FLAG = "-fopenmp"
_COMPILERS = ("gcc", "cc", "clang")


class KernelBuildError(RuntimeError):
    """The kernel could not be compiled; the message says why in one line."""


def kernel_cache() -> Path:
    """``<eggs-ptp cache>/kernels`` (``$EGGS_PTP_CACHE`` moves the cache)."""
    from eggs_ptp.models.loading import cache_dir

    return cache_dir() / "kernels"


def find_compiler() -> str | None:
    """``$CC`` when set (and found), else the first of gcc, cc, clang on the PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next((path for path in map(shutil.which, _COMPILERS) if path), None)


def library_path(cache: Path | None = None) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + platform.machine().encode())
    return Path(cache or kernel_cache()) / f"nm_linear-{digest.hexdigest()[:16]}.so"


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Run the compiler; return None on success, else the first line of its complaint."""
    try:
        done = subprocess.run(
            [compiler, *flags, "-o", str(target), str(SOURCE)], capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines() or ["no output"]
    return lines[0].strip()


def build(cache: Path | None = None, compiler: str | None = None) -> Path:
    """The path of the compiled library, compiling it first when it is not cached yet.

    Tries with OpenMP, then without (one thread) for compilers that lack it.
    """
    target = library_path(cache)
    if target.exists():
        return target
    compiler = compiler or find_compiler()
    if compiler is None:
        raise KernelBuildError("no C compiler found (install gcc, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        failure = _compile(compiler, (*FLAGS, OPENMP_FLAG), Path(temporary))
        if failure is not None:
            failure = _compile(compiler, FLAGS, Path(temporary))
        if failure is not None:
            raise KernelBuildError(f"{compiler} could not compile {SOURCE.name}: {failure}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def main() -> int:
    """Build (or find) the library and say which code path this CPU will run."""
    from eggs_ptp.kernels.cpu import kernel_info

    try:
        path = build()
    except KernelBuildError as error:
        print(
            f"eggs-ptp: CPU kernel not built: {error}; sparse layers will use the slower pure-torch path",
            file=sys.stderr,
        )
        return 1
    info = kernel_info()
    print(f"eggs-ptp CPU kernel: {path} ({info['isa']}, {'OpenMP' if info['openmp'] else 'one thread'})")
    return 0


__all__ = [
    "FLAGS",
    "OPENMP_FLAG",
    "SOURCE",
    "KernelBuildError",
    "build",
    "find_compiler",
    "kernel_cache",
    "library_path",
    "main",
]
