"""The CLI: one-line errors for bad input, nothing lost, machine-readable output."""

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoConfig, T5Config

from eggs_ptp.cli import main

from helpers import one_error_line, tiny_model


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def prune_args(model_dir, out, text_file, *extra):
    return ["prune", model_dir, "-o", out, "--nsamples", 2, "--seqlen", 16, "--calib", text_file, "-q", *extra]


def test_prune_eval_verify_end_to_end(tiny_llama_dir, tmp_path, text_file):
    out = tmp_path / "pruned"
    result = run(
        *prune_args(
            tiny_llama_dir,
            out,
            text_file,
            "--method",
            "eggs",
            "--tile-height",
            4,
            "--eval",
            "--eval-text",
            text_file,
            "--eval-seqlen",
            16,
            "--json",
        )
    )
    assert result.exit_code == 0, result.output
    assert "method=eggs" in result.stdout and "pattern=2:4" in result.stdout  # settings are printed
    assert "EggsSelector(rule='repair', b=1, tile_height=4)" in result.stdout  # resolved stages too
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["kept_fraction"] == pytest.approx(0.5)
    assert payload["perplexity"]["pruned"] > 0 and payload["perplexity"]["seqlen"] == 16
    assert payload["perplexity"]["windows"] * 16 == payload["perplexity"]["tokens"]

    verified = run("verify", out, "--json")
    assert verified.exit_code == 0 and json.loads(verified.stdout.splitlines()[-1])["ok"]

    evaluated = run("eval", out, "--text", text_file, "--seqlen", 16, "--windows", 3, "--json", "-q")
    assert evaluated.exit_code == 0, evaluated.output
    record = json.loads(evaluated.stdout.splitlines()[-1])
    assert (record["windows"], record["seqlen"], record["tokens"]) == (3, 16, 48)


@pytest.mark.parametrize("pattern", ["3:2", "0:4", "2:4:8"])
def test_impossible_patterns(pattern, tiny_llama_dir, tmp_path, text_file):
    line = one_error_line(run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--pattern", pattern)))
    assert pattern in line


def test_unknown_method_lists_the_known_ones(tiny_llama_dir, tmp_path, text_file):
    result = run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--method", "obs"))
    assert result.exit_code == 2 and "wanda" in result.stderr and "sparsegpt" in result.stderr


def test_missing_model_path(tmp_path, text_file):
    line = one_error_line(run(*prune_args(tmp_path / "nope", tmp_path / "o", text_file)))
    assert "does not exist" in line


_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)


