"""Issue 4 on the real default model: packed 2:4, computed from the compact form, generating as dense."""

import pytest
import torch

from eggs_ptp import PruneConfig, prune
from eggs_ptp.data import load_text
from eggs_ptp.data.calibration import tokenize
from eggs_ptp.formats import save_pruned
from eggs_ptp.formats.compact import load_compact, pack_checkpoint
from eggs_ptp.kernels import SparseNMLinear, load_sparse
from eggs_ptp.models import DEFAULT_MODEL, load_model

from helpers import QUIET

pytestmark = pytest.mark.slow


def test_sparse_modules_greedy_decode_matches_dense_for_32_tokens(tmp_path):
    loaded = load_model(DEFAULT_MODEL)
    # Magnitude needs no calibration; one short window keeps the block walk quick.
    model, report = prune(
        loaded.model, loaded.tokenizer, PruneConfig(method="magnitude", nsamples=1, seqlen=64), run=QUIET
    )
    packed = pack_checkpoint(save_pruned(model, loaded.tokenizer, report, tmp_path / "dense"), tmp_path / "compact")
    assert packed.layers == 210 and packed.pruned_ratio == pytest.approx(0.53125)
    dense, sparse = load_compact(packed.out), load_sparse(packed.out)
    assert sum(isinstance(m, SparseNMLinear) for m in sparse.modules()) == 210
    prompt = tokenize(loaded.tokenizer, load_text("wiki", "evaluation").text[:2000])[None, :64]
    with torch.inference_mode():
        outputs = [m.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False) for m in (dense, sparse)]
    assert torch.equal(outputs[0], outputs[1])
