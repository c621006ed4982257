#!/bin/sh
# The GPU suite in one call on a lent accelerator machine (docs/results.md,
# "GPU suite"), from the repository root:
#
#   COMMIT=<commit> sh benchmarks/overhead/gpu_suite_device.sh [gpu_suite options]
#
# The overhead rows need the mnist1d package, which the machine's image
# lacks: before the call, download its wheel into the ignored folder .whl
#   python3 -m pip download --no-deps -d .whl mnist1d==0.0.2.post1
# and name .whl in the call's carry. (Without it, those rows fail alone.)
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
python=$(command -v python3 || command -v python)
if ls .whl/*.whl > /dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/tmp/gpu_suite_jax_cache
nvidia-smi > "$out/nvidia_smi.txt" 2>&1 || true
timeout 520 "$python" -m benchmarks.overhead.gpu_suite --out "$out/gpu_suite.jsonl" \
  ${COMMIT:+--commit "$COMMIT"} "$@" > "$out/gpu_suite.log" 2>&1
echo "gpu_suite exit status $?"
"$python" -m benchmarks.overhead.gpu_suite --report "$out/gpu_suite.jsonl" \
  | tee "$out/gpu_suite.md"
