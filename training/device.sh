#!/usr/bin/env bash
# The leak-free distillation cross-fit (issue 15) on a lent accelerator, in one device call.
#
#   bash training/device.sh pack [DERM7PT]   # here: .device/ = train + valid cases, float16 ImageNet weights
#   device tool: run  command "bash training/device.sh run"  carry [".device"]  timeout_s 600
#   (the watchdog stops at LIMIT=540 s: with less device time left, "LIMIT=<seconds> bash ... run")
#
# "run" trains, five folds over train + valid (fold seed 0, the same folds.json as on the CPU):
#   20 teachers: for each fold k, one model per other fold m on the folds other than k and m
#                (training.crossval --hold-out k), so no teacher of fold k's student saw fold k;
#    5 recipe models: the same recipe without a teacher, on the same device, as the reference;
#    5 students: fold k distilled from its own teachers (--distill .../teach_k{fold}/oof.pt).
# The 25 runs that need no teacher start at once (--jobs), then the students. One run alone is
# said to take about a minute on an H200; how 25 at once share the chip is not yet measured, so
# a watchdog stops everything at $LIMIT seconds (default 540, inside the tool's 600) and what
# finished is kept: $OUT gets the logs and runs.tar (every fold's OOF file, eval.json and
# metrics.csv, refreshed every 20 s and at exit), then the students' and recipe's OOF files and
# the comparison (benchmarks/compare_oof.py). The rule it answers is written in docs/results.md
# ("Distillation") before any run.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=(--backbone tf_efficientnet_lite2 --drop-path 0.1 --image-size 192 --epochs 28 --mixup 0.3
        --loss-weights 0.1,0.7,0.2 --tta --name skinnet_lite2 --no-progress)
DISTILL=(--distill-weight 0.5 --distill-temperature 2)
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
# for a smoke test on the CPU: DEVICE=cpu DATA=<small release> EXTRA="--epochs 1 --image-size 48 ..."
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA <<< "${EXTRA:-}"

case "${1:-}" in
pack)
  "$PY" -m training.pack --data-root "${2:-../shared/derm7pt}" --out .device
  ;;
run)
  export SKINNET_IMAGENET_DIR=$PWD/.device/imagenet PYTHONUNBUFFERED=1
  runs=${RUNS:-/tmp/leak_free}
  out=${OUT:-$runs/out}
  mkdir -p "$runs" "$out"
  # what has finished so far, every 20 s and at exit: log tails, GPU memory, and runs.tar with every
  # fold's oof.pt / eval.json / metrics.csv (seconds per epoch) but not the weights (~95 MB a fold)
  save_logs() {
    { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used,utilization.gpu \
        --format=csv,noheader >> "$runs/gpu.log"; } 2>/dev/null || true
    tail -n 12 "$runs"/*.log "$runs"/*/fold*/train.log > "$out/logs.txt.part" 2>/dev/null || true
    mv -f "$out/logs.txt.part" "$out/logs.txt" 2>/dev/null || true
    (cd "$runs" && tar -cf "$out/runs.tar.part" --ignore-failed-read --exclude=./out --exclude='*.safetensors' \
       --exclude=last_state.pt --exclude='*.png' .) 2>/dev/null || true
    mv -f "$out/runs.tar.part" "$out/runs.tar" 2>/dev/null || true
  }
  # both helpers write only to files: an open stdout would keep the call waiting for their sleeps
  (while sleep 20; do save_logs; done) >/dev/null 2>&1 &
  loop=$!
  (sleep "${LIMIT:-540}"; echo "watchdog: stopping at ${LIMIT:-540} s" >> "$runs/watchdog.log"
   pkill -TERM -f "training\.(crossval|train)") >/dev/null 2>&1 &
  watchdog=$!
  trap 'kill "$loop" "$watchdog" 2>/dev/null || true; save_logs' EXIT
  # 25 CUDA processes share one chip's memory (about 4-5 GB each): less fragmentation
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=1
  cv() { "$PY" -m training.crossval --data-root "${DATA:-.device/derm7pt}" --folds 5 --device "$DEVICE" "$@"; }
  { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; } || true
  SECONDS=0
  # one CPU thread each: 25 processes share the CPU cores
  pids=()
  for k in 0 1 2 3 4; do
    cv --out "$runs/teach_k$k" --hold-out "$k" --jobs 4 -- "${RECIPE[@]}" "${EXTRA[@]}" --threads 1 \
      > "$runs/teach_k$k.log" 2>&1 &
    pids+=($!)
  done
  cv --out "$runs/recipe" --jobs 5 -- "${RECIPE[@]}" "${EXTRA[@]}" --threads 1 > "$runs/recipe.log" 2>&1 &
  pids+=($!)
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  save_logs
  echo "teachers and recipe: ${SECONDS}s"
  [ "$failed" = 0 ] || { echo "a cross-fit failed or was stopped: see logs.txt" >&2; exit 1; }
  cv --out "$runs/student" --jobs 5 -- "${RECIPE[@]}" "${EXTRA[@]}" --threads 1 --distill "$runs/teach_k{fold}/oof.pt" \
    "${DISTILL[@]}" > "$runs/student.log" 2>&1
  cp "$runs/student/oof.pt" "$out/student_oof.pt"
  cp "$runs/recipe/oof.pt" "$out/recipe_oof.pt"
  echo "students: ${SECONDS}s"
  "$PY" benchmarks/compare_oof.py "$out/student_oof.pt" "$out/recipe_oof.pt" --json "$out/leak_free_compare.json"
  ;;
*)
  echo "usage: bash training/device.sh pack [DERM7PT] | run" >&2
  exit 2
  ;;
esac
