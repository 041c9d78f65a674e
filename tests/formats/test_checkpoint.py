import json

import pytest
import torch

from eggs_ptp import PruneConfig
from eggs_ptp.formats import (
    OutputExistsError,
    VerifyError,
    check_output_target,
    pattern_violations,
    save_pruned,
    verify_checkpoint,
    write_json_atomic,
)
from eggs_ptp.pattern import Pattern

from helpers import pruned_tiny


def test_pattern_violations_counts_and_locates():
    weight = torch.tensor([[1.0, 2.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    violation = pattern_violations(weight, Pattern(2, 4))
    assert (violation.count, violation.row, violation.group) == (1, 0, 1)
    assert pattern_violations(weight[:, :4], Pattern(2, 4)) is None


def test_negative_zero_counts_as_pruned():
    weight = torch.tensor([[1.0, -0.0, 2.0, -0.0]])
    assert pattern_violations(weight, Pattern(2, 4)) is None


def test_save_then_verify_round_trip(tmp_path, tokenizer):
    model, report = pruned_tiny()
    out = save_pruned(model, tokenizer, report, tmp_path / "out")
    assert verify_checkpoint(out) == len(report.pruned_layers)
    record = json.loads((out / "sparsity.json").read_text())
    assert record["method"] == "ria" and record["pattern"] == "2:4"
    assert record["config"]["type"] == "PruneConfig"
    assert record["stages"]["score"].startswith("RiaScore(alpha=0.5")
    assert PruneConfig.from_dict(record["config"]) == report.config
    assert {"torch", "transformers", "eggs-ptp"} <= set(record["versions"])
    assert all(layer["recon_error"] is not None for layer in record["layers"])
    assert (out / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_verify_handles_gpt2_conv1d(tmp_path):
    model, report = pruned_tiny("gpt2", "wanda", "4:8")
    assert verify_checkpoint(save_pruned(model, None, report, tmp_path / "gpt2")) > 0


def test_verify_names_the_first_offending_layer(tmp_path):
    model, report = pruned_tiny()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.fill_(1.0)
        model.model.layers[1].mlp.down_proj.weight.fill_(1.0)
    out = save_pruned(model, None, report, tmp_path / "bad")
    with pytest.raises(VerifyError, match=r"model\.layers\.1\.mlp\.up_proj breaks pattern 2:4"):
        verify_checkpoint(out)


def test_existing_output_is_refused_then_replaced_on_request(tmp_path):
    model, report = pruned_tiny()
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_pruned(model, None, report, out)
    assert (out / "mine.txt").read_text() == "user data"
    save_pruned(model, None, report, out, overwrite=True)
    assert not (out / "mine.txt").exists() and verify_checkpoint(out)


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    check_output_target(tmp_path / "empty", overwrite=False)


def test_interrupted_save_leaves_neither_target_nor_staging(tmp_path, monkeypatch):
    model, report = pruned_tiny()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(model), "save_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pruned(model, None, report, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model, report = pruned_tiny()
    out = save_pruned(model, None, report, tmp_path / "out")
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setattr(type(model), "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_pruned(model, None, report, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert verify_checkpoint(out)


def test_write_json_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_verify_without_record_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no sparsity.json"):
        verify_checkpoint(tmp_path)
