"""Misuse a demanding user tries: every case ends in one ``error:`` line (exit 2), or in success
where success is right, with the input untouched and nothing stale left beside the output."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eggs_ptp.cli import main

from helpers import SRC, one_error_line, pruned_checkpoint, run_cli, tiny_model


def prune_args(model, out, calib, *extra):
    return ["prune", model, "-o", out, "--nsamples", 2, "--seqlen", 16, "--calib", calib, "-q", *extra]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def beside(path: Path) -> list[str]:
    """Hidden entries next to ``path`` that a run may leave: progress, staging, lock."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- never write over the input, the working folder, or through a file


@pytest.mark.parametrize("low_memory", [False, True], ids=["in-memory", "low-memory"])
@pytest.mark.parametrize(
    "target, relation",
    [(".", "is the input"), ("sub", "is inside the input"), ("..", "contains the input")],
    ids=["same", "inside", "around"],
)
def test_the_input_model_is_never_written_over(tiny_llama_dir, text_file, target, relation, low_memory):
    before = digest(tiny_llama_dir)
    out = (tiny_llama_dir / target).resolve() if target != "." else tiny_llama_dir
    extra = ("--overwrite",) + (("--low-memory",) if low_memory else ())
    assert relation in one_error_line(run_cli(*prune_args(tiny_llama_dir, out, text_file, *extra)))
    assert digest(tiny_llama_dir) == before and not (tiny_llama_dir / "sub").exists()


def test_a_symlink_to_the_input_is_resolved(tiny_llama_dir, text_file, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tiny_llama_dir)
    assert "is the input" in one_error_line(run_cli(*prune_args(tiny_llama_dir, link, text_file, "--overwrite")))


