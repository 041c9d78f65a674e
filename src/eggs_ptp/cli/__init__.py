"""The ``eggs-ptp`` command line."""

from eggs_ptp.cli.inspect import inspect_command
from eggs_ptp.cli.main import main

main.add_command(inspect_command)

__all__ = ["main"]
