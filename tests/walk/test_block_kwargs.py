"""The block calls the walk captures reproduce the model's own forward, family by family.

With an identity method (nothing pruned), the output of every block in the walk must equal the
model's own hidden states of a full forward on the same window. This checks the captured masks,
position embeddings and other keyword arguments of every block, including sliding-window layers
(a window of 4 tokens inside 16-token inputs), Gemma 2's soft-capping, QK-norm (Qwen3, OLMo 2),
GPT-OSS's attention sinks and biases, multi-head latent attention (DeepSeek-V3) and the routed and
shared experts of the mixture-of-experts families.
"""

import pytest
import torch

from eggs_ptp.methods import PrunedLayer
from eggs_ptp.models import find_blocks
from eggs_ptp.pattern import Pattern
from eggs_ptp.walk import capture_block_inputs, walk_and_prune

from helpers import FAMILIES, MOE_FAMILIES, random_calibration, tiny_model

SEQLEN, WINDOW = 16, 4

# Overrides that make attention local to the last WINDOW tokens; the Qwen families take it only in
# the layers from ``max_window_layers`` on (dense), or alternately (Qwen2-MoE), or in all (Qwen3-MoE).
_LOCAL = dict(sliding_window=WINDOW)
_QWEN_LOCAL = dict(_LOCAL, use_sliding_window=True, max_window_layers=1)
SLIDING: dict[str, dict] = {
    "mistral": _LOCAL,
    "mixtral": _LOCAL,
    "phi3": _LOCAL,
    "gemma2": _LOCAL,
    "gemma3_text": _LOCAL,
    "gpt_oss": _LOCAL,
    "qwen2": _QWEN_LOCAL,
    "qwen3": _QWEN_LOCAL,
    "qwen2_moe": _QWEN_LOCAL,
    "qwen3_moe": _QWEN_LOCAL,
}
ALL_FAMILIES = sorted(FAMILIES) + sorted(MOE_FAMILIES)


class Identity:
    """A method that keeps every weight: the walk runs, nothing changes."""

    name = "identity"
    needs_calibration = True  # the statistics pass runs too
    needs_hessian = False
    needs_dense_stream = False
    sequential = False
    reconstruct = None

    def prune(self, weight, stats, pattern):
        return PrunedLayer(weight.clone(), torch.ones_like(weight, dtype=torch.bool))


def model_for(family: str, **overrides):
    overrides = {**SLIDING.get(family, {}), **overrides}
    if family == "gemma2":  # scores large enough for the soft cap to bend them
        overrides = {"attn_logit_softcapping": 1.0, "initializer_range": 0.2, **overrides}
    return tiny_model(family, **overrides)


def own_hidden_states(model, blocks, window: torch.Tensor) -> list[torch.Tensor]:
    """Block 0's input then every block's output, from one full forward of the model."""
    last = []
    handle = blocks[-1].register_forward_hook(
        lambda module, args, output: last.append(output[0] if isinstance(output, (tuple, list)) else output)
    )
    try:
        with torch.no_grad():
            states = model(window.unsqueeze(0), output_hidden_states=True, use_cache=False).hidden_states
    finally:
        handle.remove()
    assert len(states) == len(blocks) + 1
    # in most families the last entry has the final norm applied: take the last block's own output
    return [*states[:-1], last[0]]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_walk_block_outputs_equal_the_models_hidden_states(family):
    model = model_for(family)
    windows = random_calibration(nsamples=3, seqlen=SEQLEN).windows
    prefix, blocks = find_blocks(model)
    expected = [own_hidden_states(model, blocks, window) for window in windows]

    hidden, calls = capture_block_inputs(model, blocks, windows, progress=False)
    outputs: dict[int, list[torch.Tensor]] = {}

    def record(index, reports, streams):
        outputs[index] = [window.clone() for window in streams.pruned]

    for w in range(len(windows)):
        torch.testing.assert_close(hidden[w], expected[w][0], atol=1e-5, rtol=1e-5, msg=f"block 0 input, window {w}")
    walk_and_prune(blocks, prefix, calls, hidden, Identity(), Pattern(2, 4), progress=False, on_block=record)

    assert sorted(outputs) == list(range(len(blocks)))
    for index in range(len(blocks)):
        for w in range(len(windows)):
            torch.testing.assert_close(
                outputs[index][w], expected[w][index + 1], atol=1e-5, rtol=1e-5, msg=f"block {index}, window {w}"
            )


# Each feature the test above must reproduce, and the override that turns it off.
FEATURES = [pytest.param(family, dict(sliding_window=4 * SEQLEN), id=f"{family}-sliding") for family in sorted(SLIDING)]
FEATURES.append(pytest.param("gemma2", dict(attn_logit_softcapping=None), id="gemma2-softcapping"))


@pytest.mark.parametrize(("family", "off"), FEATURES)
def test_the_features_change_the_output(family, off):
    """Otherwise the test above would not tell a sliding-window mask from a full causal one, or
    soft-capped attention scores from plain ones."""
    window = random_calibration(nsamples=1, seqlen=SEQLEN).windows
    with torch.no_grad():
        on = model_for(family)(window, use_cache=False).logits
        without = model_for(family, **off)(window, use_cache=False).logits
    assert not torch.allclose(on, without, atol=1e-4)
