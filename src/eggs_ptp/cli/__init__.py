"""The ``eggs-ptp`` command line."""

from eggs_ptp.cli.bench import bench_command
from eggs_ptp.cli.compare import compare_command
from eggs_ptp.cli.inspect import inspect_command
from eggs_ptp.cli.main import main
from eggs_ptp.cli.pack import pack_command

main.add_command(bench_command)
main.add_command(compare_command)
main.add_command(inspect_command)
main.add_command(pack_command)

__all__ = ["main"]