def _saved_bert(folder, tokenizer):
    """A BertModel checkpoint with its tokenizer: an encoder that AutoModelForCausalLM would load."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(**_BERT)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize(
    "config, says",
    [
        (T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=50), "encoder-decoder"),
        (
            AutoConfig.for_model(
                "vit", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            ),
            "has no causal-LM class",
        ),
        (AutoConfig.for_model("bert", **_BERT), "is an encoder (its config has is_decoder false)"),
        (AutoConfig.for_model("gemma3"), "is a multimodal model (vision tower"),
    ],
    ids=["t5", "vit", "bert-config", "gemma3"],
)
def test_not_a_causal_lm(config, says, tmp_path, text_file):
    folder = tmp_path / "model"
    config.save_pretrained(folder)
    line = one_error_line(run(*prune_args(folder, tmp_path / "o", text_file)))
    assert says in line and "eggs-ptp prunes decoder-only causal language models" in line


def test_a_bert_model_folder_is_refused(tmp_path, text_file, tokenizer):
    _saved_bert(tmp_path / "bert", tokenizer)
    line = one_error_line(run(*prune_args(tmp_path / "bert", tmp_path / "o", text_file)))
    assert "was saved as BertModel, not as a causal language model" in line


def test_a_folder_without_a_tokenizer_is_refused(tmp_path, text_file):
    tiny_model("llama").save_pretrained(tmp_path / "bare")
    for command in (prune_args(tmp_path / "bare", tmp_path / "o", text_file), ["eval", tmp_path / "bare", "-q"]):
        assert "has no tokenizer files" in one_error_line(run(*command))


def test_calibration_text_shorter_than_one_window(tiny_llama_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    line = one_error_line(run(*prune_args(tiny_llama_dir, tmp_path / "o", short)))
    assert "shorter than one window" in line


def test_nan_in_activations_names_the_block(tiny_llama_dir, tmp_path, text_file):
    from safetensors.torch import load_file, save_file

    weights = load_file(tiny_llama_dir / "model.safetensors")
    weights["model.layers.1.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(weights, tiny_llama_dir / "model.safetensors", metadata={"format": "pt"})
    line = one_error_line(run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--method", "wanda")))
    assert "NaN in the activations of block 1" in line
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused_before_any_work(tiny_llama_dir, tmp_path, text_file):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = one_error_line(run(*prune_args(tiny_llama_dir, out, text_file)))
    assert "--overwrite" in line and (out / "keep.txt").read_text() == "mine"


def test_interrupted_prune_writes_nothing(tiny_llama_dir, tmp_path, text_file, monkeypatch):
    import eggs_ptp.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eggs_ptp.api, "walk_and_prune", interrupted)
    result = run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file))
    assert result.exit_code == 130 and "nothing was written" in result.stderr
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_pattern_and_sparsity_are_exclusive(tiny_llama_dir, tmp_path, text_file):
    result = run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--pattern", "2:4", "--sparsity", "0.5"))
    assert result.exit_code == 2 and "not both" in result.stderr


def test_eggs_settings_are_validated(tiny_llama_dir, tmp_path, text_file):
    assert "b must lie in 0..N" in one_error_line(run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--b", 3)))
    line = one_error_line(run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--tile-height", 6)))
    assert "multiple of M = 4" in line


def test_verify_failure_exits_one_naming_the_layer(tiny_llama_dir, tmp_path, text_file):
    out = tmp_path / "p"
    assert run(*prune_args(tiny_llama_dir, out, text_file, "--method", "magnitude")).exit_code == 0
    from safetensors.torch import load_file, save_file

    weights = load_file(out / "model.safetensors")
    weights["model.layers.0.mlp.gate_proj.weight"] = torch.ones_like(weights["model.layers.0.mlp.gate_proj.weight"])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = run("verify", out)
    assert result.exit_code == 1 and "model.layers.0.mlp.gate_proj" in result.stderr


def test_an_option_of_another_method_family_is_refused(tiny_llama_dir, tmp_path, text_file):
    result = run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--method", "ria", "--b", 2))
    assert result.exit_code == 2 and "--b is a setting of eggs; --method ria does not use it" in result.stderr
    result = run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--method", "magnitude", "--alpha", 0.3))
    assert result.exit_code == 2 and "--alpha is a setting of ria and eggs; --method magnitude" in result.stderr
    result = run(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--owl-lambda", 0.1))
    assert result.exit_code == 2 and "add --allocation owl" in result.stderr


def test_help_groups_options_by_family_with_defaults():
    text = run("prune", "--help").output
    sections = [
        "Method:",
        "RIA settings (ria):",
        "SparseGPT settings (sparsegpt, sparsegpt+refit):",
        "EGGS settings (eggs, eggs+update):",
        "Pattern, calibration and layers:",
        "Allocation:",
        "How to run:",
        "Evaluation:",
        "Output:",
    ]
    assert [text.index(s) for s in sections] == sorted(text.index(s) for s in sections)
    eggs = text[text.index("EGGS settings") : text.index("Pattern, calibration")]
    assert "--rule" in eggs and "[default: repair]" in eggs and "--alpha" not in eggs  # alpha is RIA's, shared


def test_the_recorded_config_nests_the_method_settings(tiny_llama_dir, tmp_path, text_file):
    out = tmp_path / "o"
    result = run(
        *prune_args(
            tiny_llama_dir, out, text_file, "--method", "eggs+update", "--b", 2, "--tile-height", 8, "--damping", 0.05
        )
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sparsity.json").read_text())
    assert record["method"] == "eggs+update(b=2, tile_height=8, damping=0.05)"
    assert record["config"]["method"] == {
        "name": "eggs+update",
        "target": "layer",
        "sequential": False,
        "swaps": False,
        "reconstruct": 0,
        "quantize": "none",
        "group_size": 128,
        "asymmetric": False,
        "rtn": False,
        "quantize_head": False,
        "b": 2,
        "rule": "repair",
        "tile_height": 8,
        "alpha": 0.5,
        "auto": False,
        "update": True,
        "damping": 0.05,
        "blocksize": 128,
    }
