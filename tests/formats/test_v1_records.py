"""``sparsity.json`` files of schema version 1 (written before method configs were typed, committed
in ``data/sparsity_v1.json``) still load in verify, inspect, pack and bench."""

import json
import shutil
from pathlib import Path

import pytest

from eggs_ptp import PruneConfig, RiaConfig

from helpers import pruned_checkpoint, run_cli

V1 = Path(__file__).parent / "data" / "sparsity_v1.json"


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory):
    """The tiny Llama the v1 record was written for, pruned the same way, with the v1 record beside it."""
    folder, _ = pruned_checkpoint(tmp_path_factory.mktemp("v1") / "ria-2of4", "llama", "2:4")
    shutil.copy(V1, folder / "sparsity.json")
    return folder


def test_the_committed_record_is_version_1_and_upgrades():
    record = json.loads(V1.read_text())
    assert record["schema_version"] == 1 and record["config"]["schema_version"] == 1
    assert record["config"]["b"] == 1 and record["config"]["method"] == "ria"  # the flat v1 shape
    assert PruneConfig.from_dict(record["config"]).method == RiaConfig(alpha=0.5)


@pytest.mark.parametrize("command", [["verify"], ["inspect", "--json"], ["pack"], ["bench"]])
def test_commands_read_a_version_1_checkpoint(v1_checkpoint, tmp_path, command):
    name, *flags = command
    target = {
        "pack": [tmp_path / "packed"],
        "bench": [
            "-o",
            tmp_path / "bench.json",
            "--tokens",
            "1",
            "--repeats",
            "1",
            "--prompt-tokens",
            "4",
            "--new-tokens",
            "2",
            "-q",
        ],
        "inspect": ["--out", tmp_path / "inspect"],
        "verify": [],
    }[name]
    result = run_cli(name, v1_checkpoint, *target, *flags)
    assert result.exit_code == 0, result.output
