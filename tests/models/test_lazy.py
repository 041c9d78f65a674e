"""--low-memory: a lazily opened checkpoint, one block in memory at a time, equals the in-memory walk."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import assert_same_weights, prune_args, run_cli, tiny_model


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_low_memory_walk_equals_in_memory_walk(model_dir, calib, tmp_path, method):
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    assert run_cli(*prune_args(model_dir, full, calib, "--method", method)).exit_code == 0
    result = run_cli(*prune_args(model_dir, lazy, calib, "--method", method, "--low-memory"))
    assert result.exit_code == 0, result.output
    assert_same_weights(full, lazy)
    assert (lazy / "model.safetensors.index.json").is_file()
    report = json.loads((lazy / "sparsity.json").read_text())
    assert report["model"]["low_memory"] and report["summary"]["peak_rss_mb"] > 0
    assert report["model"]["checkpoint_bytes"] > 0
    assert run_cli("verify", lazy).exit_code == 0
    ids = torch.arange(2, 12).unsqueeze(0)
    with torch.no_grad():  # a standard sharded checkpoint: transformers loads it as it loads the other
        logits = [AutoModelForCausalLM.from_pretrained(f).eval()(ids).logits for f in (full, lazy)]
    assert torch.equal(*logits)


@pytest.mark.parametrize(
    "method", [("--method", "wanda"), ("--method", "sparsegpt", "--target", "model")], ids=["wanda", "dense-target"]
)
def test_low_memory_with_offloaded_bf16_activations_matches_in_memory(model_dir, calib, tmp_path, method):
    """The dense model's stream, carried for a dense-model target, is offloaded and cleaned up too."""
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    extra = (*method, "--activation-dtype", "bfloat16")
    assert run_cli(*prune_args(model_dir, full, calib, *extra)).exit_code == 0
    offload = tmp_path / "activations"
    assert run_cli(*prune_args(model_dir, lazy, calib, *extra, "--low-memory", "--offload-dir", offload)).exit_code == 0
    assert_same_weights(full, lazy)
    assert not any(offload.rglob("*.safetensors"))  # cleaned up as the walk moved on


def test_gpt2_checkpoint_names_map_to_its_parameters(tmp_path, tokenizer, calib):
    folder = tmp_path / "gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    assert run_cli(*prune_args(folder, full, calib, "--method", "ria")).exit_code == 0
    assert run_cli(*prune_args(folder, lazy, calib, "--method", "ria", "--low-memory")).exit_code == 0
    assert_same_weights(full, lazy)


def test_low_memory_refuses_eval_and_device_map(model_dir, calib, tmp_path):
    result = run_cli(*prune_args(model_dir, tmp_path / "o", calib, "--low-memory", "--eval"))
    assert result.exit_code == 2 and "eggs-ptp eval" in result.output
