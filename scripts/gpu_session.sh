#!/usr/bin/env bash
# The one prepared run for a lent GPU (docs/gpu.md): set up offline, then three checks, each bounded in time so
# that the whole fits one `run` call of at most 10 minutes and leaves room in a 15-minute budget to rerun it.
# Usage (on the GPU machine): bash scripts/gpu_session.sh COMMIT [--full]
#   1. scripts/cuda_check.sh: the cuda cases of the determinism tests (tiny random-weight models), <= 240 s;
#   2. bench/bench_shapes.py: does the tile path change a row's bits with the batch on this GPU, and what do the
#      fixed shapes cost (float32 and bfloat16), <= 60 s each;
#   3. bench/bench_gpu.py --quick (the default sizes with --full): the promise end to end through a real server,
#      greedy "capital of France", tok/s beside transformers' generate(), <= 200 s (--full: 330 s).
# Logs go to $OUT (the run tool's folder; /tmp/gpu-out elsewhere), one file per step, and a summary line per
# step is printed last. COMMIT is `git rev-parse --short HEAD` of the checkout sent (the machine gets no .git).
# Here, without a GPU, `--device cpu` is no option: use scripts/cuda_check.sh --device cpu for the dry run.
# Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

COMMIT="${1:?usage: bash scripts/gpu_session.sh COMMIT [--full]}"
FULL="${2:-}"
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
SITE="${SEEDSTREAM_GPU_SITE:-/tmp/seedstream-gpu-site}"
PY="${PYTHON:-python3}"  # the interpreter with the CUDA torch (cuda_check.sh reads the same variable)
declare -a SUMMARY=()

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log to $OUT/NAME.log, record its status
    local name="$1" limit="$2"
    shift 2
    echo "== $name (at most ${limit}s) =="
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    SUMMARY+=("$name: $([ "$status" = 0 ] && echo passed || echo "FAILED (status $status; 124 = timed out)")")
    return 0
}

nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.log" | head -15
step cuda_check 240 bash scripts/cuda_check.sh --wheels .gpu-bundle/wheels
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for dtype in float32 bfloat16; do
    step "bench_shapes_$dtype" 60 "$PY" bench/bench_shapes.py --device cuda --dtype "$dtype" --batches 1 8 32 128
done
if [ "$FULL" = --full ]; then
    step bench_gpu 330 "$PY" bench/bench_gpu.py --commit "$COMMIT"
else
    step bench_gpu 200 "$PY" bench/bench_gpu.py --commit "$COMMIT" --quick
fi

printf '\n== summary ==\n'
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.log"
! grep -q FAILED "$OUT/summary.log"
