#!/usr/bin/env bash
# Measure the CUDA 2:4 path on this machine's GPU, offline, in under 5 minutes; writes
# gpu_check.json and gpu_check.md.
#   benchmarks/gpu_check.sh [OUTPUT_DIR]     default: benchmarks/results
# Uses $PYTHON, else the first of .venv/bin/python, python3, python whose torch sees CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
      python="$candidate"
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "error: no Python with a CUDA build of torch found; set PYTHON=/path/to/python" >&2
  exit 2
fi
"$python" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec timeout 290 "$python" benchmarks/gpu_check.py \
  --output "${1:-benchmarks/results}" --budget 240
