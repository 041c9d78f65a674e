import pytest
import torch

from eggs_ptp import PruneConfig, prune
from eggs_ptp.data import sample_windows
from eggs_ptp.models import find_blocks
from eggs_ptp.walk import NonFiniteActivationError, capture_block_inputs

from helpers import FAMILIES, QUIET, tiny_model

SEQLEN = 16


def windows(nsamples=3):
    tokens = torch.randint(2, 300, (200,), generator=torch.Generator().manual_seed(5))
    return sample_windows(tokens, nsamples, SEQLEN, 0, "random")


def record_inputs(blocks):
    """Every hidden-state input each block receives, in call order."""
    seen: dict[int, list[torch.Tensor]] = {}

    def make(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen.setdefault(index, []).append(hidden.detach().clone())

        return hook

    return seen, [b.register_forward_pre_hook(make(i), with_kwargs=True) for i, b in enumerate(blocks)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_block_is_calibrated_on_the_pruned_prefix(family):
    """The inputs the walk feeds block k are what the pruned model itself feeds block k."""
    overrides = {}
    if family == "gemma3_text":  # alternate sliding/full masks: each block must get its own
        overrides = dict(num_hidden_layers=3, layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    model = tiny_model(family, **overrides)
    calibration = windows()
    _, blocks = find_blocks(model)
    walk_inputs, handles = record_inputs(blocks)
    prune(model, None, PruneConfig(method="wanda", nsamples=3, seqlen=SEQLEN), calibration=calibration, run=QUIET)
    for handle in handles:
        handle.remove()

    model_inputs, handles = record_inputs(blocks)
    with torch.no_grad():
        model(calibration.windows[:1], use_cache=False)
    for handle in handles:
        handle.remove()
    for index in range(len(blocks)):
        # the last 3 calls are the walk's output pass; window 0 comes first
        torch.testing.assert_close(walk_inputs[index][-3], model_inputs[index][0], msg=f"block {index}")


def test_sequential_inputs_differ_from_dense_ones():
    model = tiny_model("llama")
    dense_inputs, handles = record_inputs(find_blocks(model)[1])
    with torch.no_grad():
        model(windows().windows[:1], use_cache=False)
    for handle in handles:
        handle.remove()
    _, blocks = find_blocks(model)
    walk_inputs, handles = record_inputs(blocks)
    prune(model, None, PruneConfig(method="magnitude", nsamples=3, seqlen=SEQLEN), calibration=windows(), run=QUIET)
    assert torch.equal(walk_inputs[0][-3], dense_inputs[0][0])
    assert not torch.allclose(walk_inputs[1][-3], dense_inputs[1][0])


def test_capture_records_one_call_per_block_and_one_state_per_window():
    model = tiny_model("llama")
    _, blocks = find_blocks(model)
    hidden, calls = capture_block_inputs(model, blocks, windows(4).windows, progress=False)
    assert len(hidden) == 4 and all(h.shape == (1, SEQLEN, 32) for h in hidden)
    assert len(calls) == len(blocks)
    assert "position_embeddings" in calls[0].kwargs


def test_reconstruction_error_is_measured_against_dense_weights():
    model = tiny_model("llama")
    _, report = prune(
        model, None, PruneConfig(method="magnitude", nsamples=3, seqlen=SEQLEN), calibration=windows(), run=QUIET
    )
    errors = [layer.recon_error for layer in report.layers]
    assert all(0 < e < 1.5 for e in errors)
    # 2:4 with SparseGPT's weight update reconstructs better than magnitude on the same layers
    _, obs = prune(
        tiny_model("llama"),
        None,
        PruneConfig(method="sparsegpt", nsamples=3, seqlen=SEQLEN),
        calibration=windows(),
        run=QUIET,
    )
    assert obs.layers[0].recon_error < report.layers[0].recon_error


def test_nan_activations_name_the_block():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="NaN in the activations of block 1"):
        prune(model, None, PruneConfig(method="wanda", nsamples=3, seqlen=SEQLEN), calibration=windows(), run=QUIET)


def test_inf_activations_are_named_as_inf():
    model = tiny_model("llama")
    model.model.layers[0].mlp.register_forward_hook(lambda module, inputs, output: output.clamp_min(float("inf")))
    with pytest.raises(NonFiniteActivationError, match="Inf in the activations of block 0"):
        prune(model, None, PruneConfig(method="wanda", nsamples=3, seqlen=SEQLEN), calibration=windows(), run=QUIET)
