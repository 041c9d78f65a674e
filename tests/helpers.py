"""Shared test helpers: tiny random models of every supported family, seeded calibration, pruned
checkpoints, and the CLI's one-line error check. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from eggs_ptp import RunOptions

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pruning removes weights from a network while "
    "keeping its function. Expander graphs keep every small set of vertices well connected. "
) * 40

HIDDEN, INTERMEDIATE, VOCAB = 32, 64, 300

# Run options for tests: no progress bars.
QUIET = RunOptions(progress=False)

# One tiny random config per family the walk must support (kwargs of AutoConfig.for_model).
_DECODER = dict(
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
_SLIDING = dict(_DECODER, head_dim=8, sliding_window=8)
FAMILIES: dict[str, dict] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": dict(_DECODER, head_dim=8),
    "olmo2": _DECODER,
    "granite": _DECODER,
    "gemma": dict(_DECODER, head_dim=8),
    "gemma2": _SLIDING,
    "gemma3_text": dict(_SLIDING, layer_types=["sliding_attention", "full_attention"]),
    "phi3": _DECODER,
    "opt": dict(
        hidden_size=HIDDEN,
        ffn_dim=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=HIDDEN,
        max_position_embeddings=128,
    ),
    "gpt2": dict(n_embd=HIDDEN, n_inner=INTERMEDIATE, n_layer=2, n_head=4, n_positions=128),
    "gpt_neox": dict(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    ),
}

# Mixture-of-experts families: 4 experts, 2 routed per token. Their experts are fused 3-D
# parameters, not linear layers; routers, shared experts and dense blocks around them are.
_MOE = dict(_DECODER, num_experts_per_tok=2)
MOE_FAMILIES: dict[str, dict] = {
    "mixtral": dict(_MOE, num_local_experts=4),
    "qwen3_moe": dict(_MOE, num_experts=4, moe_intermediate_size=32, head_dim=8),
    "gpt_oss": dict(
        _MOE,
        num_local_experts=4,
        head_dim=8,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},  # not YaRN over 128 positions
    ),
    "deepseek_v3": dict(
        _MOE,
        num_key_value_heads=4,  # multi-head latent attention: one key/value head per query head
        n_routed_experts=4,
        moe_intermediate_size=32,
        n_shared_experts=1,
        first_k_dense_replace=1,  # block 0 dense, block 1 mixture of experts
        kv_lora_rank=16,
        q_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        n_group=1,
        topk_group=1,
    ),
    "qwen2_moe": dict(_MOE, num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32),
    "olmoe": dict(_MOE, num_experts=4),
}


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random model of ``family`` (a key of ``FAMILIES`` or ``MOE_FAMILIES``), in eval mode."""
    torch.manual_seed(seed)
    ids = dict(bos_token_id=1, eos_token_id=1, pad_token_id=0)
    family_config = FAMILIES[family] if family in FAMILIES else MOE_FAMILIES[family]
    config = AutoConfig.for_model(family, vocab_size=VOCAB, **{**ids, **family_config, **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


def random_calibration(nsamples: int = 4, seqlen: int = 16, seed: int = 0):
    """Seeded windows of random token ids, for tiny models that need no real text."""
    from eggs_ptp.data import sample_windows

    tokens = torch.randint(2, VOCAB, (400,), generator=torch.Generator().manual_seed(123))
    return sample_windows(tokens, nsamples, seqlen, seed, "random tokens")


def pruned_tiny(family: str = "llama", method: str = "ria", pattern: str = "2:4"):
    """A tiny random model pruned on 2 random-token windows; returns (model, report)."""
    from eggs_ptp import PruneConfig, prune
    from eggs_ptp.data import sample_windows

    tokens = torch.randint(2, VOCAB, (200,), generator=torch.Generator().manual_seed(0))
    calibration = sample_windows(tokens, 2, 16, 0, "random")
    config = PruneConfig(method=method, pattern=pattern, nsamples=2, seqlen=16)
    return prune(tiny_model(family), None, config, QUIET, calibration=calibration)


def pruned_checkpoint(folder: Path, family: str = "llama", pattern: str = "2:4", tokenizer=None):
    """Save ``pruned_tiny`` to ``folder``; returns (folder, model)."""
    from eggs_ptp.formats import save_pruned

    model, report = pruned_tiny(family, "ria", pattern)
    return save_pruned(model, tokenizer, report, folder), model


def one_error_line(result, code: int = 2) -> str:
    """Assert a CLI run failed with exactly one ``error:`` line on stderr, and return it."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- whole-run helpers: the CLI in process, checkpoint weights, fresh interpreters, simulated crashes

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(*args):
    """``eggs-ptp ARGS`` in this process (a click result)."""
    from click.testing import CliRunner

    from eggs_ptp.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = checkpoint_weights(a), checkpoint_weights(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def python(*args: object) -> subprocess.CompletedProcess:
    """A fresh interpreter running this checkout's eggs_ptp, as torchrun's workers would."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, *map(str, args)], check=False, env=environment, capture_output=True, text=True, timeout=300
    )


def prune_args(model_dir, out, calib, *extra):
    """``eggs-ptp prune`` arguments for a tiny model: 4 windows of 16 tokens from ``calib``, quiet."""
    return ["prune", model_dir, "-o", out, "--nsamples", 4, "--seqlen", 16, "--calib", calib, "-q", *extra]


class Killed(BaseException):
    """Stands in for the process dying: no ``except Exception`` handler sees it."""


def kill_after_block(monkeypatch, block: int) -> None:
    """Make the run die right after block ``block``'s progress is committed."""
    import eggs_ptp.walk.resume as resume_module

    original = resume_module.RunProgress.save_block

    def save_then_die(self, index, *args, **kwargs):
        original(self, index, *args, **kwargs)
        if index == block:
            raise Killed

    monkeypatch.setattr(resume_module.RunProgress, "save_block", save_then_die)
