"""Failures a user can cause or meet, said in one line that names the file.

Everything here is a :class:`ValueError` subclass, the package's convention for a user-facing
error: the CLI prints its message as one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError


class FileError(ValueError):
    """A file or folder could not be read or written; the message names it and says what to do."""


# What to do about the operating-system errors a run can meet, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space (or choose another folder) and rerun",
    errno.EDQUOT: "the disk quota is exhausted; free some space (or choose another folder) and rerun",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to, or fix its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder, not a file",
    errno.EBUSY: "it is in use (the current folder, or a mount point); choose another path",
    errno.ENOENT: "it does not exist",
    errno.ENAMETOOLONG: "the path is too long",
}


def describe_os_error(error: OSError) -> str:
    """One line for an ``OSError``: the path it concerns, what happened and what to do."""
    advice = _OS_ADVICE.get(error.errno or -1, error.strerror or str(error))
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {advice}" if paths else f"{advice} ({error})"


def describe_read_error(path: Path | str, error: BaseException) -> str | None:
    """One line for a failure to read ``path``; None when ``error`` is not a reading failure."""
    if isinstance(error, SafetensorError):
        return f"{path} is not a readable safetensors file ({error}); it may be truncated: copy or download it again"
    if isinstance(error, pickle.UnpicklingError):
        return (
            f"{path}: a pickle checkpoint there holds more than tensors and was refused "
            f"({str(error).split('.')[0]}); load only checkpoints you trust, preferably as safetensors"
        )
    if isinstance(error, UnicodeDecodeError):
        return f"{path} is not UTF-8 text (invalid byte at offset {error.start}); save it as UTF-8"
    if isinstance(error, json.JSONDecodeError):
        return f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
    if isinstance(error, OSError):
        return describe_os_error(error if error.filename else OSError(error.errno, error.strerror, str(path)))
    return None


_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Report a safetensors write that the operating system refused (a full disk, say) as the
    ``OSError`` it is, naming ``path``: safetensors reports it as its own error type."""
    try:
        yield
    except SafetensorError as error:
        code = _OS_ERROR_CODE.search(str(error))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from error


@contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Turn a failure to read ``path`` (truncated safetensors, refused pickle, bad UTF-8 or JSON, an
    OS error) into one :class:`FileError` that names it; other errors pass through."""
    try:
        yield
    except FileError:
        raise
    except (SafetensorError, pickle.UnpicklingError, ValueError, OSError) as error:
        message = describe_read_error(path, error)
        if message is None:
            raise
        raise FileError(message) from error


def read_json(path: Path | str) -> Any:
    """The JSON value in ``path``; a missing, non-UTF-8 or malformed file is a :class:`FileError` naming it."""
    with reading(path):
        return json.loads(Path(path).read_text(encoding="utf-8"))


def read_text(path: Path | str) -> str:
    """The UTF-8 text in ``path``, or a :class:`FileError` naming it."""
    with reading(path):
        return Path(path).read_text(encoding="utf-8")


__all__ = ["FileError", "describe_os_error", "describe_read_error", "read_json", "read_text", "reading", "writing"]
