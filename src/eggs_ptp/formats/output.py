"""Claiming an output folder before any work: never over the input or the working folder, one
writer at a time, and nothing a dead writer left behind.

The lock is ``.OUT.lock`` beside ``OUT``, an ``flock`` held by the writing process (via
``filelock``) from before its progress folder is touched until its output is renamed into place.
The kernel drops the lock when its holder dies, so a lock left by a killed run is taken over
without any staleness guess. The file records the holder (PID, host, start time, command) so a
refused second run can say who is writing; the holder removes it on release.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout


class OutputError(ValueError):
    """The output cannot be written where asked; the message says why and what to do."""


class OutputExistsError(OutputError):
    """The output folder exists and holds files, and overwriting was not asked for."""


class OutputLockedError(OutputError):
    """Another live process is writing the same output."""


class _LockReplaced(Exception):
    """The lock was won on a file its holder had just removed; another run may hold the new one."""


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_target(out: Path, overwrite: bool, inputs: Sequence[Path | str] = ()) -> None:
    """Fail before any work if writing ``out`` would lose data or cannot succeed.

    Refuses an output that is, contains or lies inside one of the ``inputs`` folders, or that is
    (or contains) the current working folder; a file where a folder is needed, at ``out`` or at
    any of its missing parents; an unwritable parent; and a non-empty ``out`` without ``overwrite``.
    Symlinks are resolved. Nothing is created.
    """
    out = Path(out)
    target = out.resolve()
    if _is_within(Path.cwd().resolve(), target):
        raise OutputError(f"output {out} is the current folder or contains it; give a new folder for the result")
    for source in inputs:
        folder = Path(source).resolve()
        if folder.is_dir() and (_is_within(target, folder) or _is_within(folder, target)):
            relation = "is" if target == folder else "is inside" if _is_within(target, folder) else "contains"
            raise OutputError(f"output {out} {relation} the input {source}; write the result to another folder")
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"output {out} is a file; give a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create {out}: {ancestor} is not writable; choose another output folder")


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.resolve().parent / f".{out.name}.lock"


def _holder(path: Path) -> str:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
        return f"process {owner['pid']} on {owner['host']} (started at {owner['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _create_parents(folder: Path) -> list[Path]:
    """Create ``folder``'s missing parents; return those created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return missing


def _remove_leftovers(out: Path) -> None:
    """Staging and retired folders of writers that died (any live writer would hold the lock)."""
    for pattern in (f".{out.name}.partial-*", f".{out.name}.replaced-*"):
        for stale in out.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


# Outputs this process holds: a claim inside a claim of the same output (save_pruned within
# prune_to_folder) is the same claim.
_HELD: set[Path] = set()


@contextmanager
def claim_output(out: Path) -> Iterator[None]:
    """Hold the output ``out`` for this process while the body writes it.

    Creates ``out``'s missing parents (removed again if the body fails and they are still empty),
    takes the lock, and removes what earlier, dead writers left beside ``out``. Re-entrant.

    Raises:
        OutputLockedError: a live process holds the lock; the message names it.
    """
    out = Path(out).resolve()
    if out in _HELD:
        yield
        return
    created = _create_parents(out.parent)
    path = lock_path(out)

    def record_owner(descriptor: int) -> None:
        if not path.exists() or os.stat(path).st_ino != os.fstat(descriptor).st_ino:
            raise _LockReplaced
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": sys.argv,
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(owner).encode("utf-8"), 0)

    lock = FileLock(path, blocking=False, is_singleton=False, on_acquired=record_owner)
    for _ in range(3):
        try:
            lock.acquire()
            break
        except _LockReplaced:
            continue
        except Timeout:
            break
    if not lock.is_locked:
        _remove_empty(created)
        raise OutputLockedError(
            f"{out} is being written by {_holder(path)}; wait for it to finish, or write to another folder"
        )
    _HELD.add(out)
    try:
        _remove_leftovers(out)
        yield
    except BaseException:
        _release(lock, path, out)
        _remove_empty(created)
        raise
    _release(lock, path, out)


def _release(lock: FileLock, path: Path, out: Path) -> None:
    _HELD.discard(out)
    path.unlink(missing_ok=True)  # while still held: a later run finds no file, or its own
    lock.release()


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


__all__ = [
    "OutputError",
    "OutputExistsError",
    "OutputLockedError",
    "check_output_target",
    "claim_output",
    "lock_path",
]
