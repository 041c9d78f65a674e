"""Dataclass fields that carry their own help text, so a setting is declared once: the config
types hold them, and the CLI generates its options from them (:mod:`eggs_ptp.cli.options`)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(default: Any, help: str, flag: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field with its help text (and CLI flag, ``--NAME`` by default) in its metadata."""
    metadata = {"help": help, "flag": flag, "choices": choices}
    return field(default=default, metadata=metadata)


__all__ = ["setting"]
