"""The compact format's quantized layers (schema version 2): exact integer layout, bit-exact loads of
the dequantized model, byte counts, refusals, and version 1 folders still read."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from eggs_ptp import PruneConfig, prune
from eggs_ptp.formats import save_pruned
from eggs_ptp.formats.codec import compress, negative_zeros, pack_nibbles, unpack_bits, unpack_nibbles
from eggs_ptp.formats.compact import (
    dequantize_compact,
    load_compact,
    load_compact_state_dict,
    pack_checkpoint,
    quantize_compact,
    unpack_qvalues,
)
from eggs_ptp.formats.verify import VerifyError, verify_checkpoint
from eggs_ptp.kernels import load_sparse
from eggs_ptp.methods.configs import method_config
from eggs_ptp.pattern import Pattern
from eggs_ptp.quant import GRID_FILE, QuantScheme

from helpers import QUIET, pruned_tiny, random_calibration, tiny_model

SCHEMES = {
    "int8": QuantScheme(8),
    "int4-g32": QuantScheme(4, True, 32),
    "int4-g32-asym": QuantScheme(4, False, 32),
}


def quantized_tiny(scheme, family="llama", method="wanda"):
    """A tiny random model pruned 2:4 with its kept weights on ``scheme``'s grids; returns (model, report)."""
    settings = {"quantize": scheme.name, "group_size": scheme.group_size or 128, "asymmetric": not scheme.symmetric}
    config = PruneConfig(method=method_config(method, **settings), pattern="2:4", nsamples=2, seqlen=16)
    return prune(tiny_model(family), None, config, QUIET, calibration=random_calibration(2, 16))


def on_grid_nm(rows, cols, scheme, seed=0):
    """A 2:4 weight whose kept values lie on a grid fitted to them, some of them exactly 0.0; and the grid."""
    generator = torch.Generator().manual_seed(seed)
    kept = (torch.rand(rows, cols // 4, 4, generator=generator).argsort(dim=-1) < 2).reshape(rows, cols)
    weight = torch.where(kept, torch.randn(rows, cols, generator=generator), 0.0)
    grid = scheme.fit(weight, kept)
    weight = torch.where(kept, grid.round(weight), 0.0)
    weight[kept & (torch.rand(rows, cols, generator=generator) < 0.1)] = 0.0  # spare slots
    return weight, grid


def test_nibbles_are_low_first_and_an_odd_row_ends_in_a_zero_high_nibble():
    q = torch.tensor([[1, 2, 3], [15, 0, 9]])
    packed = pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x21, 0x03], [0x0F, 0x09]]
    assert torch.equal(unpack_nibbles(packed, 3), q.to(torch.uint8))


