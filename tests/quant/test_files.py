"""Grid files: a scheme per grid (the rounded output head is int8 beside int4 layers), and files
written before that, with one scheme for every grid, still load."""

import json

import torch
from safetensors.torch import save_file

from eggs_ptp.quant import HEAD_SCHEME, QuantScheme, load_grids, save_grids


def grid(scheme, rows=4, cols=64, seed=0):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    return scheme.fit(weight, torch.ones(rows, cols, dtype=torch.bool))


def test_each_grid_keeps_its_own_scheme(tmp_path):
    grids = {"layer": grid(QuantScheme(4, False, 32)), "lm_head": grid(HEAD_SCHEME, rows=6, seed=1)}
    save_grids(tmp_path / "g.safetensors", grids)
    loaded = load_grids(tmp_path / "g.safetensors")
    assert {name: g.scheme for name, g in loaded.items()} == {
        "layer": QuantScheme(4, False, 32),
        "lm_head": QuantScheme(8),
    }
    for name in grids:
        assert torch.equal(loaded[name].scales, grids[name].scales) and loaded[name].cols == 64
    assert loaded["layer"].zeros is not None and loaded["lm_head"].zeros is None


def test_a_file_with_one_scheme_for_all_still_loads(tmp_path):
    scheme = QuantScheme(4, True, 32)
    layer = grid(scheme)
    metadata = {"format": "pt", "quantization": json.dumps(scheme.to_dict()), "columns": json.dumps({"layer": 64})}
    save_file(layer.tensors("layer"), str(tmp_path / "old.safetensors"), metadata=metadata)
    loaded = load_grids(tmp_path / "old.safetensors")["layer"]
    assert loaded.scheme == scheme and torch.equal(loaded.scales, layer.scales)
