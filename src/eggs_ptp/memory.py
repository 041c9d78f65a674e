"""Memory the process no longer needs goes back to the operating system."""

from __future__ import annotations


def return_freed_memory() -> None:
    """Hand memory freed on the C heap back to the OS (glibc keeps it otherwise), so that a
    transient peak, such as tokenising a large text, does not stay resident under later work."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


__all__ = ["return_freed_memory"]
