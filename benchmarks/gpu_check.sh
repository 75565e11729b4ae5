#!/usr/bin/env bash
# One-shot GPU check for a lent H100 / H200 machine (Python 3.12, CUDA torch, triton, nvcc; no network):
#   1. build the extension in place (C++ CPU + CUDA kernels)
#   2. GPU tests: tests/test_gpu.py tests/test_masked_step.py (pytest -x -q)
#   3. benchmark: benchmarks/gpu_bench.py                 -> $OUT/gpu_results.md (rewritten row by row)
#   4. if time is left: tests/test_triton_launch.py compiled for the GPU
# Everything is logged to $OUT/gpu_log.txt. No step stops the next one: exit codes are collected and printed at
# the end (exit status 1 if any step failed). Installs nothing. Every step runs under a time limit taken from
# one deadline (DEADLINE_S, default 290 s), so the whole script ends in under 5 minutes.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        (OUT defaults to ./out)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
: > "$LOG"
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-290}"
declare -A RC
ORDER=()

left() { echo $((DEADLINE_S - SECONDS)); }

# step NAME LIMIT_S RESERVE_S CMD...: run CMD under min(LIMIT_S, time left - RESERVE_S), tee it into the log,
# record its exit code (124: killed at its time limit; "skipped": no time left).
step() {
  local name="$1" limit="$2" reserve="$3"
  shift 3
  ORDER+=("$name")
  local avail=$(( $(left) - reserve ))
  (( avail < limit )) && limit=$avail
  if (( limit < 10 )); then
    RC[$name]="skipped (no time left)"
    echo "=== [${SECONDS} s] $name: skipped, no time left" | tee -a "$LOG"
    return
  fi
  echo "=== [${SECONDS} s] $name (limit ${limit} s): $*" | tee -a "$LOG"
  set -o pipefail
  timeout --signal=TERM --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  RC[$name]=$?
  set +o pipefail
  echo "=== [${SECONDS} s] $name: exit ${RC[$name]}" | tee -a "$LOG"
}

{
  echo "host $(hostname), $(date -u +%FT%TZ), deadline ${DEADLINE_S} s"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())" 2>&1
  nvcc --version 2>&1 | tail -1
} | tee -a "$LOG"

# 1. Build in place (ninja, parallel). Reserve 130 s for tests and benchmark.
step build 150 130 env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="${MAX_JOBS:-8}" "$PY" setup.py build_ext --inplace
step import 30 120 "$PY" -c "
import torch, yoda_kernels as k
print('extension:', k.extension_error or 'loaded')
print('backends on cuda:', k.available_backends('cuda'))
assert 'cuda' in k.available_backends('cuda') and 'triton' in k.available_backends('cuda')"

# 2. Tests (TRITON_INTERPRET unset: Triton compiles for the GPU, seconds per kernel variant), one step per file
#    so that a slow or failing file does not hide the other's results. Reserve 100 s for the benchmark.
step tests_gpu 90 120 "$PY" -m pytest tests/test_gpu.py -x -q -p no:cacheprovider --durations=5
# tests/test_masked_step.py compiles many Triton variants (2-4 s each): 90 s covered 30 % of it on an H200.
# MASKED_STEP_S=240 (with DEADLINE_S >= 480) runs it all.
step tests_masked_step "${MASKED_STEP_S:-90}" 100 "$PY" -m pytest tests/test_masked_step.py -x -q -p no:cacheprovider --durations=5

# 3. Benchmark: its own budgets stop torch.compile cases, then every case, before the step's limit.
BENCH_LIMIT=$(( $(left) - 5 ))
(( BENCH_LIMIT > 200 )) && BENCH_LIMIT=200
step bench "$BENCH_LIMIT" 5 "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_results.md" \
  --budget-s $(( BENCH_LIMIT - 60 )) --hard-budget-s $(( BENCH_LIMIT - 20 ))

# 4. Triton-specific tests on the GPU, with what is left.
step triton_launch 60 2 "$PY" -m pytest tests/test_triton_launch.py -x -q -p no:cacheprovider

echo "=== [${SECONDS} s] summary (exit codes; 124 = hit its time limit)" | tee -a "$LOG"
FAIL=0
for name in "${ORDER[@]}"; do
  echo "  $name: ${RC[$name]}" | tee -a "$LOG"
  [ "${RC[$name]}" = "0" ] || FAIL=1
done
[ -f "$OUT/gpu_results.md" ] && cat "$OUT/gpu_results.md"
exit $FAIL
