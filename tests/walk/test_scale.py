"""Scale: the memory-bounded walk, kill-and-resume, and data-parallel calibration over gloo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TEXT, one_error_line, tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import eggs_ptp.walk.resume as resume_module
from eggs_ptp import PruneConfig, RunOptions
from eggs_ptp.api import prune_to_folder
from eggs_ptp.cli import main
from eggs_ptp.walk.resume import ResumeError, completed_blocks

SRC = Path(__file__).resolve().parents[2] / "src"
LOW_MEMORY = RunOptions(low_memory=True, device="cpu", progress=False)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    """A tiny Llama with 4 blocks, saved as safetensors in bfloat16 like a hub checkpoint."""
    folder = tmp_path / "tiny"
    tiny_model("llama", num_hidden_layers=4).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def python(*args: object) -> subprocess.CompletedProcess:
    """A fresh interpreter running this checkout's eggs_ptp, as torchrun's workers would."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *map(str, args)], check=False, env=environment, capture_output=True,
                          text=True, timeout=300)


def prune_args(model_dir, out, calib, *extra):
    return ["prune", model_dir, "-o", out, "--nsamples", 4, "--seqlen", 16, "--calib", calib, "-q", *extra]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_low_memory_walk_equals_in_memory_walk(model_dir, calib, tmp_path, method):
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    assert run(*prune_args(model_dir, full, calib, "--method", method)).exit_code == 0
    result = run(*prune_args(model_dir, lazy, calib, "--method", method, "--low-memory"))
    assert result.exit_code == 0, result.output
    assert_same_weights(full, lazy)
    assert (lazy / "model.safetensors.index.json").is_file()
    report = json.loads((lazy / "sparsity.json").read_text())
    assert report["model"]["low_memory"] and report["summary"]["peak_rss_mb"] > 0
    assert report["model"]["checkpoint_bytes"] > 0
    assert run("verify", lazy).exit_code == 0
    ids = torch.arange(2, 12).unsqueeze(0)
    with torch.no_grad():  # a standard sharded checkpoint: transformers loads it as it loads the other
        logits = [AutoModelForCausalLM.from_pretrained(f).eval()(ids).logits for f in (full, lazy)]
    assert torch.equal(*logits)


def test_low_memory_with_offloaded_bf16_activations_matches_in_memory(model_dir, calib, tmp_path):
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    extra = ("--method", "wanda", "--activation-dtype", "bfloat16")
    assert run(*prune_args(model_dir, full, calib, *extra)).exit_code == 0
    offload = tmp_path / "activations"
    assert run(*prune_args(model_dir, lazy, calib, *extra, "--low-memory", "--offload-dir", offload)).exit_code == 0
    assert_same_weights(full, lazy)
    assert not any(offload.rglob("*.safetensors"))  # cleaned up as the walk moved on


def test_gpt2_checkpoint_names_map_to_its_parameters(tmp_path, tokenizer, calib):
    folder = tmp_path / "gpt2"
    tiny_model("gpt2").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    full, lazy = tmp_path / "full", tmp_path / "lazy"
    assert run(*prune_args(folder, full, calib, "--method", "ria")).exit_code == 0
    assert run(*prune_args(folder, lazy, calib, "--method", "ria", "--low-memory")).exit_code == 0
    assert_same_weights(full, lazy)


class Killed(Exception):
    """Stands in for the process dying."""


def kill_after_block(monkeypatch, block: int) -> None:
    original = resume_module.RunProgress.save_block

    def save_then_die(self, index, *args, **kwargs):
        original(self, index, *args, **kwargs)
        if index == block:
            raise Killed

    monkeypatch.setattr(resume_module.RunProgress, "save_block", save_then_die)


@pytest.mark.parametrize("low_memory", [False, True], ids=["in-memory", "low-memory"])
def test_kill_and_resume_equals_an_uninterrupted_run(model_dir, calib, tmp_path, monkeypatch, low_memory):
    extra = ("--method", "sparsegpt", "--permute") + (("--low-memory",) if low_memory else ())
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run(*prune_args(model_dir, reference, calib, *extra)).exit_code == 0
    with monkeypatch.context() as patch:
        kill_after_block(patch, 1)
        result = run(*prune_args(model_dir, resumed, calib, *extra))
        assert isinstance(result.exception, Killed)
    assert not resumed.exists() and (tmp_path / ".resumed.progress" / "state.json").is_file()
    again = run(*prune_args(model_dir, resumed, calib, *extra))
    assert "--resume" in one_error_line(again)  # progress is never silently thrown away
    result = run(*prune_args(model_dir, resumed, calib, *extra, "--resume"))
    assert result.exit_code == 0, result.output
    assert "resumed at block 2" in result.output
    assert_same_weights(reference, resumed)
    def layers(folder):
        return [{k: v for k, v in layer.items() if k != "seconds"}
                for layer in json.loads((folder / "sparsity.json").read_text())["layers"]]

    assert layers(resumed) == layers(reference) and len(layers(resumed)) == 28
    assert not (tmp_path / ".resumed.progress").exists()


def test_resume_with_a_changed_pattern_is_refused(model_dir, calib, tmp_path, monkeypatch):
    out = tmp_path / "o"
    with monkeypatch.context() as patch:
        kill_after_block(patch, 0)
        assert isinstance(run(*prune_args(model_dir, out, calib, "--method", "wanda")).exception, Killed)
    line = one_error_line(run(*prune_args(model_dir, out, calib, "--method", "wanda", "--pattern", "4:8", "--resume")))
    assert "cannot resume" in line and "config.pattern was '2:4', now '4:8'" in line


