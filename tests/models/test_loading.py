import os
import subprocess
import sys

import pytest

from eggs_ptp.models import ModelError, context_length, find_blocks, load_model
from eggs_ptp.models.layers import BlockDiscoveryError

from helpers import tiny_model


def test_loads_a_local_folder(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir))
    assert loaded.location == str(tiny_llama_dir) and type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.tokenizer is not None


def test_a_file_is_not_a_model_folder(tiny_llama_dir):
    with pytest.raises(ModelError, match="is a file"):
        load_model(str(tiny_llama_dir / "config.json"))


def test_unreachable_hub_id_is_one_line_in_a_real_process():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "eggs_ptp", "eval", "no-such-org/no-such-model", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-org/no-such-model" in errors[0] and "hub" in errors[0]


def test_context_length_takes_the_smallest_declared_limit(tokenizer):
    model = tiny_model("llama", max_position_embeddings=64)
    assert context_length(model) == 64
    tokenizer.model_max_length = 32
    assert context_length(model, tokenizer) == 32
    tokenizer.model_max_length = int(1e30)  # "no limit" in transformers
    assert context_length(model, tokenizer) == 64


def test_blocks_are_found_from_no_split_modules():
    name, blocks = find_blocks(tiny_model("opt"))
    assert name == "model.decoder.layers" and len(blocks) == 2


def test_a_model_without_blocks_is_refused():
    import torch

    with pytest.raises(BlockDiscoveryError, match="no list of decoder blocks"):
        find_blocks(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_two_first_uses_at_once_convert_the_default_once(tmp_path):
    """Parallel test workers (or two shells) meeting an empty cache: one converts, the other waits."""
    code = "from eggs_ptp.models.loading import default_model_folder; print(default_model_folder())"
    environment = {**os.environ, "EGGS_PTP_CACHE": str(tmp_path / "cache")}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [worker.communicate(timeout=600) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], [err[-2000:] for _, err in results]
    target = tmp_path / "cache" / "smollm2-135m-instruct"
    assert {out.strip() for out, _ in results} == {str(target)}
    assert (target / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".") and "tmp" in p.name] == []
