#!/usr/bin/env bash
# The experiment ledger's pending folds on a lent accelerator, in one device call.
#
#   bash training/device.sh pack [DERM7PT]   # here: .device/ = train + valid cases, float16 ImageNet weights
#   device tool: run  command "bash training/device.sh run"  carry [".device"]  timeout_s 600
#   then here:   tar -xf <files_at>/experiments.tar && git add experiments && git commit
#
# "run" is `python -m training.ledger run` with the packed release: the same entries, folds and
# files as on the CPU (experiments/<entry>/fold<k>/), several folds at once (JOBS, default 8, one
# CPU thread each), students after their teachers' entries. A watchdog stops everything at
# $LIMIT seconds (default 540, inside the tool's 600); what finished is kept: $OUT gets
# logs.txt and experiments.tar (the ledger folder, no weights), refreshed every 20 s and at exit.
# ONLY=e_method,d_shared_attention limits the entries. For a smoke test on the CPU:
#   DEVICE=cpu DATA=<small release> LEDGER=<a ledger of tiny entries> JOBS=2 bash training/device.sh run
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
DEVICE=${DEVICE:-cuda}
LEDGER=${LEDGER:-experiments}

case "${1:-}" in
pack)
  "$PY" -m training.pack --data-root "${2:-../shared/derm7pt}" --out .device
  ;;
run)
  export PYTHONUNBUFFERED=1
  # the packed float16 ImageNet weights (the accelerator cannot install the weight packages)
  if [ -d .device/imagenet ]; then export SKINNET_IMAGENET_DIR=$PWD/.device/imagenet; fi
  runs=${RUNS:-/tmp/ledger_runs}
  out=${OUT:-$runs/out}
  mkdir -p "$runs" "$out"
  save_logs() {
    { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used,utilization.gpu \
        --format=csv,noheader >> "$runs/gpu.log"; } 2>/dev/null || true
    tail -n 8 "$runs"/*.log "$runs"/*/fold*.log > "$out/logs.txt.part" 2>/dev/null || true
    mv -f "$out/logs.txt.part" "$out/logs.txt" 2>/dev/null || true
    tar -cf "$out/experiments.tar.part" --ignore-failed-read --exclude='*.tmp' "$LEDGER" 2>/dev/null || true
    mv -f "$out/experiments.tar.part" "$out/experiments.tar" 2>/dev/null || true
  }
  # both helpers write only to files: an open stdout would keep the call waiting for their sleeps
  (while sleep 20; do save_logs; done) >/dev/null 2>&1 &
  loop=$!
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=1
  { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; } || true
  "$PY" -m training.ledger --root "$LEDGER" status
  SECONDS=0
  # the run and its fold processes in a process group of their own: the watchdog stops that group
  # only (a pattern kill also stopped every other ledger run on the machine, e.g. the CPU's
  # background runner while the test suite ran this script)
  setsid "$PY" -m training.ledger --root "$LEDGER" run --data-root "${DATA:-.device/derm7pt}" --device "$DEVICE" \
    --jobs "${JOBS:-8}" --threads 1 --runs "$runs" ${ONLY:+--only "$ONLY"} > "$runs/ledger.log" 2>&1 &
  ledger=$!
  (sleep "${LIMIT:-540}"; echo "watchdog: stopping at ${LIMIT:-540} s" >> "$runs/watchdog.log"
   kill -TERM -- "-$ledger") >/dev/null 2>&1 &
  watchdog=$!
  trap 'kill "$loop" "$watchdog" 2>/dev/null || true; kill -TERM -- "-$ledger" 2>/dev/null || true; save_logs' EXIT
  wait "$ledger" || true
  echo "ledger run: ${SECONDS}s"
  "$PY" -m training.ledger --root "$LEDGER" status
  ;;
*)
  echo "usage: bash training/device.sh pack [DERM7PT] | run" >&2
  exit 2
  ;;
esac
