"""Masks from eggs-ptp checkpoints, from other tools' zero-filled checkpoints, and from dense models."""

import pytest
import torch

from eggs_ptp.graph import infer_nm, open_masks, select_layers
from eggs_ptp.models import ModelError, find_blocks, find_linears

from helpers import pruned_checkpoint, tiny_model


def model_masks(model):
    prefix, blocks = find_blocks(model)
    return {l.name: l.weight != 0 for i, b in enumerate(blocks) for l in find_linears(b, f"{prefix}.{i}")}


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("graph") / "llama-2of4"
    return pruned_checkpoint(folder, "llama", "2:4", tokenizer)


def test_checkpoint_masks_follow_the_record(llama):
    folder, model = llama
    source = open_masks(folder)
    assert (source.has_report, source.method, source.pattern, source.dense) == (True, "ria", "2:4", False)
    expected = model_masks(model)
    masks = list(source.masks())
    assert [m.name for m in masks] == list(expected)
    for layer in masks:
        assert torch.equal(layer.mask, expected[layer.name]) and layer.recon_error is not None
        assert infer_nm(layer.mask) == (2, 4)


def test_gpt2_conv1d_masks_are_out_by_in(tmp_path):
    _, model = pruned_checkpoint(tmp_path / "gpt2", "gpt2", "4:8")
    masks = {m.name: m for m in open_masks(tmp_path / "gpt2").masks()}
    fc = masks["transformer.h.0.mlp.c_fc"]
    assert fc.transposed and fc.mask.shape == (64, 32)  # stored (32, 64) by Conv1D
    assert torch.equal(fc.mask, model.transformer.h[0].mlp.c_fc.weight.T != 0)
    assert infer_nm(fc.mask) == (4, 8)


def test_checkpoint_from_another_tool_is_read_from_its_zeros(llama):
    folder, model = llama
    other = folder.parent / "no-record"
    other.mkdir()
    for path in folder.iterdir():
        if path.name != "sparsity.json":
            (other / path.name).write_bytes(path.read_bytes())
    source = open_masks(other)
    assert (source.has_report, source.pattern, source.pattern_inferred, source.dense) == (False, "2:4", True, False)
    expected = model_masks(model)
    assert all(torch.equal(m.mask, expected[m.name]) and m.recon_error is None for m in source.masks())


def test_dense_model_is_reported_dense(tiny_llama_dir):
    source = open_masks(tiny_llama_dir)
    assert source.dense and source.pattern is None and len(source.layers) == 14


def test_layers_by_exact_name_or_glob(llama):
    folder, _ = llama
    assert [l.name for l in open_masks(folder, ["model.layers.1.mlp.up_proj"]).layers] == ["model.layers.1.mlp.up_proj"]
    assert len(open_masks(folder, ["*.mlp.*", "*.q_proj"]).layers) == 8


def test_unknown_layer_names_it_and_lists_valid_ones(llama):
    folder, _ = llama
    with pytest.raises(
        ValueError, match=r"'model.layers.9.mlp.up_proj'.*model\.layers\.0\.self_attn\.q_proj"
    ) as caught:
        open_masks(folder, ["model.layers.9.mlp.up_proj"])
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="no layer named or matching"):
        select_layers(["a.b"], ["a.c*"])


def test_infer_nm():
    assert infer_nm(torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0]]).bool()) == (2, 4)
    four_eight = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 1]]).bool()  # 3 then 1 in the halves
    assert infer_nm(four_eight) == (4, 8)
    assert infer_nm(torch.ones(2, 8, dtype=torch.bool)) is None
    assert infer_nm(torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]).bool()) is None  # rows differ


def test_paths_that_are_not_models(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    with pytest.raises(ModelError, match="not a model folder"):
        open_masks(tmp_path / "notes")
    with pytest.raises(ModelError, match="does not exist"):
        open_masks(tmp_path / "missing")


def test_model_without_tokenizer_is_a_one_line_error(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "bare")
    with pytest.raises(ModelError, match="tokenizer") as caught:
        open_masks(tmp_path / "bare")
    assert "\n" not in str(caught.value)
