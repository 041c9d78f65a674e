"""Why the re-fit cells of ``mask_hashes`` changed masks: does the re-fit move masks in its own
block, or only through the inputs of the blocks after it?

Prunes the default model with ``sparsegpt`` and ``sparsegpt+refit`` (the mask-hash settings) and
says, per block, whether the two runs kept the same masks. The re-fit never changes a mask it is
given, so block 0 (calibrated on the dense model's activations in both runs) must match, and every
block after it sees the re-fitted block's outputs.

    python benchmarks/refit_masks.py      # writes benchmarks/results/refit_masks.{json,md}
"""

import json
from pathlib import Path

import torch

from eggs_ptp import RunOptions, prune
from eggs_ptp.formats import write_json_atomic
from eggs_ptp.models import load_model
from mask_hashes import config_for

RESULTS = Path(__file__).parent / "results"

loaded = load_model("smollm2-135m")
dense = {k: v.clone() for k, v in loaded.model.state_dict().items()}
masks = {}
for method in ("sparsegpt", "sparsegpt+refit"):
    loaded.model.load_state_dict(dense)
    prune(loaded.model, loaded.tokenizer, config_for(method, "2:4", {}), RunOptions(progress=False))
    masks[method] = {
        k: (v != 0).clone()
        for k, v in loaded.model.state_dict().items()
        if ".layers." in k and k.endswith("proj.weight")
    }
blocks = sorted({int(key.split(".layers.")[1].split(".")[0]) for key in masks["sparsegpt"]})
same = {
    block: all(
        torch.equal(masks["sparsegpt"][key], masks["sparsegpt+refit"][key])
        for key in masks["sparsegpt"]
        if f".layers.{block}." in key
    )
    for block in blocks
}
write_json_atomic(
    RESULTS / "refit_masks.json", {"settings": "smollm2-135m fp32, wiki 8 x 128, seed 0", "same_masks": same}
)
lines = [
    "# Masks of sparsegpt against sparsegpt+refit, per block",
    "",
    "smollm2-135m fp32, wiki 8 x 128, seed 0 (the mask-hash settings). Made by `benchmarks/refit_masks.py`.",
    "",
    f"Same masks in block(s): {', '.join(str(b) for b, s in same.items() if s) or 'none'}; "
    f"different in {sum(not s for s in same.values())} of {len(same)} blocks.",
    "",
]
(RESULTS / "refit_masks.md").write_text("\n".join(lines), encoding="utf-8")
print(json.dumps(same))
