"""Activation stores, persisted progress and the rank arithmetic, on small tensors."""

import json
import os
from pathlib import Path

import pytest
import torch

from eggs_ptp.walk.activations import ActivationStore, persist, restore
from eggs_ptp.walk.distributed import Ranks
from eggs_ptp.walk.resume import ResumeError, RunProgress, completed_blocks
from eggs_ptp.walk.sequential import LayerReport

from helpers import one_error_line, prune_args, run_cli


def windows(count=3):
    return [torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(i)) for i in range(count)]


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_store_gives_back_what_it_was_given_in_its_dtype(tmp_path, on_disk):
    store = ActivationStore(torch.bfloat16, tmp_path / "w" if on_disk else None)
    for window in windows():
        store.append(window)
    assert len(store) == 3 and [w.dtype for w in store] == [torch.bfloat16] * 3
    assert torch.equal(store[-1], windows()[2].to(torch.bfloat16))
    with pytest.raises(IndexError):
        store[3]
    store.release()
    assert len(store) == 0 and not (tmp_path / "w").exists()


def test_a_memory_store_does_not_alias_the_callers_tensor():
    store = ActivationStore()
    window = torch.zeros(1, 2, 2)
    store.append(window)
    window += 1
    assert float(store[0].sum()) == 0.0


def test_persist_and_restore_round_trip_bit_for_bit(tmp_path):
    store = ActivationStore(torch.float32, tmp_path / "live")
    for window in windows():
        store.append(window)
    persist(store, tmp_path / "kept")
    again = restore(tmp_path / "kept", torch.float32, None)
    assert all(torch.equal(a, b) for a, b in zip(again, windows()))
    assert not list(tmp_path.glob(".kept*"))  # written beside, renamed into place


@pytest.mark.parametrize("rank, expected, first_eight", [(0, [0, 3, 6], 3), (1, [1, 4, 7], 3), (2, [2, 5], 2)])
def test_ranks_take_every_world_th_window(rank, expected, first_eight):
    ranks = Ranks(rank, 3, torch.device("cpu"))
    assert ranks.share(list(range(8))) == expected
    assert ranks.local_count(8) == first_eight
    assert ranks.is_writer == (rank == 0)


def test_state_is_the_commit_point_and_names_complete_inputs(tmp_path):
    progress = RunProgress(tmp_path / "p", {"config": {"pattern": "2:4"}})
    assert progress.open(resume=False, dtype=None, offload=None) is None
    store = ActivationStore()
    for window in windows():
        store.append(window)
    report = LayerReport("model.layers.0.mlp.up_proj", (4, 8), False, kept_fraction=0.5)
    progress.save_block(0, {"w": torch.ones(2)}, [report], store, None, 1.5)
    progress.save_block(1, {"w": torch.zeros(2)}, [report, report], store, None, 2.5)
    state = json.loads((tmp_path / "p" / "state.json").read_text())
    assert state["next_block"] == 2 and state["inputs"] == "inputs-00002"
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["blocks", "inputs-00002", "run.json", "state.json"]
    assert completed_blocks(tmp_path / "p") == 2
    resumed = RunProgress(tmp_path / "p", {"config": {"pattern": "2:4"}}).open(True, None, None)
    assert resumed.next_block == 2 and resumed.layers == [report, report] and resumed.seconds == 2.5
    assert all(torch.equal(a, b) for a, b in zip(resumed.inputs, windows()))
    with pytest.raises(ResumeError, match="config.pattern was '2:4', now '4:8'"):
        RunProgress(tmp_path / "p", {"config": {"pattern": "4:8"}}).open(True, None, None)
    with pytest.raises(ResumeError, match="--resume"):
        RunProgress(tmp_path / "p", {"config": {"pattern": "2:4"}}).open(False, None, None)


def test_offload_dir_on_a_read_only_path_is_one_clear_line(model_dir, calib, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere on a normal file system; /proc refuses even root
        offload = Path("/proc/eggs-ptp-offload")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        offload = locked / "activations"
    line = one_error_line(run_cli(*prune_args(model_dir, tmp_path / "o", calib, "--offload-dir", offload)))
    assert f"cannot write activations to {offload}" in line and "--offload-dir" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.progress").exists()
