"""The dense-against-sparse measurement on tiny checkpoints: structure and behaviour, never wall times."""

import pytest
import torch

from eggs_ptp.eval.speed import BenchSettings, paired_times, render_markdown, run_bench
from eggs_ptp.formats.compact import pack_checkpoint

from helpers import pruned_checkpoint

SETTINGS = BenchSettings(tokens=(1, 20), repeats=2, prompt_tokens=8, new_tokens=6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return pruned_checkpoint(tmp_path_factory.mktemp("bench") / "llama-2of4", "llama", "2:4")[0]


@pytest.fixture(scope="module")
def result(checkpoint):
    return run_bench(checkpoint, SETTINGS, progress=False)


def test_record_layout(result, checkpoint):
    assert result["type"] == "eggs-ptp/bench" and result["schema_version"] == 1
    assert result["source"] == str(checkpoint) and result["pattern"] == "2:4" and result["dtype"] == "float32"
    assert result["pruned_layers"] == 14 and result["settings"]["tokens"] == (1, 20)
    assert result["prompt"] == "8 random token ids (seed 0)"  # the tiny checkpoint has no tokenizer
    machine = result["machine"]
    assert machine["torch_threads"] == torch.get_num_threads() and machine["kernel"]["available"]
    assert {"torch", "transformers"} <= machine["versions"].keys()


def test_sizes_are_exact_byte_counts(result):
    sizes = result["sizes"]
    assert sizes["resident_pruned_layers"]["ratio"] == pytest.approx(0.53125)  # fp32 2:4: 1/2 + 1/32
    hidden, inner = 32, 64  # tests/conftest.py FAMILIES["llama"], 2 blocks
    pruned = 2 * (hidden * hidden * 2 + hidden * 16 * 2 + hidden * inner * 3) * 4
    assert sizes["resident_pruned_layers"]["dense"] == pruned
    assert sizes["resident_model"]["dense"] - sizes["resident_model"]["sparse"] == pruned * (1 - 0.53125)
    assert 0 < sizes["disk_weight_files"]["ratio"] < 1


def test_one_row_per_layer_shape_and_token_count(result):
    rows = result["layers"]
    assert [(r["shape"], r["layers"], r["tokens"]) for r in rows] == [
        ([32, 32], 4, 1),
        ([32, 32], 4, 20),
        ([16, 32], 4, 1),
        ([16, 32], 4, 20),
        ([64, 32], 4, 1),
        ([64, 32], 4, 20),
        ([32, 64], 2, 1),
        ([32, 64], 2, 20),
    ]
    assert {r["tokens"]: r["sparse_path"] for r in rows} == {1: "kernel", 20: "dense"}
    for row in rows:
        for key in ("dense_us", "sparse_us", "ratio"):
            assert row[key]["min"] <= row[key]["median"] <= row[key]["max"]
    total = result["pruned_layers_total"]["1"]
    assert total["ratio"] == pytest.approx(total["sparse_us"] / total["dense_us"])


def test_generation_is_measured_and_greedy_outputs_agree(result):
    greedy = result["greedy"]
    assert greedy["identical"] and greedy["first_difference"] is None and len(greedy["dense_ids"]) == 6
    for key in ("prefill_s", "decode_tokens_per_s"):
        assert set(result[key]) == {"dense", "sparse", "ratio"} and result[key]["dense"]["min"] > 0


def test_markdown_has_every_table(result):
    text = render_markdown(result)
    for header in (
        "| size | dense | compact sparse | ratio |",
        "| layer shape (out x in) |",
        "| all pruned layers, one forward |",
        "| greedy decode (tokens/s) |",
    ):
        assert header in text
    assert "Greedy outputs identical for all 6 tokens." in text


def test_packed_input_is_measured_the_same_way(checkpoint, tmp_path):
    packed = pack_checkpoint(checkpoint, tmp_path / "compact").out
    again = run_bench(packed, BenchSettings(tokens=(2,), repeats=1, prompt_tokens=4, new_tokens=2), progress=False)
    assert again["sizes"]["resident_pruned_layers"]["ratio"] == pytest.approx(0.53125)
    assert [r["tokens"] for r in again["layers"]] == [2, 2, 2, 2] and again["greedy"]["identical"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compact"]  # the dense copy went to a temporary folder


def test_paired_times_ratio_is_per_repeat():
    calls = []
    timing = paired_times(lambda: calls.append("d"), lambda: calls.append("s"), repeats=3)
    assert calls == ["d", "s"] * 4  # one untimed call each, then interleaved repeats
    assert set(timing) == {"dense", "sparse", "ratio"}


def test_bad_settings_and_prompts_are_refused(checkpoint):
    with pytest.raises(ValueError, match="tokens must be positive"):
        BenchSettings(tokens=(0, 8))
    with pytest.raises(ValueError, match="new_tokens >= 2"):
        BenchSettings(new_tokens=1)
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        BenchSettings(dtype="float16")
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        run_bench(checkpoint, BenchSettings(prompt_tokens=120, new_tokens=20), progress=False)
