#!/usr/bin/env bash
# The committed CPU benchmark: SmolLM2-135M-Instruct (the embedded default) pruned 2:4 four ways
# (fp values, int8 per channel, int8 with the output head rounded to int8 too (--quantize-head),
# int4 in groups of 128), against the dense model in fp32, bf16 and
# torch's dynamic int8, side by side in one eggs-ptp bench run. Magnitude pruning (rounded to
# nearest when quantized) needs no calibration, so one tiny window keeps the walk fast; speed and
# size do not depend on which weights are kept, only on the pattern and the stored scheme.
#   benchmarks/cpu_bench.sh [WORK_DIR] [extra eggs-ptp bench options, e.g. --threads 1 --repeats 7]
# Writes benchmarks/results/bench_smollm2_2of4_cpu.{json,md}; the kernel threshold table comes from
# python benchmarks/kernel_threshold.py (benchmarks/results/kernel_threshold.{json,md}).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-/tmp/bench-ckpt}"
shift || true
prune() {
  .venv/bin/eggs-ptp prune smollm2-135m -o "$work/$1" --method magnitude --pattern 2:4 \
    --nsamples 1 --seqlen 64 --overwrite -q "${@:2}"
}
prune fp
prune int8 --quantize int8
prune int8h --quantize int8 --quantize-head
prune int4 --quantize int4 --group-size 128
.venv/bin/eggs-ptp bench "$work/fp" "$work/int8" "$work/int8h" "$work/int4" \
  -o benchmarks/results/bench_smollm2_2of4_cpu.json --overwrite "$@"
