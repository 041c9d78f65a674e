"""The ``eggs-ptp`` command line."""

from eggs_ptp.cli.main import main

__all__ = ["main"]
