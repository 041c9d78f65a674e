"""Writing a file so that readers only ever see the old content or the complete new one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """This process's file-creation mask, read without changing it where ``/proc`` allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the umask."""
    return 0o666 & ~umask()


def share_tree(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes plain ``mkdir``/``open`` would (umask applied):
    ``mkdtemp`` makes folders 0700 and transformers writes weights 0600, unreadable to colleagues."""
    mask = umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) through a temporary file beside ``path`` and an atomic rename.

    The file keeps the mode of the one it replaces, else gets the umask's (``mkstemp`` makes 0600,
    which other users could not read).
    """
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else file_mode()
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that takes a file name (safetensors);
    it replaces ``path`` atomically when the body succeeds and is removed when it fails."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


__all__ = ["atomic_path", "file_mode", "share_tree", "umask", "write_atomic"]
