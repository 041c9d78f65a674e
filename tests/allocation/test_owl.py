import pytest
import torch

from eggs_ptp.allocation import outlier_ratio, owl_sparsities

from helpers import QUIET


def test_outlier_ratio_counts_scores_above_threshold_times_mean():
    # mean of [1, 1, 1, 1, 1, 1, 1, 9] is 2; only 9 exceeds 3 x 2 = 6.
    scores = [torch.ones(1, 4), torch.tensor([[1.0, 1.0, 1.0, 9.0]])]
    assert outlier_ratio(scores, 3.0) == pytest.approx(1 / 8)
    assert outlier_ratio(scores, 5.0) == 0.0


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_owl_keeps_the_mean_and_gives_outlier_blocks_less_sparsity(target):
    ratios = [0.01, 0.05, 0.02, 0.08, 0.03]
    sparsities = owl_sparsities(ratios, target, 0.08)
    assert sum(sparsities) / len(sparsities) == pytest.approx(target, abs=1e-12)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    order = sorted(range(5), key=lambda i: ratios[i])
    assert [sparsities[i] for i in order] == sorted(sparsities, reverse=True)


def test_equal_ratios_give_uniform_sparsity():
    assert owl_sparsities([0.02, 0.02, 0.02], 0.5, 0.08) == [0.5, 0.5, 0.5]


def test_band_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="smaller --owl-lambda"):
        owl_sparsities([0.1, 0.2], 0.95, 0.08)


def test_owl_prunes_each_block_to_its_share_and_the_checkpoint_verifies(tmp_path, tokenizer):
    from eggs_ptp import OwlAllocation, PruneConfig, prune
    from eggs_ptp.formats import save_pruned, verify_checkpoint

    from helpers import random_calibration, tiny_model

    config = PruneConfig(method="wanda", pattern="0.5", allocation=OwlAllocation(deviation=0.1), nsamples=4, seqlen=16)
    model, report = prune(tiny_model("llama"), None, config, calibration=random_calibration(), run=QUIET)
    sparsities = report.allocation["block_sparsity"]
    assert len(sparsities) == len(report.allocation["outlier_ratio"]) == 2
    assert sum(sparsities) / len(sparsities) == pytest.approx(0.5)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.2)
    for layer in report.pruned_layers:
        block = int(layer.name.split(".")[2])
        assert layer.kept_fraction == pytest.approx(1 - sparsities[block], abs=1 / layer.shape[1]), layer.name
    assert report.summary()["kept_fraction"] == pytest.approx(0.5, abs=0.02)
    folder = save_pruned(model, tokenizer, report, tmp_path / "owl")
    assert verify_checkpoint(folder) == len(report.pruned_layers)


def test_owl_needs_unstructured_sparsity():
    from eggs_ptp import OwlAllocation, PruneConfig

    with pytest.raises(ValueError, match="unstructured"):
        PruneConfig(method="wanda", pattern="2:4", allocation=OwlAllocation())


def test_a_method_without_calibration_draws_one_window(tokenizer, text_file):
    from eggs_ptp import PruneConfig, prune

    from helpers import tiny_model

    config = PruneConfig(method="magnitude", calib=str(text_file), nsamples=64, seqlen=8)
    _, report = prune(tiny_model("llama"), tokenizer, config, run=QUIET)
    assert report.calibration["nsamples"] == 1
    assert all(layer.recon_error is not None for layer in report.pruned_layers)
