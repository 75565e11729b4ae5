#!/usr/bin/env bash
# One-shot GPU check for a lent H100 / H200 machine (Python 3.12, CUDA torch, triton, nvcc; no network):
#   1. build the extension in place (C++ CPU + CUDA kernels); the stripped .so is copied to $OUT
#   2. GPU tests: tests/test_gpu.py (the crash fix first; both backends vs the reference, noise bit-identity,
#      speed options)
#   3. the fused step's benchmark: benchmarks/gpu_bench.py -> $OUT/gpu_results.md (rewritten row by row)
#   4. the whole loop's speed options: benchmarks/gpu_loop.py -> $OUT/gpu_loop.md
#   5. if time is left: tests/test_masked_step.py and tests/test_triton_launch.py compiled for the GPU, then the
#      attention maps' CUDA tests
# Everything is logged to $OUT/gpu_log.txt. No step stops the next one: exit codes are collected and printed at
# the end (exit status 1 if any step failed). Installs nothing. Every step runs under a time limit taken from
# one deadline (DEADLINE_S, default 570 s), so the whole script ends in under 10 minutes.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        (OUT defaults to ./out)
#
# With the device tool: DEADLINE_S = min(570, the session's device time left - 150) (the machine's start counts
# against it; one call runs at most 600 s), and the call's timeout_s = DEADLINE_S + 30.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
: > "$LOG"
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-570}"
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
  if (( limit < 30 )); then  # pytest alone takes 10 s to start: a step with less would only time out
    RC[$name]="skipped (no time left)"
    echo "=== [${SECONDS} s] $name: skipped, no time left" | tee -a "$LOG"
    return
  fi
  echo "=== [${SECONDS} s] $name (limit ${limit} s): $*" | tee -a "$LOG"
  set -o pipefail
  # SIGINT first: pytest then prints its summary (which tests passed, which failed) and the scripts their tables
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
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
source benchmarks/gpu_setuptools.sh  # an older setuptools there: pyproject's license in the form it reads

# 1. Build in place (ninja, parallel; about 50 s a .cu file). Nothing of the CUDA backend runs without it: it
#    gets its 150 s whatever the deadline leaves the later steps (reserve 60 s).
step build 150 60 env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace
step import 30 40 "$PY" -c "
import torch, yoda_kernels as k
print('extension:', k.extension_error or 'loaded')
print('backends on cuda:', k.available_backends('cuda'))
assert 'cuda' in k.available_backends('cuda') and 'triton' in k.available_backends('cuda')"
# the built extension comes back (stripped), so that a second call can carry it instead of building again
for so in yoda_kernels/_C*.so; do [ -f "$so" ] && strip -o "$OUT/$(basename "$so")" "$so" 2>/dev/null; done

# 2. GPU tests (TRITON_INTERPRET unset: Triton compiles for the GPU, seconds per kernel variant). First, alone and
#    short (~15 s), the owed check of the crash fix: its calls crashed the process on 2026-12-04 (SIGSEGV in
#    messages that streamed a number; csrc/common.h). Then both backends against the reference, noise
#    bit-identity, yoda.sample's speed options on the GPU. Reserve 300 s. (-W default: a warning shows in the
#    summary, as it would for a user, instead of failing the test as pyproject's filters make it on the CPU.)
step tests_errors 30 330 "$PY" -X faulthandler -m pytest -W default tests/test_gpu.py -v -p no:cacheprovider -k errors_name
step tests_speed 60 380 "$PY" -m pytest -W default tests/test_gpu.py -v -p no:cacheprovider -k speed_options
step tests_gpu 100 300 "$PY" -m pytest -W default tests/test_gpu.py -v -p no:cacheprovider --durations=5 \
  -k "not speed_options and not errors_name"

# 3. The fused step's benchmark (issue 13): its own budgets stop torch.compile cases, then every case, before the
#    step's limit. Reserve 140 s for the whole-loop benchmark.
BENCH_LIMIT=$(( $(left) - 140 ))
(( BENCH_LIMIT > 170 )) && BENCH_LIMIT=170
step bench "$BENCH_LIMIT" 140 "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_results.md" \
  --budget-s $(( BENCH_LIMIT - 60 )) --hard-budget-s $(( BENCH_LIMIT - 20 ))

# 4. yoda.sample's whole loop with the speed options (issue 12): compile, autocast, channels-last, CUDA graphs.
LOOP_LIMIT=$(( $(left) - 20 ))
(( LOOP_LIMIT > 150 )) && LOOP_LIMIT=150
step loop "$LOOP_LIMIT" 20 "$PY" benchmarks/gpu_loop.py --out "$OUT/gpu_loop.md" --budget-s $(( LOOP_LIMIT - 40 ))

# 5. With what is left: the masked-step grid on CUDA (it compiles many Triton variants, 2-4 s each; MASKED_STEP_S=240
#    runs it all), the Triton launch tests compiled for the GPU, and the attention maps on CUDA against the CPU's
#    (and against torchvision's / timm's networks where they are installed): skipped on every CPU machine.
step tests_masked_step "${MASKED_STEP_S:-60}" 10 "$PY" -m pytest -W default tests/test_masked_step.py -x -q -p no:cacheprovider --durations=5
step triton_launch 40 2 "$PY" -m pytest -W default tests/test_triton_launch.py -x -q -p no:cacheprovider
step tests_maps 30 2 "$PY" -m pytest -W default tests/test_attention.py tests/test_dino.py -q -p no:cacheprovider \
  -k "cuda_matches_cpu or torchvision or timm"

echo "=== [${SECONDS} s] summary (exit codes; 124 = hit its time limit)" | tee -a "$LOG"
FAIL=0
for name in "${ORDER[@]}"; do
  # the masked-step grid is run for what time is left: stopped at its limit it is partial, not failed
  [[ $name == tests_masked_step && ${RC[$name]} == 124 ]] && RC[$name]="partial (124: stopped at its limit)"
  echo "  $name: ${RC[$name]}" | tee -a "$LOG"
  case "${RC[$name]}" in 0|skipped*|partial*) ;; *) FAIL=1 ;; esac  # a step skipped for time is not a failure
done
for f in "$OUT/gpu_results.md" "$OUT/gpu_loop.md"; do [ -f "$f" ] && cat "$f"; done
exit $FAIL