@pytest.mark.parametrize("kept", [0, 1, 6, 7])
def test_nibbles_round_trip(kept):
    q = torch.randint(0, 16, (5, kept), generator=torch.Generator().manual_seed(kept))
    packed = pack_nibbles(q)
    assert list(packed.shape) == [5, -(-kept // 2)]
    assert torch.equal(unpack_nibbles(packed, kept), q.to(torch.uint8))


def test_nibbles_refuse_what_does_not_fit():
    with pytest.raises(ValueError, match=r"must lie in \[0, 15\], got \[0, 16\]"):
        pack_nibbles(torch.tensor([[0, 16]]))
    with pytest.raises(ValueError, match=r"must be uint8 \[rows, 2\], got torch.uint8 \[1, 3\]"):
        unpack_nibbles(torch.zeros(1, 3, dtype=torch.uint8), 4)


def test_hand_written_quantized_2_of_4_layouts():
    weight = torch.tensor([[0.5, 0.0, -1.0, 0.0, 0.0, 0.0, 0.25, 1.0]])  # (1, 8), 2 of every 4 kept
    int8 = QuantScheme(8).fit(weight, weight != 0)  # scale 1/127
    qvalues, bitmask = quantize_compact(torch.where(weight != 0, int8.round(weight), 0.0), Pattern(2, 4), int8)
    assert qvalues.dtype == torch.int8 and qvalues.tolist() == [[64, -127, 32, 127]]
    assert bitmask.tolist() == [[0b11000101]]
    int4 = QuantScheme(4, True, 32)  # scale 1/7, zero point 8: 0.5 -> 12, -1.0 -> 1, 0.25 -> 10 (2/7), 1.0 -> 15
    grid = int4.fit(weight, weight != 0)
    rounded = torch.where(weight != 0, grid.round(weight), 0.0)
    qvalues, _ = quantize_compact(rounded, Pattern(2, 4), grid)
    assert qvalues.dtype == torch.uint8 and qvalues.tolist() == [[(1 << 4) | 12, (15 << 4) | 10]]
    assert unpack_qvalues(qvalues, 4, (1, 4)).tolist() == [[12, 1, 10, 15]]
    assert torch.equal(dequantize_compact(qvalues, bitmask, Pattern(2, 4), grid), rounded)


@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_layers_round_trip_bit_for_bit(scheme, dtype):
    weight, grid = on_grid_nm(6, 96, scheme)
    weight = weight.to(dtype)  # grid values rounded to bfloat16 still read back as their integers
    qvalues, bitmask = quantize_compact(weight, Pattern(2, 4), grid)
    stored = unpack_bits(bitmask, 96)
    assert torch.equal(bitmask, compress(weight, Pattern(2, 4))[1])
    assert torch.equal(unpack_qvalues(qvalues, scheme.bits, (6, 48)), grid.quantize(weight)[stored].reshape(6, 48))
    back = dequantize_compact(qvalues, bitmask, Pattern(2, 4), grid)
    assert back.dtype == torch.float32 and torch.equal(back.to(dtype), weight)
    assert not negative_zeros(back).any()  # an integer grid has only +0.0


def test_a_weight_off_its_grid_is_refused_with_its_first_row():
    weight, grid = on_grid_nm(4, 32, SCHEMES["int8"])
    column = int((weight[2] != 0).nonzero()[0, 0])
    weight[2, column] *= 1.001
    with pytest.raises(ValueError, match=r"^1 kept weights lie off its int8 grid \(first at row 2\)$"):
        quantize_compact(weight, Pattern(2, 4), grid)


def compact_bytes(rows, cols, scheme):
    weight, grid = on_grid_nm(rows, cols, scheme)
    qvalues, bitmask = quantize_compact(weight, Pattern(2, 4), grid)
    return sum(t.nbytes for t in (qvalues, bitmask, *grid.tensors("layer").values()))


@pytest.mark.parametrize("shape", [(576, 576), (1536, 576)])
def test_bytes_against_fp32(shape):
    """Per row of 576 inputs: 288 (int8) or 144 (int4) bytes of values, 72 of bitmask, 2 bytes of
    scale per group and 1 of zero point; so the ratio does not depend on the rows."""
    rows, cols = shape
    ratios = {
        name: compact_bytes(rows, cols, scheme) / (rows * cols * 4)
        for name, scheme in {
            "int8": QuantScheme(8),
            "int4-g128": QuantScheme(4, True, 128),
            "int4-g128-asym": QuantScheme(4, False, 128),
        }.items()
    }
    assert ratios == {
        "int8": pytest.approx((288 + 72 + 2) / 2304),
        "int4-g128": pytest.approx((144 + 72 + 5 * 2) / 2304),
        "int4-g128-asym": pytest.approx((144 + 72 + 5 * 3) / 2304),
    }
    assert ratios["int8"] <= 0.16 and ratios["int4-g128"] <= 0.10


@pytest.fixture(scope="module", params=list(SCHEMES))
def packed(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    model, report = quantized_tiny(SCHEMES[request.param])
    dense = save_pruned(model, None, report, folder / "dense")
    return SCHEMES[request.param], dense, pack_checkpoint(dense, folder / "compact")


def test_quantized_pack_layout_record_and_sizes(packed):
    scheme, dense_dir, result = packed
    record = json.loads((result.out / "compact.json").read_text())
    assert record["schema_version"] == 2 and record["quantization"] == scheme.to_dict() == result.quantization
    assert len(record["layers"]) == result.layers == 14 and record["layers"][0]["dtype"] == "float32"
    grids = load_file(dense_dir / GRID_FILE)
    dense = load_file(dense_dir / "model.safetensors")
    compact = 0
    with safe_open(str(result.out / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        for layer in record["layers"]:
            key, (rows, cols) = f"{layer['name']}.weight", layer["shape"]
            assert key not in keys and f"{key}.values" not in keys
            qvalues, bitmask = handle.get_tensor(f"{key}.qvalues"), handle.get_tensor(f"{key}.bitmask")
            assert qvalues.dtype == (torch.int8 if scheme.bits == 8 else torch.uint8)
            assert list(qvalues.shape) == [rows, cols // 2 if scheme.bits == 8 else cols // 4]
            assert torch.equal(handle.get_tensor(f"{key}.scales"), grids[f"{key}.scales"])
            assert (f"{key}.zeros" in keys) == (not scheme.symmetric)
            if not scheme.symmetric:
                assert torch.equal(handle.get_tensor(f"{key}.zeros"), grids[f"{key}.zeros"])
            assert torch.equal(bitmask, compress(dense[key], Pattern(2, 4))[1])
            compact += sum(handle.get_tensor(k).nbytes for k in keys if k.startswith(f"{key}."))
    assert result.pruned_compact_bytes == compact
    assert result.pruned_dense_bytes == sum(4 * l["shape"][0] * l["shape"][1] for l in record["layers"])
    assert result.file_dense_bytes == (dense_dir / "model.safetensors").stat().st_size  # not the grid file
    assert GRID_FILE not in {p.name for p in result.out.iterdir()}  # the grids are in the weights now
    copied = json.loads((result.out / "sparsity.json").read_text())
    assert copied["quantization"] == {**scheme.to_dict(), "file": "model.safetensors", "head": None}
    assert copied["layers"] == json.loads((dense_dir / "sparsity.json").read_text())["layers"]
    with pytest.raises(VerifyError, match=r"is packed \(compact.json\); verify checks the dense checkpoint"):
        verify_checkpoint(result.out)


def test_quantized_pack_loads_the_dequantized_model_bit_for_bit(packed):
    _, dense_dir, result = packed
    dense = AutoModelForCausalLM.from_pretrained(dense_dir).eval()
    loaded = load_compact(result.out)
    expected, actual = dense.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, dense(ids).logits)


def test_bfloat16_quantized_checkpoints_load_bit_for_bit(tmp_path):
    model, report = quantized_tiny(SCHEMES["int4-g32-asym"])
    model = model.to(torch.bfloat16)  # still on the grid: see test_quantized_layers_round_trip_bit_for_bit
    result = pack_checkpoint(save_pruned(model, None, report, tmp_path / "dense"), tmp_path / "compact")
    assert json.loads((result.out / "compact.json").read_text())["layers"][0]["dtype"] == "bfloat16"
    loaded = load_compact(result.out)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key].view(torch.int16), tensor.view(torch.int16)), key


def test_quantized_fused_experts_load_bit_for_bit(tmp_path):
    model, report = quantized_tiny(SCHEMES["int4-g32"], "mixtral", "sparsegpt")
    dense = save_pruned(model, None, report, tmp_path / "dense")
    result = pack_checkpoint(dense, tmp_path / "compact")
    record = json.loads((result.out / "compact.json").read_text())
    assert any(layer.get("expert") for layer in record["layers"])
    state = load_compact_state_dict(result.out)
    for key, tensor in load_compact(result.out).state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key]), key
    assert not any(key.endswith((".qvalues", ".scales", ".bitmask")) for key in state)


def test_pack_names_the_layer_off_its_grid_and_a_missing_grid_file(tmp_path):
    model, report = quantized_tiny(SCHEMES["int8"])
    dense = save_pruned(model, None, report, tmp_path / "dense")
    weights = load_file(dense / "model.safetensors")
    key = "model.layers.1.mlp.up_proj.weight"
    column = int((weights[key][5] != 0).nonzero()[0, 0])
    weights[key][5, column] *= 1.001
    save_file(weights, dense / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"^model\.layers\.1\.mlp\.up_proj: 1 kept weights lie off its int8 grid \(first at row 5\)$"
    ):
        pack_checkpoint(dense, tmp_path / "compact")
    (dense / GRID_FILE).unlink()
    with pytest.raises(ValueError, match=f"was quantized \\(int8\\) but its grid file {GRID_FILE} is missing"):
        pack_checkpoint(dense, tmp_path / "compact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense"]


def test_version_1_folders_still_load_and_other_versions_are_refused(tmp_path):
    model, report = pruned_tiny("llama")
    result = pack_checkpoint(save_pruned(model, None, report, tmp_path / "dense"), tmp_path / "compact")
    path = result.out / "compact.json"
    record = json.loads(path.read_text())
    del record["quantization"], record["head"]
    path.write_text(json.dumps({**record, "schema_version": 1}))
    for key, tensor in load_compact(result.out).state_dict().items():
        assert torch.equal(tensor, model.state_dict()[key]), key
    ids = torch.randint(2, 300, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(load_sparse(result.out)(ids).logits, model(ids).logits)
    path.write_text(json.dumps({**record, "schema_version": 4}))
    with pytest.raises(ValueError, match="is not an eggs-ptp compact record of schema version 1, 2 or 3"):
        load_compact(result.out)
