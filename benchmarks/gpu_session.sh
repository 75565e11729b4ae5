#!/usr/bin/env bash
# The whole device session in one call (a lent H100/H200: torch + triton + nvcc there, no network):
#   1. train the embedded default model and the plain-vs-YODA comparison pair on the GPU (in parallel, time-capped),
#      while the extension builds on the CPU cores;
#   2. then, with the GPU idle again, benchmarks/gpu_check.sh (GPU tests + kernel benchmarks).
# Results land in $OUT: train.tgz (weights, TRAINING.md, logs) + what gpu_check.sh writes.
#   DATA=.gpu_data TRAIN_MIN=2 DEADLINE_S=240 bash benchmarks/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD"
unset TRITON_INTERPRET
PY="${PYTHON:-python3}"
T="${TRAIN_MIN:-2}"
W=/tmp/yoda_train; mkdir -p "$W"
DATA_ARGS=(); [ -n "${DATA:-}" ] && DATA_ARGS=(--data-dir "$DATA")
train() {  # name config extra-args...
  local name="$1" cfg="$2"; shift 2
  timeout $(( ${T%.*} * 60 + 90 )) "$PY" -m yoda.cli train --config "yoda/configs/$cfg.json" --out "$W/$name" \
    --device cuda --minutes "$T" --quiet "${DATA_ARGS[@]}" "$@" > "$W/$name.log" 2>&1
  echo "train $name: exit $?" >> "$W/summary.txt"
}
train default default_x4 --weights-name default_x4.safetensors &
train plain compare_plain &
train yoda compare_yoda &
LOG="$W/build.log"; : > "$LOG"
source benchmarks/gpu_setuptools.sh  # an older setuptools there: pyproject's license in the form it reads
TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=12 "$PY" setup.py build_ext --inplace >> "$LOG" 2>&1
echo "build: exit $?" >> "$W/summary.txt"
wait
cat "$W/summary.txt"; tail -3 "$W"/*.log
tar czf "$OUT/train.tgz" -C "$W" --exclude=checkpoint.pt . 2>/dev/null
DEADLINE_S="${DEADLINE_S:-240}" bash benchmarks/gpu_check.sh
