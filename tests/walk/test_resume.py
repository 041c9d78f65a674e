"""A killed run resumes where it stopped, bit for bit; a changed run is refused; Ctrl-C says how to go on."""

import json

import pytest

import eggs_ptp.walk.resume as resume

from helpers import Killed, assert_same_weights, kill_after_block, one_error_line, prune_args, run_cli


@pytest.mark.parametrize("low_memory", [False, True], ids=["in-memory", "low-memory"])
@pytest.mark.parametrize(
    "method",
    [
        ("--method", "sparsegpt", "--permute"),
        ("--method", "sparsegpt", "--target", "model", "--sequential"),
        ("--method", "sparsegpt", "--quantize", "int4", "--group-size", "32", "--asymmetric"),
    ],
    ids=["permute", "dense-target-sequential", "int4-grids"],
)
def test_kill_and_resume_equals_an_uninterrupted_run(model_dir, calib, tmp_path, monkeypatch, low_memory, method):
    """A dense-model target resumes with the dense model's stream as it was saved."""
    extra = method + (("--low-memory",) if low_memory else ())
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_cli(*prune_args(model_dir, reference, calib, *extra)).exit_code == 0
    with monkeypatch.context() as patch:
        kill_after_block(patch, 1)
        with pytest.raises(Killed):
            run_cli(*prune_args(model_dir, resumed, calib, *extra))
    assert not resumed.exists() and (tmp_path / ".resumed.progress" / "state.json").is_file()
    again = run_cli(*prune_args(model_dir, resumed, calib, *extra))
    assert "--resume" in one_error_line(again)  # progress is never silently thrown away
    result = run_cli(*prune_args(model_dir, resumed, calib, *extra, "--resume"))
    assert result.exit_code == 0, result.output
    assert "resumed at block 2" in result.output
    assert_same_weights(reference, resumed)

    def layers(folder):
        return [
            {k: v for k, v in layer.items() if k != "seconds"}
            for layer in json.loads((folder / "sparsity.json").read_text())["layers"]
        ]

    assert layers(resumed) == layers(reference) and len(layers(resumed)) == 28
    assert not (tmp_path / ".resumed.progress").exists()


def test_resume_with_a_changed_pattern_is_refused(model_dir, calib, tmp_path, monkeypatch):
    out = tmp_path / "o"
    with monkeypatch.context() as patch:
        kill_after_block(patch, 0)
        with pytest.raises(Killed):
            run_cli(*prune_args(model_dir, out, calib, "--method", "wanda"))
    line = one_error_line(
        run_cli(*prune_args(model_dir, out, calib, "--method", "wanda", "--pattern", "4:8", "--resume"))
    )
    assert "cannot resume" in line and "config.pattern was '2:4', now '4:8'" in line


def test_ctrl_c_after_a_block_says_how_to_resume(model_dir, calib, tmp_path, monkeypatch):
    original = resume.RunProgress.save_block

    def save_then_interrupt(self, index, *args, **kwargs):
        original(self, index, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(resume.RunProgress, "save_block", save_then_interrupt)
    result = run_cli(*prune_args(model_dir, tmp_path / "o", calib, "--low-memory"))
    assert result.exit_code == 130
    assert "interrupted after 1 blocks" in result.stderr and "--resume" in result.stderr
    assert (tmp_path / ".o.progress" / "state.json").is_file()