def test_the_working_folder_is_never_the_output(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(*prune_args(tiny_llama_dir, out, text_file)).exit_code == 0
    monkeypatch.chdir(out)
    before = digest(out)
    line = one_error_line(run_cli(*prune_args(tiny_llama_dir, ".", text_file, "--overwrite")))
    assert "current folder" in line and digest(out) == before


def test_an_output_below_a_file_is_refused_before_any_work(tiny_llama_dir, text_file, tmp_path):
    (tmp_path / "plain").write_text("x")
    line = one_error_line(run_cli(*prune_args(tiny_llama_dir, tmp_path / "plain" / "a" / "b", text_file)))
    assert "is a file, not a folder" in line


def test_missing_parents_of_a_failed_run_are_removed(tiny_llama_dir, tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    one_error_line(run_cli(*prune_args(tiny_llama_dir, out, tmp_path / "no-such-text.txt")))
    assert not (tmp_path / "new").exists()


# --- remote code


def _custom_code_model(folder: Path, marker: Path) -> Path:
    """A tiny Llama whose config names its own Python classes (``auto_map``); importing them
    writes ``marker``, so a test can tell whether the code ran."""
    tiny_model("llama").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="tiny_custom",
        auto_map={"AutoConfig": "configuration_tiny.TinyConfig", "AutoModelForCausalLM": "modeling_tiny.TinyLM"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_tiny.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'tiny_custom'\n"
    )
    (folder / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
        "class TinyLM(LlamaForCausalLM):\n    config_class = TinyConfig\n"
    )
    return folder


@pytest.fixture
def custom_code_model(tmp_path, tokenizer):
    folder = _custom_code_model(tmp_path / "custom", tmp_path / "RAN")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "command",
    [
        lambda model, tmp: prune_args(model, tmp / "out", tmp / "calib.txt"),
        lambda model, tmp: [*prune_args(model, tmp / "out", tmp / "calib.txt"), "--low-memory"],
        lambda model, tmp: ["eval", model, "--text", tmp / "calib.txt", "--seqlen", 16, "-q"],
        lambda model, tmp: ["inspect", model, "--out", tmp / "inspect", "-q"],
    ],
    ids=["prune", "prune-low-memory", "eval", "inspect"],
)
def test_a_model_that_ships_code_is_refused_unless_trusted(custom_code_model, tmp_path, calib, command):
    (tmp_path / "calib.txt").write_text(calib.read_text())
    line = one_error_line(run_cli(*command(custom_code_model, tmp_path)))
    assert "--trust-remote-code" in line and not (tmp_path / "RAN").exists()
    assert not (tmp_path / "out").exists() and beside(tmp_path / "out") == []


def test_trusted_code_runs_and_prunes(custom_code_model, tmp_path, calib):
    result = run_cli(*prune_args(custom_code_model, tmp_path / "out", calib, "--trust-remote-code"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "RAN").exists() and run_cli("verify", tmp_path / "out").exit_code == 0


def test_no_prompt_appears_on_a_terminal(custom_code_model, tmp_path, calib):
    """transformers asks ``[y/N]`` when it may; answering ``y`` on a real terminal must change nothing."""
    main_fd, child_fd = pty.openpty()
    environment = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "eggs_ptp", *map(str, prune_args(custom_code_model, tmp_path / "out", calib))]
    os.write(main_fd, b"y\ny\n")
    done = subprocess.run(command, stdin=child_fd, capture_output=True, text=True, env=environment, timeout=300)
    os.close(child_fd)
    os.close(main_fd)
    assert done.returncode == 2 and "--trust-remote-code" in done.stderr, done.stderr
    assert not (tmp_path / "RAN").exists() and "[y/N]" not in done.stdout + done.stderr


# --- files that cannot be read


@pytest.mark.parametrize("low_memory", [False, True], ids=["in-memory", "low-memory"])
def test_a_truncated_model_is_named(tiny_llama_dir, text_file, tmp_path, low_memory):
    truncate(tiny_llama_dir / "model.safetensors")
    extra = ("--low-memory",) if low_memory else ()
    line = one_error_line(run_cli(*prune_args(tiny_llama_dir, tmp_path / "out", text_file, *extra)))
    assert "model.safetensors is not a readable safetensors file" in line and "truncated" in line
    assert not (tmp_path / "out").exists() and beside(tmp_path / "out") == []


@pytest.mark.parametrize("command", ["verify", "pack", "eval", "inspect", "bench"])
def test_a_truncated_checkpoint_is_named(tmp_path, command):
    folder, _ = pruned_checkpoint(tmp_path / "ckpt")
    truncate(folder / "model.safetensors")
    extra = {"pack": [tmp_path / "packed"], "inspect": ["--out", tmp_path / "i", "-q"], "bench": ["-q"]}
    line = one_error_line(run_cli(command, folder, *extra.get(command, [])))
    assert "model.safetensors is not a readable safetensors file" in line


def test_a_malicious_pickle_is_refused_without_running(tiny_llama_dir, text_file, tmp_path):
    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (tiny_llama_dir / "model.safetensors").unlink()
    with open(tiny_llama_dir / "pytorch_model.bin", "wb") as stream:
        pickle.dump({"model.embed_tokens.weight": Payload()}, stream)
    line = one_error_line(run_cli(*prune_args(tiny_llama_dir, tmp_path / "out", text_file)))
    assert "pickle" in line and "refused" in line and not marker.exists()


@pytest.mark.parametrize("command", ["verify", "pack", "inspect", "bench"])
@pytest.mark.parametrize("damage", [b"{broken", b"\xff\xfe not utf-8"], ids=["json", "utf8"])
def test_a_broken_record_is_named(tmp_path, command, damage):
    folder, _ = pruned_checkpoint(tmp_path / "ckpt")
    (folder / "sparsity.json").write_bytes(damage)
    extra = {"pack": [tmp_path / "packed"], "inspect": ["--out", tmp_path / "i", "-q"], "bench": ["-q"]}
    line = one_error_line(run_cli(command, folder, *extra.get(command, [])))
    assert "sparsity.json is not" in line and ("valid JSON" in line or "UTF-8" in line)


@pytest.mark.parametrize("damage", [b"\xff\xfe not utf-8"])
def test_a_calibration_text_that_is_not_utf8_is_named(tiny_llama_dir, tmp_path, damage):
    text = tmp_path / "bad.txt"
    text.write_bytes(damage)
    assert "bad.txt is not UTF-8 text" in one_error_line(run_cli(*prune_args(tiny_llama_dir, tmp_path / "o", text)))


def test_clear_messages_for_missing_things(tiny_llama_dir, tmp_path):
    assert "does not exist" in one_error_line(run_cli("verify", tmp_path / "nowhere"))
    line = one_error_line(run_cli("eval", tiny_llama_dir, "--text", tmp_path / "nowhere.txt", "-q"))
    assert "text file" in line and "does not exist" in line


# --- window counts


@pytest.mark.parametrize("windows", [0, -3])
def test_eval_window_counts_are_validated(tiny_llama_dir, text_file, windows):
    result = run_cli("eval", tiny_llama_dir, "--text", text_file, "--windows", windows, "--seqlen", 16, "-q")
    assert result.exit_code == 2 and "--windows" in result.output and "Traceback" not in result.output


def test_prune_eval_windows_are_validated_before_work(tiny_llama_dir, text_file, tmp_path):
    line = one_error_line(
        run_cli(*prune_args(tiny_llama_dir, tmp_path / "o", text_file, "--eval", "--eval-windows", 0))
    )
    assert "--eval-windows must be at least 1" in line and not (tmp_path / "o").exists()


# --- leftovers


def test_a_run_that_can_prune_nothing_leaves_nothing(tiny_llama_dir, text_file, tmp_path):
    out = tmp_path / "out"
    line = one_error_line(run_cli(*prune_args(tiny_llama_dir, out, text_file, "--pattern", "2:3")))
    assert "no layer can be pruned" in line
    assert not out.exists() and beside(out) == []
    assert run_cli(*prune_args(tiny_llama_dir, out, text_file)).exit_code == 0  # not refused as interrupted


def test_nan_activations_remove_the_progress(tiny_llama_dir, text_file, tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tiny_llama_dir)
    out = tmp_path / "out"
    assert "NaN" in one_error_line(run_cli(*prune_args(tiny_llama_dir, out, text_file)))
    assert beside(out) == []


# --- verify checks the record against itself


def _edit_record(folder: Path, edit) -> None:
    record = json.loads((folder / "sparsity.json").read_text())
    edit(record)
    (folder / "sparsity.json").write_text(json.dumps(record))


def _swap_first_oblong(layers: list[dict]) -> None:
    """Record the first non-square layer as (in, out): same size, so only the shape check can tell."""
    layer = next(layer for layer in layers if layer["shape"][0] != layer["shape"][1])
    layer["shape"] = layer["shape"][::-1]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(layers=[]), "the record lists 0 pruned layers but its summary says 14"),
        (lambda r: r.update(layers=r["layers"][:3]), "the record lists 3 pruned layers but its summary says 14"),
        (
            lambda r: r["summary"].update(pruned_layers=0, pruned_weights=0, layers=[]) or r.update(layers=[]),
            "the record lists no pruned layer",
        ),
        (lambda r: _swap_first_oblong(r["layers"]), "k_proj: shape [16, 32] is not the recorded [32, 16]"),
        (lambda r: r["layers"][0].update(pattern="7:4"), "unreadable pattern"),
        (lambda r: r["layers"].append(dict(r["layers"][0])), "more than once"),
        (lambda r: r["layers"][0].update(name="model.layers.0.nowhere"), "is missing from the checkpoint"),
        (lambda r: r["layers"][0].pop("shape"), "lacks a name, shape or transposed flag"),
        (lambda r: r["layers"][0].update(kept_fraction=0.25), "more than the recorded 0.2500"),
    ],
    ids=["emptied", "truncated", "no-layer", "shape", "pattern", "duplicate", "missing", "malformed", "kept"],
)
def test_verify_fails_a_record_that_disagrees_with_itself(tmp_path, edit, message):
    folder, _ = pruned_checkpoint(tmp_path / "ckpt")
    _edit_record(folder, edit)
    result = run_cli("verify", folder)
    assert result.exit_code == 1 and message in result.stderr, result.stderr


# --- permissions follow the umask


@pytest.mark.parametrize("mask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_get_the_umask_modes(tiny_llama_dir, text_file, tmp_path, mask, folder_mode, file_mode):
    previous = os.umask(mask)
    try:
        out = tmp_path / "out"
        assert run_cli(*prune_args(tiny_llama_dir, out, text_file)).exit_code == 0
        packed = tmp_path / "packed"
        assert run_cli("pack", out, packed).exit_code == 0
    finally:
        os.umask(previous)
    for folder in (out, packed):
        assert folder.stat().st_mode & 0o777 == folder_mode
        assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {file_mode}


# --- tracebacks on request


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    folder, _ = pruned_checkpoint(tmp_path / "ckpt")
    truncate(folder / "model.safetensors")
    from click.testing import CliRunner

    for runner_args, environment in [
        (["--debug", "pack", folder, tmp_path / "p"], {}),
        (["pack", folder, tmp_path / "p"], {"EGGS_PTP_DEBUG": "1"}),
    ]:
        result = CliRunner(env=environment).invoke(main, [str(a) for a in runner_args])
        assert result.exit_code == 1 and result.exception is not None and "error:" not in result.stderr
