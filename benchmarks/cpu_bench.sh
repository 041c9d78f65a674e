#!/usr/bin/env bash
# The committed CPU benchmark: SmolLM2-135M-Instruct (the embedded default) pruned 2:4, dense with
# zeros against its compact sparse form, side by side in one eggs-ptp bench run. Magnitude pruning
# needs no calibration (one tiny window keeps the walk fast); speed does not depend on which weights
# are kept, only on the pattern.
#   benchmarks/cpu_bench.sh [CHECKPOINT_DIR] [extra eggs-ptp bench options, e.g. --threads 1]
# Writes benchmarks/results/bench_smollm2_2of4_cpu.{json,md}; the kernel threshold table comes from
# python benchmarks/kernel_threshold.py (benchmarks/results/kernel_threshold.{json,md}).
set -euo pipefail
cd "$(dirname "$0")/.."
checkpoint="${1:-/tmp/bench-ckpt}"
shift || true
.venv/bin/eggs-ptp prune smollm2-135m -o "$checkpoint" --method magnitude --pattern 2:4 \
  --nsamples 1 --seqlen 64 --overwrite -q
.venv/bin/eggs-ptp bench "$checkpoint" -o benchmarks/results/bench_smollm2_2of4_cpu.json --overwrite "$@"
