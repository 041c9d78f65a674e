"""Block reconstruction on tiny random Llama and GPT-2 blocks pruned 2:4 by magnitude."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from eggs_ptp.selectors import select_nm
from eggs_ptp.updates.block import BlockReconstruction

HIDDEN, SEQLEN, WINDOWS = 32, 32, 16


@dataclass
class Case:
    block: nn.Module
    kwargs: dict
    inputs: list[torch.Tensor]
    targets: list[torch.Tensor] = field(default_factory=list)
    parameters: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output = self.block(hidden, **self.kwargs)
        return output[0] if isinstance(output, tuple) else output

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.block.named_parameters()}

    def run(self, stage: BlockReconstruction | None = None, targets: list[torch.Tensor] | None = None) -> dict:
        with torch.no_grad():  # as in the walk
            return (stage or BlockReconstruction()).apply(
                self.forward, self.parameters, self.inputs, self.targets if targets is None else targets
            )


def prune(block: nn.Module, skip: tuple[str, ...] = ()) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Prune every linear weight not named in ``skip`` 2:4 by magnitude; Conv1D's (in, out) via its transpose."""
    parameters = []
    for name, module in block.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and name.rsplit(".", 1)[-1] not in skip:
            transposed = isinstance(module, Conv1D)
            weight = module.weight.detach()
            mask = select_nm((weight.T if transposed else weight).abs().float(), 2, 4)
            mask = mask.T if transposed else mask  # in the parameter's own (in, out) layout
            with torch.no_grad():
                module.weight.masked_fill_(~mask, 0.0)
            parameters.append((module.weight, mask))
    return parameters


def windows(count: int, dtype: torch.dtype, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, SEQLEN, HIDDEN, generator=generator).to(dtype) for _ in range(count)]


def pruned_case(block: nn.Module, kwargs: dict, inputs: list[torch.Tensor], skip: tuple[str, ...] = ()) -> Case:
    """The dense block's outputs as targets, then the block pruned."""
    case = Case(block, kwargs, inputs)
    with torch.no_grad():
        case.targets = [case.forward(x) for x in inputs]
    case.parameters = prune(block, skip)
    return case


def llama_case(dtype: torch.dtype = torch.float32, count: int = WINDOWS, skip: tuple[str, ...] = ()) -> Case:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=64,
    )
    model = LlamaForCausalLM(config).eval().to(dtype)
    block = model.model.layers[0]
    rope = model.model.rotary_emb(torch.zeros(1, SEQLEN, HIDDEN, dtype=dtype), torch.arange(SEQLEN)[None])
    return pruned_case(block, {"position_embeddings": rope}, windows(count, dtype), skip)


def gpt2_case() -> Case:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=HIDDEN, n_inner=64, n_layer=1, n_head=4, n_positions=SEQLEN, vocab_size=64)
    block = GPT2LMHeadModel(config).eval().transformer.h[0]
    return pruned_case(block, {}, windows(WINDOWS, torch.float32))


def test_held_out_error_falls_on_a_pruned_block():
    case = llama_case()
    record = case.run()
    assert record["held_out_windows"] == 2 and record["train_windows"] == 14
    assert record["held_out_error_after"] < record["held_out_error_before"] * 0.99
    assert record["train_error_after"] < record["train_error_before"]
    assert 1 <= record["best_epoch"] <= record["epochs"] <= BlockReconstruction().epochs


def test_pruned_entries_stay_positive_zero_and_masks_unchanged():
    case = llama_case()
    masks = [mask.clone() for _, mask in case.parameters]
    before = [p.detach().clone() for p, _ in case.parameters]
    case.run(BlockReconstruction(learning_rate=1e-3, epochs=3, patience=3))
    for (parameter, mask), kept, start in zip(case.parameters, masks, before):
        assert torch.equal(mask, kept)
        assert (parameter[~mask] == 0).all() and not torch.signbit(parameter[~mask]).any()
        assert not torch.equal(parameter[mask], start[mask])  # the kept weights did train


def test_frozen_parameters_are_untouched_and_requires_grad_restored():
    case = llama_case(skip=("o_proj", "down_proj"))  # left dense and not trained, like the norms
    trained = {id(p) for p, _ in case.parameters}
    for index, parameter in enumerate(case.block.parameters()):
        parameter.requires_grad_(index % 2 == 0)
    flags = {name: p.requires_grad for name, p in case.block.named_parameters()}
    start = case.weights()
    assert case.run(BlockReconstruction(learning_rate=3e-4))["best_epoch"] > 0
    for name, parameter in case.block.named_parameters():
        assert parameter.requires_grad == flags[name], name
        assert parameter.grad is None, name
        if id(parameter) not in trained:
            assert torch.equal(parameter, start[name]), name
    assert any(not torch.equal(p, start[n]) for n, p in case.block.named_parameters() if id(p) in trained)


def test_two_runs_are_bit_identical():
    first, second = llama_case(), llama_case()
    assert first.run() == second.run()
    for (a, _), (b, _) in zip(first.parameters, second.parameters):
        assert torch.equal(a, b)


def test_a_different_seed_orders_the_windows_differently():
    first, second = llama_case(), llama_case()
    first.run(BlockReconstruction(seed=0))
    second.run(BlockReconstruction(seed=1))
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(first.parameters, second.parameters))


