"""``eggs-ptp inspect`` end to end on tiny pruned and dense models, and its one-line errors."""

import json

import pytest
from click.testing import CliRunner

from eggs_ptp.cli import main

from helpers import one_error_line, pruned_checkpoint, run_cli


def run(*args):
    return run_cli("inspect", *args)


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    return pruned_checkpoint(tmp_path_factory.mktemp("inspect") / "llama-2of4", "llama", "2:4")[0]


def test_pruned_llama_end_to_end(llama_checkpoint, tmp_path):
    out = tmp_path / "report"
    result = run(llama_checkpoint, "--out", out, "--plot", "--json", "-q")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("llama-2of4: ria, pattern 2:4 | B=1 | tiles 2:4 x 4 rows")
    assert lines[1].split() == [
        "layer",
        "shape",
        "kept",
        "in-min",
        "in-mean",
        "zero-in",
        "in<1",
        "tile<1",
        "gap",
        "expansion*",
    ]
    assert lines[2].startswith("model.layers.0.self_attn.q_proj") and "32x32" in lines[2] and "0.500" in lines[2]
    assert any(line.startswith("summary: 14 layers | in-degree min: mean") for line in lines)
    payload = json.loads(lines[-1])
    assert payload["summary"]["layers"] == 14 and payload["dense"] is False

    record = json.loads((out / "inspect.json").read_text())
    assert record["type"] == "eggs-ptp/inspect" and record["pattern"] == "2:4" and not record["pattern_inferred"]
    layer = record["layers"][0]
    assert layer["name"] == "model.layers.0.self_attn.q_proj" and layer["recon_error"] is not None
    assert layer["expansion_is_estimate"] and layer["tiles"]["m"] == 4 and 0.0 <= layer["spectral_gap"] <= 1.0
    assert layer["out_degree_min"] == layer["out_degree_max"] == 16  # exactly 2 of every 4 inputs per row
    assert (
        record["figures"] == payload["figures"] == ["heatmap.png", "degree-histogram.png", "connectivity-vs-error.png"]
    )
    for name in record["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_gpt2_conv1d_layers_are_read_out_by_in(tmp_path):
    checkpoint, _ = pruned_checkpoint(tmp_path / "gpt2-4of8", "gpt2", "4:8")
    result = run(checkpoint, "--out", tmp_path / "r", "--layers", "*.mlp.*", "-q")
    assert result.exit_code == 0, result.output
    layers = json.loads((tmp_path / "r" / "inspect.json").read_text())["layers"]
    assert [l["name"] for l in layers] == [f"transformer.h.{i}.mlp.{n}" for i in (0, 1) for n in ("c_fc", "c_proj")]
    for layer in layers:
        out, inn = layer["shape"]
        assert layer["out_degree_min"] == layer["out_degree_max"] == inn // 2  # 4:8 along the input side


def test_dense_model_says_so_and_succeeds(tiny_llama_dir, tmp_path):
    result = run(tiny_llama_dir, "--out", tmp_path / "r", "--plot", "--json", "-q")
    assert result.exit_code == 0, result.output
    assert "dense / not pruned" in result.stdout
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["dense"] is True and payload["figures"] == [] and payload["summary"]["layers"] == 0


def test_checkpoint_from_another_tool_infers_the_pattern(llama_checkpoint, tmp_path, tokenizer):
    other = tmp_path / "zeros-only"
    other.mkdir()
    for path in llama_checkpoint.iterdir():
        if path.name != "sparsity.json":
            (other / path.name).write_bytes(path.read_bytes())
    tokenizer.save_pretrained(other)
    result = run(other, "--out", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    assert "pattern 2:4 (inferred)" in result.stdout and "summary: 14 layers" in result.stdout


def test_default_output_folder_and_overwrite(llama_checkpoint):
    runner = CliRunner()
    with runner.isolated_filesystem():
        first = runner.invoke(main, ["inspect", str(llama_checkpoint), "-q", "--layers", "*.0.mlp.*"])
        assert first.exit_code == 0, first.output
        assert "wrote inspect-llama-2of4/inspect.json" in first.stdout
        again = runner.invoke(main, ["inspect", str(llama_checkpoint), "-q"])
        assert "--overwrite" in one_error_line(again)
        assert runner.invoke(main, ["inspect", str(llama_checkpoint), "-q", "--overwrite"]).exit_code == 0


def test_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert "not a model folder" in one_error_line(run(tmp_path / "notes", "--out", tmp_path / "r"))
    assert "does not exist" in one_error_line(run(tmp_path / "missing", "--out", tmp_path / "r"))


def test_unknown_layer(llama_checkpoint, tmp_path):
    line = one_error_line(run(llama_checkpoint, "--out", tmp_path / "r", "--layers", "model.layers.7.mlp.up_proj"))
    assert "model.layers.7.mlp.up_proj" in line and "model.layers.0.self_attn.q_proj" in line


def test_pattern_for_tiles_must_be_n_m(llama_checkpoint, tmp_path):
    assert "N:M" in one_error_line(run(llama_checkpoint, "--out", tmp_path / "r", "--pattern", "0.5"))
