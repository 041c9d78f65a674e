"""``eggs-ptp compare`` on a tiny model: every artefact, resume without recomputation, and --check."""

import base64
import json
import shutil

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from eggs_ptp import EggsConfig
from eggs_ptp.cli import main
from eggs_ptp.compare import CompareSpec, check_results, read_results, run_compare
from eggs_ptp.compare.runner import GridContext
from eggs_ptp.compare.summary import groups
from eggs_ptp.eval.harness import OFFLINE_TASK
from eggs_ptp.models import load_model

from helpers import TEXT, one_error_line, tiny_model


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def grid_args(model, out, text, *extra):
    return [
        "compare",
        model,
        "-o",
        out,
        "--methods",
        "magnitude,wanda",
        "--patterns",
        "2:4",
        "--seeds",
        "0,1",
        "--nsamples",
        2,
        "--seqlen",
        16,
        "--calib",
        text,
        "--eval-text",
        text,
        "--eval-windows",
        3,
        "--task-limit",
        6,
        "-q",
        *extra,
    ]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("compare")
    tiny_model("llama").save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def finished(workspace):
    """One 2 methods x 1 pattern x 2 seeds grid, run once for the whole module (read, never changed)."""
    result = run(*grid_args(workspace / "tiny", workspace / "grid", workspace / "text.txt", "--json"))
    assert result.exit_code == 0, result.output
    return workspace / "grid", result


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished grid folder, to change."""
    return shutil.copytree(finished[0], tmp_path / "grid")


def test_every_artefact_is_written(finished):
    out, result = finished
    assert sorted(p.name for p in out.iterdir()) == [
        "perplexity.png",
        "perplexity_vs_time.png",
        "report.html",
        "results.json",
        "results.md",
    ]
    record = read_results(out / "results.json")
    assert [row["key"] for row in record["cells"]] == [
        "magnitude|2:4|seed0",
        "wanda|2:4|seed0",
        "magnitude|2:4|seed1",
        "wanda|2:4|seed1",
    ]
    for row in record["cells"]:
        assert row["perplexity"] > 0 and 0 <= row["task"]["acc"] <= 1 and row["task"]["samples"] == 6
        assert row["prune_seconds"] > 0 and row["peak_rss_mb"] > 0 and row["kept_fraction"] == 0.5
    seed0, seed1 = record["cells"][0], record["cells"][2]
    assert seed1["same_as"] == seed0["key"] and seed1["perplexity"] == seed0["perplexity"]
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["cells"] == 4 and {g["method"] for g in payload["groups"]} == {"magnitude", "wanda"}
    assert "<- best" in result.stdout


def test_results_record_what_they_depend_on(finished):
    record = read_results(finished[0] / "results.json")
    assert len(record["model"]["weights_sha256"]) == 64 and record["model"]["class"] == "LlamaForCausalLM"
    assert record["calibration"] | {"nsamples": 2, "seqlen": 16, "seeds": [0, 1]} == record["calibration"]
    assert "text.txt" in record["calibration"]["source"] and record["calibration"]["sampling"]
    assert (record["evaluation"]["seqlen"], record["evaluation"]["windows"], record["evaluation"]["tokens"]) == (
        16,
        3,
        48,
    )
    assert record["task"]["task"] == OFFLINE_TASK and record["task"]["passages"] > 500
    assert record["task"]["limit"] == 6 and record["task"]["harness"]["harness"].startswith("lm-eval")
    session = record["sessions"][0]
    assert {"torch", "transformers", "lm_eval", "eggs-ptp"} <= set(session["versions"])
    assert {"cpu", "cpu_cores", "torch_threads", "device"} <= set(session["hardware"])
    assert session["command"].startswith("eggs-ptp compare ") and "--seeds 0,1" in session["command"]


def test_markdown_bolds_the_best_method_and_html_stands_alone(finished):
    out, _ = finished
    record = read_results(out / "results.json")
    best = [g for g in groups(record) if g.best]
    assert len(best) == 1 and best[0].perplexity == min(g.perplexity for g in groups(record))
    markdown = (out / "results.md").read_text()
    assert f"| **2:4** | **{best[0].method}** | **2** |" in markdown and "| dense |" in markdown
    stderr = record["dense"]["task"]["acc_stderr"]
    assert f"sampling standard error of ±{stderr:.3f}" in markdown  # the ± over seeds leaves it out
    page = (out / "report.html").read_text()
    assert "<table>" in page and '<tr class="best">' in page and f"<td>{best[0].method}</td>" in page
    images = page.count('src="data:image/png;base64,')
    assert images == 2 and "http" not in page.split("<body>")[1].split("<h2>Provenance")[0]
    encoded = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(encoded) == (out / "perplexity.png").read_bytes()


def test_resume_runs_only_the_missing_cells(copy, workspace, monkeypatch):
    record = read_results(copy / "results.json")
    kept = record["cells"][:2]
    (copy / "results.json").write_text(json.dumps({**record, "cells": kept}))
    ran = []
    run_cell, evaluate = GridContext.run_cell, GridContext.evaluate

    def spy_cell(self, cell, *args, **kwargs):
        ran.append(cell.key)
        return run_cell(self, cell, *args, **kwargs)

    def spy_evaluate(self):
        ran.append("evaluate")
        return evaluate(self)

    monkeypatch.setattr(GridContext, "run_cell", spy_cell)
    monkeypatch.setattr(GridContext, "evaluate", spy_evaluate)
    spec = CompareSpec(
        methods=("magnitude", "wanda"),
        patterns=("2:4",),
        seeds=(0, 1),
        nsamples=2,
        seqlen=16,
        calib=str(workspace / "text.txt"),
        eval_text=str(workspace / "text.txt"),
        eval_seqlen=16,
        eval_windows=3,
        task_limit=6,
    )
    resumed = run_compare(load_model(str(workspace / "tiny")), spec, copy, resume=True, progress=False)
    # the dense baseline is not measured again; each missing cell is pruned and scored once, except
    # magnitude, which reads no calibration and so is the same at every seed
    assert ran == ["wanda|2:4|seed1", "evaluate"]
    assert resumed["cells"][2]["same_as"] == "magnitude|2:4|seed0"
    assert resumed["cells"][:2] == kept and resumed["dense"] == record["dense"]
    assert [c["mask_sha256"] for c in resumed["cells"]] == [c["mask_sha256"] for c in record["cells"]]
    assert [c["perplexity"] for c in resumed["cells"]] == [c["perplexity"] for c in record["cells"]]
    assert len(resumed["sessions"]) == 2 and [c["session"] for c in resumed["cells"]] == [0, 0, 1, 1]


def test_a_finished_grid_is_never_overwritten_unasked(copy, workspace):
    before = (copy / "results.json").read_bytes()
    line = one_error_line(run(*grid_args(workspace / "tiny", copy, workspace / "text.txt")))
    assert "--resume" in line and "--overwrite" in line
    line = one_error_line(
        run(*grid_args(workspace / "tiny", copy, workspace / "text.txt", "--resume", "--nsamples", 3))
    )
    assert "nsamples=2" in line and "not 3" in line
    assert (copy / "results.json").read_bytes() == before


def test_check_reproduces_a_cell_and_catches_tampering(copy):
    good = run("compare", "--check", copy / "results.json", "--cell", "wanda|2:4|seed1", "--json", "-q")
    assert good.exit_code == 0, good.output
    assert "wanda|2:4|seed1: masks identical" in good.stdout and ": reproduces" in good.stdout
    assert json.loads(good.stdout.splitlines()[-1])["relative_difference"] == 0.0

    record = read_results(copy / "results.json")
    record["cells"][3]["perplexity"] *= 1.01
    (copy / "results.json").write_text(json.dumps(record))
    bad = run("compare", "--check", copy / "results.json", "--cell", "wanda|2:4|seed1", "-q")
    assert bad.exit_code == 1 and "does NOT reproduce" in bad.stdout

    record["cells"][0]["mask_sha256"] = "0" * 64
    (copy / "results.json").write_text(json.dumps(record))
    result = check_results(copy / "results.json")  # the first cell
    assert not result.masks_match and result.relative_difference == 0.0 and not result.reproduced


def test_check_refuses_other_weights(copy, workspace, tmp_path, tokenizer):
    tiny_model("llama", seed=1).save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    line = one_error_line(run("compare", "--check", copy / "results.json", tmp_path / "other", "-q"))
    assert "other weights" in line


def test_check_refuses_a_tokenizer_that_starts_sequences_otherwise(copy, workspace, tmp_path, tokenizer):
    folder = shutil.copytree(workspace / "tiny", tmp_path / "starts")  # the same weights
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)
    line = one_error_line(run("compare", "--check", copy / "results.json", folder, "-q"))
    assert f"{copy / 'results.json'} has calibration windows starting with [], but this tokenizer starts" in line
    assert "with ['<eos>']" in line


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "magnitude,obs"], "unknown method 'obs'"),
        (["--seeds", "0,one"], "seeds must be whole numbers"),
        (["--patterns", "3:2"], "impossible"),
        (["--resume", "--overwrite"], "not both"),
    ],
)
def test_bad_grids_fail_before_any_work_in_one_line(extra, message, workspace, tmp_path):
    line = one_error_line(run(*grid_args(workspace / "tiny", tmp_path / "out", workspace / "text.txt", *extra)))
    assert message in line and not (tmp_path / "out").exists()


def test_nm_only_methods_are_left_out_of_unstructured_patterns_and_said_so():
    spec = CompareSpec(methods=("magnitude", "eggs"), patterns=("2:4", "50%"), seeds=(0,))
    assert spec.patterns == ("2:4", "0.5")
    assert [c.key for c in spec.cells()] == ["magnitude|2:4|seed0", "eggs|2:4|seed0", "magnitude|0.5|seed0"]
    assert spec.skipped() == [{"method": "eggs", "pattern": "0.5", "reason": "the method needs an N:M pattern"}]
    with pytest.raises(ValueError, match="no cell to run"):
        CompareSpec(methods=("eggs",), patterns=("0.5",))


def test_one_family_at_several_settings_fills_several_rows(workspace, tmp_path):
    spec = CompareSpec(methods=("eggs(b=1)", "eggs(b=2, rule=diagonal)", "eggs+update", "eggs"), seeds=(0,))
    assert spec.methods == ("eggs", "eggs(b=2, rule=diagonal)", "eggs+update")  # canonical labels, repeats dropped
    assert spec.config(spec.cells()[1]).method == EggsConfig(b=2, rule="diagonal")
    out = tmp_path / "grid"
    result = run(
        *grid_args(
            workspace / "tiny",
            out,
            workspace / "text.txt",
            "--methods",
            "eggs(tile_height=4),eggs(b=2, tile_height=4)",
            "--seeds",
            "0",
            "--no-task",
        )
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["cells"]
    assert [row["method"] for row in rows] == ["eggs(tile_height=4)", "eggs(b=2, tile_height=4)"]
    assert rows[0]["mask_sha256"] != rows[1]["mask_sha256"]
    assert "eggs(b=2, tile_height=4)" in (out / "results.md").read_text()


def test_groups_average_over_seeds_and_mark_the_best_per_pattern():
    def cell(method, pattern, seed, ppl):
        return {
            "method": method,
            "pattern": pattern,
            "seed": seed,
            "perplexity": ppl,
            "prune_seconds": 1.0,
            "peak_rss_mb": 10.0,
            "task": {"acc": 0.5, "loglikelihood": -2.0},
        }

    record = {
        "settings": CompareSpec(methods=("wanda", "ria"), patterns=("2:4", "4:8"), seeds=(0, 1)).to_dict(),
        "cells": [
            cell("wanda", "2:4", 0, 10.0),
            cell("wanda", "2:4", 1, 12.0),
            cell("ria", "2:4", 0, 11.5),
            cell("ria", "2:4", 1, 11.5),
            cell("ria", "4:8", 0, 9.0),
        ],
    }
    found = {(g.pattern, g.method): g for g in groups(record)}
    assert list(found) == [("2:4", "wanda"), ("2:4", "ria"), ("4:8", "ria")]
    assert found["2:4", "wanda"].perplexity == 11.0 and found["2:4", "wanda"].perplexity_std == pytest.approx(2**0.5)
    assert found["2:4", "wanda"].best and not found["2:4", "ria"].best  # lowest mean, despite its spread
    assert found["4:8", "ria"].best and found["4:8", "ria"].perplexity_std is None
