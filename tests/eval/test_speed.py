"""Variants against the dense reference on tiny checkpoints: structure and behaviour, never wall times."""

import pytest
import torch

from eggs_ptp.eval.speed import BenchSettings, interleaved_times, ratios, render_markdown, run_bench
from eggs_ptp.formats import save_pruned
from eggs_ptp.formats.compact import pack_checkpoint
from eggs_ptp.kernels import DENSE_ABOVE_TOKENS
from eggs_ptp.methods import method_config

from helpers import pruned_checkpoint, pruned_tiny

MANY = DENSE_ABOVE_TOKENS[torch.float32] + 1  # one token past the fp32 kernel's crossover: the dense path
SETTINGS = BenchSettings(tokens=(1, MANY), repeats=2, prompt_tokens=8, new_tokens=6, threads=(1, 2))
FP = ["dense", "dense bf16", "dense int8 (torch dynamic)", "compact 2:4", "compact 2:4 bf16"]
INT8 = "compact 2:4 + int8 per channel"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    fp = pruned_checkpoint(root / "llama-2of4", "llama", "2:4")[0]
    model, report = pruned_tiny("llama", method_config("ria", quantize="int8"), "2:4")
    return fp, save_pruned(model, None, report, root / "llama-2of4-int8")


@pytest.fixture(scope="module")
def result(checkpoints):
    return run_bench(list(checkpoints), SETTINGS, progress=False)


def test_record_layout(result, checkpoints):
    assert result["type"] == "eggs-ptp/bench" and result["schema_version"] == 2
    assert result["sources"] == [str(folder) for folder in checkpoints] and result["pattern"] == "2:4"
    assert [variant["label"] for variant in result["variants"]] == [*FP, INT8]
    assert result["pruned_layers"] == 14 and result["dtype"] == "float32" and result["skipped_baselines"] == []
    assert result["prompt"] == "8 random token ids (seed 0)"  # the tiny checkpoint has no tokenizer
    assert [run["threads"] for run in result["runs"]] == [1, 2]
    assert (
        result["machine"]["kernel"]["available"] and {"torch", "transformers"} <= result["machine"]["versions"].keys()
    )


def test_sizes_are_exact_byte_counts(result):
    sizes = result["sizes"]
    hidden, inner = 32, 64  # tests/helpers.py FAMILIES["llama"], 2 blocks
    pruned = 2 * (hidden * hidden * 2 + hidden * 16 * 2 + hidden * inner * 3) * 4
    assert sizes["dense"]["pruned_layers"] == pruned
    assert sizes["compact 2:4"]["pruned_layers_ratio"] == pytest.approx(0.53125)  # fp32 2:4: 1/2 + 1/32
    assert sizes["dense bf16"]["pruned_layers_ratio"] == pytest.approx(0.5)
    assert sizes["compact 2:4 bf16"]["pruned_layers_ratio"] == pytest.approx(0.28125)
    assert 0.25 < sizes["dense int8 (torch dynamic)"]["pruned_layers_ratio"] < 0.27
    # int8 values (1/8 of fp32 at 2:4) + the bitmask (1/32) + one float16 scale per row
    rows = 2 * (hidden * 2 + 16 * 2 + inner * 2 + hidden)
    assert sizes[INT8]["pruned_layers"] == pruned * (1 / 8 + 1 / 32) + rows * 2
    assert sizes["compact 2:4"]["disk"] < sizes["dense"]["disk"]


def test_one_row_per_layer_shape_and_token_count(result):
    for run in result["runs"]:
        rows = run["layers"]
        assert [(r["shape"], r["layers"], r["tokens"]) for r in rows] == [
            ([32, 32], 4, 1),
            ([32, 32], 4, MANY),
            ([16, 32], 4, 1),
            ([16, 32], 4, MANY),
            ([64, 32], 4, 1),
            ([64, 32], 4, MANY),
            ([32, 64], 2, 1),
            ([32, 64], 2, MANY),
        ]
        assert {r["tokens"]: r["paths"]["compact 2:4"] for r in rows} == {1: "kernel", MANY: "dense"}
        for row in rows:
            assert row["time_ratio"]["dense"] == {"min": 1.0, "median": 1.0, "max": 1.0}
            for label in [*FP, INT8]:
                times = row["us_per_layer"][label]
                assert 0 < times["min"] <= times["median"] <= times["max"]
        total = run["pruned_layers_total"]["1"]
        assert total[INT8]["time_ratio"] == pytest.approx(total[INT8]["us"] / total["dense"]["us"])


def test_generation_is_measured_and_every_compact_model_decodes_as_its_dense_form(result):
    for run in result["runs"]:
        for key in ("prefill_s", "decode_tokens_per_s", "prefill_time_ratio", "decode_speedup"):
            assert set(run[key]) == {*FP, INT8}
        assert run["decode_speedup"]["dense"]["median"] == 1.0
    greedy = result["greedy"]["variants"]
    for label in ("compact 2:4", "compact 2:4 bf16", INT8):
        assert greedy[label]["against"] == "its dense form" and greedy[label]["identical"], label
        assert len(greedy[label]["ids"]) == 6
    assert greedy["dense bf16"]["against"] == "dense"


def test_markdown_has_every_table(result):
    text = render_markdown(result)
    for header in (
        "| variant | pruned layers | ratio |",
        "## 1 thread ",
        "## 2 threads ",
        "| layer shape (out x in) |",
        "| all pruned layers, one forward |",
        "| end to end |",
    ):
        assert header in text
    assert f"- {INT8} against its dense form: identical for all 6 tokens." in text


def test_ratios_pair_each_repeat_with_the_reference_of_the_same_repeat():
    assert ratios({"dense": [1.0, 2.0, 4.0], "x": [2.0, 2.0, 2.0]})["x"] == {"min": 0.5, "median": 1.0, "max": 2.0}
    calls = []
    times = interleaved_times({"dense": lambda: calls.append("d"), "x": lambda: calls.append("x")}, 2)
    assert calls == ["d", "x", "d", "x", "d", "x"] and [len(v) for v in times.values()] == [2, 2]


def test_checkpoints_of_different_models_are_refused(checkpoints, tmp_path):
    other = pruned_checkpoint(tmp_path / "gpt2", "gpt2", "2:4")[0]
    with pytest.raises(ValueError, match="prunes other layers|bench checkpoints of one model"):
        run_bench([checkpoints[0], other], BenchSettings(tokens=(1,), repeats=1, prompt_tokens=4, new_tokens=2))


def test_a_packed_folder_benches_like_its_source(checkpoints, tmp_path):
    packed = pack_checkpoint(checkpoints[0], tmp_path / "packed").out
    record = run_bench(
        packed, BenchSettings(tokens=(1,), repeats=1, prompt_tokens=4, new_tokens=3, baselines=()), False
    )
    assert [variant["label"] for variant in record["variants"]] == ["dense", "compact 2:4"]
    assert record["greedy"]["variants"]["compact 2:4"]["identical"]
    assert torch.get_num_threads() >= 1
