"""``eggs-ptp pack`` on tiny pruned checkpoints, and its one-line refusals."""

import json

import pytest

from helpers import one_error_line, pruned_checkpoint, run_cli


def run(*args):
    return run_cli("pack", *args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return pruned_checkpoint(tmp_path_factory.mktemp("pack") / "llama-2of4", "llama", "2:4")[0]


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
    folder, _ = pruned_checkpoint(tmp_path / "unstructured", "llama", "0.5")
    assert "N:M only" in one_error_line(run(folder, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
