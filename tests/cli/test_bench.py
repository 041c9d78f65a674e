"""``eggs-ptp bench`` on a tiny pruned checkpoint: files, refusals, JSON line (no timing assertions)."""

import json

import pytest
from click.testing import CliRunner

from eggs_ptp.cli import main

from helpers import one_error_line, pruned_checkpoint

FAST = ["--tokens", "1,3", "--repeats", "1", "--prompt-tokens", "4", "--new-tokens", "3", "--threads", "1", "-q"]


def run(*args):
    return CliRunner().invoke(main, ["bench", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return pruned_checkpoint(tmp_path_factory.mktemp("bench-cli") / "gpt2-2of4", "gpt2", "2:4")[0]


def test_bench_writes_json_and_markdown(checkpoint, tmp_path):
    out = tmp_path / "results" / "tiny.json"
    result = run(checkpoint, "-o", out, "--json", *FAST)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["type"] == "eggs-ptp/bench" and record["pruned_layers"] == 8
    assert out.with_suffix(".md").read_text().startswith("# eggs-ptp bench: gpt2-2of4")
    assert "| layer shape (out x in) |" in result.stdout
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["output"] == str(out) and payload["greedy_identical"] is True


def test_existing_results_are_kept_without_overwrite(checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    out.with_suffix(".md").write_text("mine")
    assert "--overwrite" in one_error_line(run(checkpoint, "-o", out, *FAST))
    assert out.with_suffix(".md").read_text() == "mine" and not out.exists()
    assert run(checkpoint, "-o", out, "--overwrite", *FAST).exit_code == 0
    assert out.with_suffix(".md").read_text() != "mine"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tokens", "1,x"], "--tokens must be comma-separated counts"),
        (["-o", "result.txt"], "--output must end in .json"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--threads", "1,many"], "--threads must be comma-separated counts or 'all'"),
        (["--baselines", "int3"], "unknown baseline int3"),
        (["--repeats", "0"], "repeats must be >= 1"),
    ],
)
def test_bad_options_are_one_line_errors(checkpoint, tmp_path, args, message):
    assert message in one_error_line(
        run(checkpoint, "-o", tmp_path / "b.json", *args) if "-o" not in args else run(checkpoint, *args)
    )


def test_a_folder_that_is_not_a_pruned_checkpoint_is_refused(tiny_llama_dir, tmp_path):
    assert "no sparsity.json" in one_error_line(run(tiny_llama_dir, "-o", tmp_path / "b.json", *FAST))
