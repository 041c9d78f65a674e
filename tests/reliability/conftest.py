"""Fixtures of the reliability suite.

Hypothesis runs derandomized and without an example database, so CI and every machine draw the
same examples and a failure reproduces from the test name alone."""

import pytest
import torch
from hypothesis import settings

from helpers import TEXT, tiny_model

settings.register_profile("eggs-ptp", max_examples=50, derandomize=True, database=None, deadline=None)
settings.load_profile("eggs-ptp")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer):
    """A folder holding a 4-block tiny Llama (bfloat16, with its tokenizer) and a calibration text,
    for the tests that run real processes; returns (folder, model, calib)."""
    folder = tmp_path_factory.mktemp("runs")
    model = folder / "tiny"
    tiny_model("llama", num_hidden_layers=4).to(torch.bfloat16).save_pretrained(model)
    tokenizer.save_pretrained(model)
    calib = folder / "calib.txt"
    calib.write_text(TEXT)
    return folder, model, calib
