"""The compact N:M format: exact layout, bit-exact round trips, refusals, and tiny models end to end."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from eggs_ptp.formats import codec, save_pruned
from eggs_ptp.formats.codec import compress, decompress
from eggs_ptp.formats.compact import load_compact, pack_checkpoint
from eggs_ptp.pattern import Pattern

from helpers import pruned_tiny

BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def bits(tensor):
    return tensor.view(BITS[tensor.dtype])


def random_nm(rows, cols, n, m, dtype, seed):
    """A weight keeping exactly N of every M, with some kept weights set to 0.0 and -0.0."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.rand(rows, cols // m, m, generator=generator).argsort(dim=-1)
    kept = (order < n).reshape(rows, cols)
    weight = torch.where(kept, torch.randn(rows, cols, generator=generator), 0.0).to(dtype)  # (out, in)
    special = kept & (torch.rand(rows, cols, generator=generator) < 0.15)
    count = int(special.sum())
    weight[special] = torch.tensor([0.0, -0.0], dtype=dtype).repeat(count)[:count]
    return weight


def test_hand_written_2_of_4_layout():
    weight = torch.tensor(
        [[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, -3.0, 4.0], [0.0, 5.0, 0.0, 0.0, -0.0, 0.0, 6.0, 0.0]]
    )  # row 1 keeps one in each group
    values, bitmask = compress(weight, Pattern(2, 4))
    assert torch.equal(bits(values), bits(torch.tensor([[1.0, 2.0, -3.0, 4.0], [0.0, 5.0, -0.0, 6.0]])))
    # row 0 stores columns 0, 2, 6, 7; row 1 its non-zeros 1, 6 plus the spare slots: the lowest
    # +0.0 (column 0) and the -0.0 (column 4), which is preferred so its sign survives
    assert bitmask.dtype == torch.uint8 and bitmask.tolist() == [[0b11000101], [0b01010011]]
    assert torch.equal(bits(decompress(values, bitmask, (2, 8), Pattern(2, 4))), bits(weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, m, cols", [(2, 4, 16), (2, 4, 12), (4, 8, 40), (1, 4, 20)])
def test_round_trip_is_bit_exact(n, m, cols, dtype):
    weight = random_nm(7, cols, n, m, dtype, seed=cols + n)
    assert ((weight == 0) & weight.signbit()).any() and ((weight == 0) & ~weight.signbit()).any()
    values, bitmask = compress(weight, Pattern(n, m))
    assert values.dtype == dtype and list(values.shape) == [7, cols // m * n]
    assert list(bitmask.shape) == [7, -(-cols // 8)]
    stored = np.unpackbits(bitmask.numpy(), axis=-1, count=cols, bitorder="little").astype(bool)
    assert (stored.reshape(7, -1, m).sum(-1) == n).all()  # what compressed-tensors' reader unpacks
    assert torch.equal(bits(values), bits(weight[torch.from_numpy(stored)].reshape(7, -1)))
    assert torch.equal(bits(decompress(values, bitmask, weight.shape, Pattern(n, m))), bits(weight))


def test_transposed_view_round_trips():
    weight = random_nm(8, 16, 2, 4, torch.float32, seed=1)
    values, bitmask = compress(weight.T.contiguous().T, Pattern(2, 4))
    assert torch.equal(bits(decompress(values, bitmask, (8, 16), Pattern(2, 4))), bits(weight))


def test_negative_zero_outside_the_stored_slots_loads_as_positive_zero():
    weight = torch.tensor([[1.0, -0.0, 2.0, 0.0]])
    values, bitmask = compress(weight, Pattern(2, 4))
    back = decompress(values, bitmask, (1, 4), Pattern(2, 4))
    assert torch.equal(back, weight) and not back[0, 1].signbit()


def test_compress_refuses_groups_over_n():
    weight = torch.zeros(2, 8)
    weight[1, 4:7] = 1.0
    with pytest.raises(ValueError, match=r"breaks pattern 2:4: 1 groups .* \(first at row 1, group 1\)"):
        compress(weight, Pattern(2, 4))
    with pytest.raises(ValueError, match="N:M only"):
        compress(weight, Pattern(sparsity=0.5))
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        compress(torch.zeros(2, 6), Pattern(2, 4))


def test_decompress_refuses_a_bitmask_that_breaks_the_pattern():
    values, bitmask = compress(torch.ones(1, 8) * torch.tensor([1, 1, 0, 0, 1, 0, 1, 0]), Pattern(2, 4))
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        decompress(values, bitmask | 0b100, (1, 8), Pattern(2, 4))


def test_the_codec_builds_on_the_pattern_alone():
    """The file format and the sparse kernels both import the codec, so it must import neither."""
    tree = ast.parse(Path(codec.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.startswith("eggs_ptp")} == {"eggs_ptp.pattern"}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def packed(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model, report = pruned_tiny(request.param)
    dense = save_pruned(model, None, report, folder / "dense")
    return request.param, dense, pack_checkpoint(dense, folder / "compact")


def test_pack_then_load_matches_the_dense_checkpoint(packed):
    family, dense_dir, result = packed
    dense = AutoModelForCausalLM.from_pretrained(dense_dir).eval()
    loaded = load_compact(result.out)
    expected, actual = dense.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert result.signed_zeros_cleared == 0  # the pruner writes +0.0 where it prunes
    for key, tensor in expected.items():
        assert torch.equal(bits(actual[key]), bits(tensor)), key
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, dense(ids).logits)
    if family == "gpt2":  # tied: the checkpoint has no lm_head, the loaded model shares wte
        assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()


def test_packed_folder_layout_and_sizes(packed):
    family, dense_dir, result = packed
    record = json.loads((result.out / "compact.json").read_text())
    assert record["type"] == "eggs-ptp/compact" and record["schema_version"] == 2 and record["quantization"] is None
    assert record["pattern"] == "2:4" and record["bitmask_bit_order"] == "little"
    pruned = [l for l in json.loads((dense_dir / "sparsity.json").read_text())["layers"] if l["skipped"] is None]
    assert len(record["layers"]) == result.layers == len(pruned) == (14 if family == "llama" else 8)
    layer = record["layers"][0]
    assert layer["dtype"] == "float32" and layer["transposed"] == (family == "gpt2")
    with safe_open(str(result.out / "model.safetensors"), framework="pt") as handle:
        values = handle.get_slice(f"{layer['name']}.weight.values").get_shape()
        bitmask = handle.get_slice(f"{layer['name']}.weight.bitmask")
        assert values == [layer["shape"][0], layer["shape"][1] // 2] and bitmask.get_dtype() == "U8"
        assert f"{layer['name']}.weight" not in handle.keys()
    assert {"config.json", "generation_config.json", "sparsity.json"} <= {p.name for p in result.out.iterdir()}
    assert result.pruned_ratio == pytest.approx(0.53125)  # fp32 2:4: 1/2 + 1/32
    assert result.file_compact_bytes < result.file_dense_bytes
    assert not [p for p in result.out.parent.iterdir() if p.name.startswith(".")]


def test_bf16_with_positive_zeros_round_trips_bit_for_bit(tmp_path, tokenizer):
    model, report = pruned_tiny("llama")
    model = model.to(torch.bfloat16)
    dense = save_pruned(model, tokenizer, report, tmp_path / "dense")
    result = pack_checkpoint(dense, tmp_path / "compact")
    assert result.signed_zeros_cleared == 0 and result.pruned_ratio == pytest.approx(0.5625)
    assert (result.out / "tokenizer.json").exists()
    loaded = load_compact(result.out)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    for key, tensor in model.state_dict().items():
        assert torch.equal(bits(loaded.state_dict()[key]), bits(tensor)), key


def test_pack_names_the_layer_that_breaks_its_pattern(tmp_path):
    model, report = pruned_tiny("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.fill_(1.0)
    dense = save_pruned(model, None, report, tmp_path / "bad")
    with pytest.raises(ValueError, match=r"^model\.layers\.1\.mlp\.up_proj: weight breaks pattern 2:4"):
        pack_checkpoint(dense, tmp_path / "compact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
