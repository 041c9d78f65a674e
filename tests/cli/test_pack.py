"""``eggs-ptp pack`` on tiny pruned checkpoints, and its one-line refusals."""

import json

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_model
from eggs_ptp import PruneConfig, prune
from eggs_ptp.cli.pack import pack_command
from eggs_ptp.data import sample_windows
from eggs_ptp.formats import save_pruned


def run(*args):
    return CliRunner().invoke(pack_command, [str(a) for a in args])


def one_error_line(result):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def pruned_checkpoint(folder, pattern):
    tokens = torch.randint(2, 300, (200,), generator=torch.Generator().manual_seed(0))
    calibration = sample_windows(tokens, 2, 16, 0, "random")
    model, report = prune(tiny_model("llama"), None, PruneConfig(method="ria", pattern=pattern, nsamples=2, seqlen=16),
                          calibration=calibration, progress=False)
    return save_pruned(model, None, report, folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return pruned_checkpoint(tmp_path_factory.mktemp("pack") / "llama-2of4", "2:4")


def test_pack_reports_sizes_and_json(checkpoint, tmp_path):
    result = run(checkpoint, tmp_path / "compact", "--json")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "pattern 2:4 | 14 pruned layers"
    assert lines[1].startswith("pruned layers: dense 72.0 KiB -> compact 38.2 KiB (0.5312x)")
    assert lines[2].startswith("checkpoint:    dense ") and "compact" in lines[2]
    payload = json.loads(lines[-1])
    assert payload["pattern"] == "2:4" and payload["layers"] == 14 and payload["source"] == str(checkpoint)
    assert payload["pruned_ratio"] == pytest.approx(0.53125) and payload["file_ratio"] < 1.0
    assert (tmp_path / "compact" / "compact.json").exists()


def test_existing_output_is_refused_then_replaced(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    assert "--overwrite" in one_error_line(run(checkpoint, out))
    assert (out / "mine.txt").read_text() == "user data"
    assert run(checkpoint, out, "--overwrite").exit_code == 0
    assert not (out / "mine.txt").exists() and (out / "compact.json").exists()


def test_folder_without_sparsity_json_is_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    assert "no sparsity.json" in one_error_line(run(tmp_path / "plain", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_unstructured_checkpoint_is_refused(tmp_path):
    folder = pruned_checkpoint(tmp_path / "unstructured", "0.5")
    assert "N:M only" in one_error_line(run(folder, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