def test_resume_through_the_api_refuses_a_changed_seed(model_dir, calib, tmp_path, monkeypatch):
    config = PruneConfig(method="wanda", nsamples=4, seqlen=16, calib=str(calib))
    with monkeypatch.context() as patch:
        kill_after_block(patch, 0)
        with pytest.raises(Killed):
            prune_to_folder(model_dir, tmp_path / "o", config, LOW_MEMORY)
    with pytest.raises(ResumeError, match="config.seed was 0, now 1"):
        prune_to_folder(model_dir, tmp_path / "o", config.replace(seed=1), LOW_MEMORY.replace(resume=True))


def test_offload_dir_on_a_read_only_path_is_one_clear_line(model_dir, calib, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere on a normal file system; /proc refuses even root
        offload = Path("/proc/eggs-ptp-offload")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        offload = locked / "activations"
    line = one_error_line(run(*prune_args(model_dir, tmp_path / "o", calib, "--offload-dir", offload)))
    assert f"cannot write activations to {offload}" in line and "--offload-dir" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.progress").exists()


@pytest.mark.parametrize("method, extra", [("wanda", ()), ("sparsegpt", ()), ("ria", ("--low-memory", "--permute"))])
def test_two_gloo_processes_equal_one(model_dir, calib, tmp_path, method, extra):
    single, double = tmp_path / "single", tmp_path / "double"
    assert run(*prune_args(model_dir, single, calib, "--method", method, "--nsamples", 6, *extra)).exit_code == 0
    finished = python("-m", "eggs_ptp", *prune_args(model_dir, double, calib, "--method", method, "--nsamples", 6,
                                                    "--nproc", 2, *extra))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("saved to") == 1  # only rank 0 writes and reports
    left, right = weights(single), weights(double)
    for key in left:
        assert torch.equal(left[key] != 0, right[key] != 0), f"mask of {key}"
        torch.testing.assert_close(left[key], right[key], rtol=2e-2, atol=2e-2, msg=key)
    report = json.loads((double / "sparsity.json").read_text())
    assert report["calibration"]["nsamples"] == 6


KILL_AFTER_BLOCK_1 = """
import os, sys
import eggs_ptp.walk.resume as resume
from eggs_ptp.cli import main

original = resume.RunProgress.save_block

def save_then_die(self, index, *args, **kwargs):
    original(self, index, *args, **kwargs)
    if index == 1:
        os._exit(9)

resume.RunProgress.save_block = save_then_die
sys.argv[0] = "eggs-ptp"
main()
"""


@pytest.mark.slow
def test_two_gloo_processes_resume_where_they_were_killed(model_dir, calib, tmp_path):
    killer = tmp_path / "kill_after_block_1.py"
    killer.write_text(KILL_AFTER_BLOCK_1, encoding="utf-8")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    args = ("--method", "sparsegpt", "--nsamples", 6)

    finished = python("-m", "eggs_ptp", *prune_args(model_dir, reference, calib, *args, "--nproc", 2))
    assert finished.returncode == 0, finished.stderr[-3000:]
    killed = python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", 2, killer,
                    *prune_args(model_dir, resumed, calib, *args))
    assert killed.returncode != 0 and not resumed.exists()
    progress = tmp_path / ".resumed.progress"
    assert completed_blocks(progress) == 2
    assert sorted(path.name for path in (progress / "inputs-00002").iterdir()) == ["rank-0", "rank-1"]
    finished = python("-m", "eggs_ptp", *prune_args(model_dir, resumed, calib, *args, "--nproc", 2, "--resume"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resumed at block 2" in finished.stdout
    assert_same_weights(reference, resumed)
    assert not progress.exists()


def test_ctrl_c_after_a_block_says_how_to_resume(model_dir, calib, tmp_path, monkeypatch):
    original = resume_module.RunProgress.save_block

    def save_then_interrupt(self, index, *args, **kwargs):
        original(self, index, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(resume_module.RunProgress, "save_block", save_then_interrupt)
    result = run(*prune_args(model_dir, tmp_path / "o", calib, "--low-memory"))
    assert result.exit_code == 130
    assert "interrupted after 1 blocks" in result.stderr and "--resume" in result.stderr
    assert (tmp_path / ".o.progress" / "state.json").is_file()


def test_device_map_places_the_model_and_gives_the_same_result(model_dir, calib, tmp_path):
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    assert run(*prune_args(model_dir, plain, calib, "--method", "wanda", "--device", "cpu")).exit_code == 0
    result = run(*prune_args(model_dir, mapped, calib, "--method", "wanda", "--device-map", "auto"))
    assert result.exit_code == 0, result.output
    assert_same_weights(plain, mapped)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_it_is_one_line(model_dir, calib, tmp_path):
    line = one_error_line(run(*prune_args(model_dir, tmp_path / "o", calib, "--device", "cuda")))
    assert "no CUDA device" in line and "--device cpu" in line


def test_low_memory_refuses_eval_and_device_map(model_dir, calib, tmp_path):
    result = run(*prune_args(model_dir, tmp_path / "o", calib, "--low-memory", "--eval"))
    assert result.exit_code == 2 and "eggs-ptp eval" in result.output