def test_targets_already_met_stop_after_patience_with_the_weights_unchanged():
    case = llama_case()
    with torch.no_grad():
        current = [case.forward(x) for x in case.inputs]
    start = case.weights()
    record = case.run(BlockReconstruction(epochs=10, patience=2), targets=current)
    assert record["epochs"] == 2 and record["best_epoch"] == 0 and record["stopped_early"]
    assert record["held_out_error_after"] == record["held_out_error_before"] == 0
    assert all(torch.equal(p, start[n]) for n, p in case.block.named_parameters())


def test_a_learning_rate_that_only_hurts_leaves_the_starting_weights_bit_for_bit():
    case = llama_case()
    start = case.weights()
    record = case.run(BlockReconstruction(learning_rate=0.5, epochs=6, patience=2))
    assert record["epochs"] == 2 and record["best_epoch"] == 0 and record["stopped_early"]
    assert record["held_out_error_after"] == record["held_out_error_before"]
    assert record["train_error_after"] == record["train_error_before"]
    assert all(torch.equal(p, start[n]) for n, p in case.block.named_parameters())


def test_bfloat16_block_trains_a_float32_master_and_stays_bfloat16():
    case = llama_case(torch.bfloat16)
    start = [p.detach().clone() for p, _ in case.parameters]
    record = case.run(BlockReconstruction(learning_rate=1e-3))
    assert record["held_out_error_after"] <= record["held_out_error_before"]
    assert record["train_error_after"] < record["train_error_before"]
    for parameter, mask in case.parameters:
        assert parameter.dtype == torch.bfloat16
        assert (parameter[~mask] == 0).all() and not torch.signbit(parameter[~mask]).any()
    # steps below bf16's spacing accumulate in the master copy instead of vanishing
    assert any(not torch.equal(p, s) for (p, _), s in zip(case.parameters, start))


def test_gpt2_conv1d_weights_train_through_their_stored_layout():
    case = gpt2_case()  # masks are transposed views: strides unlike their weights'
    assert not all(mask.is_contiguous() for _, mask in case.parameters)
    record = case.run()
    assert record["held_out_error_after"] < record["held_out_error_before"]
    for parameter, mask in case.parameters:
        assert (parameter[~mask] == 0).all()


def test_a_single_window_trains_and_selects_on_itself():
    case = llama_case(count=1)
    record = case.run()
    assert record["train_windows"] == 1 and record["held_out_windows"] == 0
    assert record["held_out_error_before"] is None and record["held_out_error_after"] is None
    assert record["train_error_after"] < record["train_error_before"]


@pytest.mark.parametrize(
    ("holdout", "windows", "held"),
    [(0.125, 16, 2), (0.125, 64, 8), (0.01, 4, 1), (3, 16, 3), (10, 4, 3), (1, 2, 1), (0.5, 1, 0)],
)
def test_held_out_counts(holdout, windows, held):
    assert BlockReconstruction(holdout=holdout).held_out(windows) == held


def test_non_finite_loss_names_the_kind_and_epoch_and_restores_the_weights():
    case = llama_case()
    start = case.weights()
    calls = 0

    def blows_up(hidden: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        output = case.forward(hidden)
        return output * torch.inf if calls > WINDOWS + 3 else output  # after the first check, in epoch 1

    with torch.no_grad(), pytest.raises(RuntimeError, match="Inf in the block reconstruction loss at epoch 1"):
        BlockReconstruction().apply(blows_up, case.parameters, case.inputs, case.targets)
    assert all(torch.equal(p, start[n]) for n, p in case.block.named_parameters())
    assert all(p.requires_grad for p in case.block.parameters())


def test_non_finite_starting_outputs_fail_before_training():
    case = llama_case()
    case.inputs[3] = torch.full_like(case.inputs[3], torch.nan)
    with pytest.raises(RuntimeError, match="NaN in the block reconstruction loss at epoch 0"):
        case.run()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c, "inputs", []), "at least one input window"),
        (lambda c: setattr(c, "targets", c.targets[:-1]), "16 input windows but 15 targets"),
        (lambda c: c.targets.__setitem__(2, c.targets[2][:, :-1]), "input window 2 has shape"),
        (lambda c: setattr(c, "parameters", []), "at least one parameter"),
        (lambda c: setattr(c, "parameters", [c.parameters[0]] * 2), "parameter 1 is given twice"),
        (lambda c: setattr(c, "parameters", [(c.parameters[0][0], c.parameters[0][1].float())]), "must be bool"),
        (lambda c: setattr(c, "parameters", [(c.parameters[1][0], c.parameters[1][1].T)]), "must be bool of its"),
        (lambda c: c.targets.__setitem__(0, torch.zeros_like(c.targets[0])), "target window 0 has mean square"),
    ],
)
def test_bad_arguments_fail_with_one_clear_error(change, message):
    case = llama_case()
    change(case)
    with pytest.raises(ValueError, match=message):
        case.run()


def test_weights_outside_the_mask_must_already_be_zero():
    case = llama_case()
    parameter, mask = case.parameters[0]
    with torch.no_grad():
        parameter[~mask] = 1.0
    with pytest.raises(ValueError, match="parameter 0 has nonzero weights where its mask prunes them"):
        case.run()


def test_forward_returning_another_shape_is_one_clear_error():
    case = llama_case()
    with pytest.raises(ValueError, match="forward returned shape"):
        BlockReconstruction().apply(lambda x: case.forward(x)[:, :-1], case.parameters, case.inputs, case.targets)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"holdout": 0}, "holdout"),
        ({"holdout": 1.0}, "holdout"),
        ({"holdout": True}, "holdout"),
        ({"patience": 0}, "patience"),
        ({"seed": 0.5}, "seed"),
    ],
)
def test_invalid_fields_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        BlockReconstruction(**fields)
