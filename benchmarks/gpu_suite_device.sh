#!/bin/sh
# The GPU suite in one call on a lent accelerator machine (docs/results.md,
# "GPU suite"), from the repository root:
#
#   sh benchmarks/gpu_suite_device.sh
#
# Writes under $OUT (or results/): gpu_suite.jsonl (rows appended as they are
# measured), gpu_suite.log (the run's output), gpu_suite.md (the tables) and
# nvidia_smi.txt. The suite skips the groups that would end after its
# --budget-s (420 s by default); `timeout` is the hard stop, so that a
# 600-second call still returns what was measured. Compiles are cached in
# /tmp, so a second run on the same warm machine starts faster.
set -u
out="${OUT:-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/tmp/gpu_suite_jax_cache
python=$(command -v python3 || command -v python)
nvidia-smi > "$out/nvidia_smi.txt" 2>&1 || true
timeout 520 "$python" -m benchmarks.gpu_suite --out "$out/gpu_suite.jsonl" \
  > "$out/gpu_suite.log" 2>&1
echo "gpu_suite exit status $?"
"$python" -m benchmarks.gpu_suite --report "$out/gpu_suite.jsonl" \
  | tee "$out/gpu_suite.md"
