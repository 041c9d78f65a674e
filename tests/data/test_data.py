import json

import pytest
import torch

from eggs_ptp.data import DataError, load_text, sample_windows
from eggs_ptp.data.sources import HELD_OUT_EVERY


def test_windows_are_seeded_and_deterministic():
    tokens = torch.arange(1000)
    first = sample_windows(tokens, 5, 32, seed=3)
    again = sample_windows(tokens, 5, 32, seed=3)
    other = sample_windows(tokens, 5, 32, seed=4)
    assert torch.equal(first.windows, again.windows)
    assert not torch.equal(first.windows, other.windows)
    # every window is a contiguous run of the stream
    assert torch.equal(first.windows[:, 1:] - first.windows[:, :-1], torch.ones(5, 31, dtype=torch.long))
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(first.windows[:, 0], torch.randint(0, 1000 - 32 + 1, (5,), generator=generator))


def test_text_shorter_than_one_window_is_refused():
    with pytest.raises(DataError, match="shorter than one window of 64"):
        sample_windows(torch.arange(10), 2, 64, seed=0)


def test_a_text_exactly_one_window_long_works():
    assert sample_windows(torch.arange(64), 3, 64, seed=0).windows.shape == (3, 64)


def test_jsonl_records_are_joined(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert load_text(str(path), "calibration").text == "one\n\ntwo"


@pytest.mark.parametrize("line,message", [("{bad", "not valid JSON"), ('{"body": "x"}', 'no string field "text"')])
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"c\.jsonl:2 .*{message}"):
        load_text(str(path), "calibration")


def test_missing_file_says_what_sources_exist():
    with pytest.raises(DataError, match="wiki"):
        load_text("/no/such/file.txt", "calibration")


def test_default_split_is_disjoint_and_complete():
    calibration = load_text("wiki", "calibration")
    evaluation = load_text("wiki", "evaluation")
    held_out = set(evaluation.text.split("\n\n"))
    calibrating = set(calibration.text.split("\n\n"))
    assert held_out and calibrating and not (held_out & calibrating - {""})
    assert "index % 10 == 0" in evaluation.description
    ratio = len(calibration.text) / len(evaluation.text)
    assert HELD_OUT_EVERY - 3 < ratio < HELD_OUT_EVERY + 3


def test_hub_datasets_fail_with_one_clear_line(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real_find_spec(name, *a)
    )
    with pytest.raises(DataError, match=r"pip install 'eggs-ptp\[hub\]'"):
        load_text("hf:wikitext:wikitext-2-raw-v1", "calibration")
