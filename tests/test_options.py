"""How a run is placed: --device, --device-map and their one-line errors."""

import pytest
import torch

from helpers import assert_same_weights, one_error_line, prune_args, run_cli


def test_device_map_places_the_model_and_gives_the_same_result(model_dir, calib, tmp_path):
    plain, mapped = tmp_path / "plain", tmp_path / "mapped"
    assert run_cli(*prune_args(model_dir, plain, calib, "--method", "wanda", "--device", "cpu")).exit_code == 0
    result = run_cli(*prune_args(model_dir, mapped, calib, "--method", "wanda", "--device-map", "auto"))
    assert result.exit_code == 0, result.output
    assert_same_weights(plain, mapped)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_it_is_one_line(model_dir, calib, tmp_path):
    line = one_error_line(run_cli(*prune_args(model_dir, tmp_path / "o", calib, "--device", "cuda")))
    assert "no CUDA device" in line and "--device cpu" in line
