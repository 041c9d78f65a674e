"""A quantized prune writes loadable dense weights on their grid, the grids beside them, and
``verify`` checks every weight against its grid."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from eggs_ptp.cli import main
from eggs_ptp.formats.compact import load_compact
from eggs_ptp.quant import GRID_FILE, QuantScheme, load_grids

from helpers import MOE_FAMILIES, tiny_model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def prune(model_dir, out, text_file, *extra):
    args = ["prune", model_dir, "-o", out, "--nsamples", 2, "--seqlen", 16, "--calib", text_file, "-q", *extra]
    result = run(*args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "sparsity.json").read_text())


@pytest.mark.parametrize(
    "method, quantize, mode",
    [
        (("--method", "sparsegpt"), ("--quantize", "int8"), "sweep"),
        (("--method", "eggs+update", "--tile-height", 4), ("--quantize", "int4", "--group-size", 32), "sweep"),
        (("--method", "wanda"), ("--quantize", "int4", "--group-size", 32, "--asymmetric"), "nearest"),
        (("--method", "sparsegpt"), ("--quantize", "int8", "--rtn"), "nearest"),
    ],
    ids=["sparsegpt-int8", "eggs-update-int4", "wanda-int4-asym", "sparsegpt-int8-rtn"],
)
def test_quantized_prune_is_on_grid_loadable_and_verified(tiny_llama_dir, tmp_path, text_file, method, quantize, mode):
    out = tmp_path / "q"
    record = prune(tiny_llama_dir, out, text_file, *method, *quantize)
    scheme = QuantScheme.from_dict(record["quantization"])
    assert record["quantization"]["file"] == GRID_FILE and scheme.bits == (8 if "int8" in quantize else 4)
    layers = [layer for layer in record["layers"] if layer["skipped"] is None]
    assert {layer["settings"]["quantization"]["mode"] for layer in layers} == {mode}
    grids = load_grids(out / GRID_FILE)
    weights = load_file(out / "model.safetensors")
    assert set(grids) == {layer["name"] for layer in layers}
    assert not any(key.endswith(("scales", "zeros")) for key in weights)  # the dense file is plain transformers
    for layer in layers:
        weight = weights[f"{layer['name']}.weight"]
        assert not grids[layer["name"]].off_grid(weight, weight != 0).any(), layer["name"]
        assert len(torch.unique(weight[0])) <= (1 << scheme.bits) * grids[layer["name"]].scales.shape[1] + 1
    AutoModelForCausalLM.from_pretrained(out)  # any transformers tool loads it
    verified = run("verify", out, "--json")
    assert verified.exit_code == 0, verified.output


def test_verify_names_a_weight_off_its_grid_and_a_missing_grid_file(tiny_llama_dir, tmp_path, text_file):
    out = tmp_path / "q"
    prune(tiny_llama_dir, out, text_file, "--method", "sparsegpt", "--quantize", "int8")
    weights = load_file(out / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    kept = weights[name] != 0
    weights[name] = torch.where(kept, weights[name] * 1.001, weights[name])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = run("verify", out)
    assert (
        result.exit_code == 1
        and "model.layers.1.self_attn.o_proj" in result.stderr
        and "off their int8 grid" in result.stderr
    )
    (out / GRID_FILE).unlink()
    result = run("verify", out)
    assert result.exit_code == 1 and f"{GRID_FILE} is missing" in result.stderr


def test_bfloat16_checkpoints_stay_on_their_grid(model_dir, tmp_path, text_file):
    """Grid values rounded to bfloat16 still read back as their integers."""
    out = tmp_path / "q"
    prune(model_dir, out, text_file, "--method", "sparsegpt", "--quantize", "int8", "--dtype", "bfloat16")
    assert load_file(out / "model.safetensors")["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert run("verify", out).exit_code == 0


def test_expert_matrices_are_quantized_each_on_its_own_grid(tmp_path, tokenizer, text_file):
    family = next(iter(MOE_FAMILIES))
    folder = tmp_path / family
    tiny_model(family).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "q"
    record = prune(folder, out, text_file, "--method", "sparsegpt", "--quantize", "int4", "--group-size", 32)
    experts = [layer["name"] for layer in record["layers"] if layer.get("expert") and layer["skipped"] is None]
    assert experts and set(experts) <= set(load_grids(out / GRID_FILE))
    assert run("verify", out).exit_code == 0


def test_a_rounded_head_is_on_its_grid_verified_and_packed_once(tmp_path, tokenizer, text_file):
    """--quantize-head: the tied head (and so the embedding) lies on its int8 grid whatever the layers'
    scheme, verify checks it, and the packed folder stores it once, as integers, loading back bit for bit."""
    source = tmp_path / "tied"
    tiny_model("llama", tie_word_embeddings=True).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out, packed = tmp_path / "q", tmp_path / "c"
    record = prune(
        source, out, text_file, "--method", "sparsegpt", "--quantize", "int4", "--group-size", 32, "--quantize-head"
    )
    head = record["quantization"]["head"]
    int8 = QuantScheme(8).to_dict()
    assert head == {"name": "lm_head", "shape": [300, 32], "tied": "model.embed_tokens", "quantization": int8}
    weights = load_file(out / "model.safetensors")
    key = next(k for k in ("lm_head.weight", "model.embed_tokens.weight") if k in weights)
    grid = load_grids(out / GRID_FILE)["lm_head"]
    assert grid.scheme == QuantScheme(8) and list(grid.scales.shape) == [300, 1]
    assert load_grids(out / GRID_FILE)["model.layers.0.mlp.down_proj"].scheme == QuantScheme(4, True, 32)
    assert not grid.off_grid(weights[key], torch.ones_like(weights[key], dtype=torch.bool)).any()
    verified = run("verify", out)
    assert verified.exit_code == 0 and "int4 grids, the output head on its int8 grid" in verified.output
    assert run("pack", out, packed).exit_code == 0
    compact = json.loads((packed / "compact.json").read_text())
    assert compact["schema_version"] == 3 and compact["head"] == {**head, "dtype": "float32"}
    stored = load_file(packed / "model.safetensors")
    assert stored["lm_head.weight.qvalues"].dtype == torch.int8 and stored["lm_head.weight.qvalues"].shape == (300, 32)
    assert "lm_head.weight" not in stored and "model.embed_tokens.weight" not in stored
    loaded = load_compact(packed)
    assert (
        torch.equal(loaded.lm_head.weight, weights[key]) and loaded.model.embed_tokens.weight is loaded.lm_head.weight
    )
    weights[key][3, 5] += 1e-3
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = run("verify", out)
    assert result.exit_code == 1 and "lm_head" in result.stderr and "off their int8 grid" in result.stderr


def test_quantize_head_needs_a_grid_and_the_whole_model(tiny_llama_dir, tmp_path, text_file):
    base = ["prune", tiny_llama_dir, "-o", tmp_path / "q", "--nsamples", 2, "--seqlen", 16, "--calib", text_file, "-q"]
    result = run(*base, "--quantize-head")
    assert result.exit_code != 0 and "needs --quantize int8 or int4" in result.output
    result = run(*base, "--quantize", "int8", "--quantize-head", "--low-memory")
    assert result.exit_code != 0 and "drop --quantize-head or --low-memory" in result.output
