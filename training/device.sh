#!/usr/bin/env bash
# The leak-free distillation cross-fit (issue 15) on a lent accelerator, in one device call.
#
#   bash training/device.sh pack [DERM7PT]   # here: data + float16 ImageNet weights into .device/ (git-ignored)
#   device tool: run  command "bash training/device.sh run"  carry [".device"]  timeout_s 600
#
# "run" trains, five folds over train + valid (folds.json as on the CPU, fold seed 0):
#   20 teachers: for each fold k, one model per other fold m on the folds other than k and m
#                (training.crossval --hold-out k), so no teacher of fold k's student saw fold k;
#    5 students: fold k distilled from its own teachers (--distill .../teach_k{fold}/oof.pt);
#    5 recipe models: the same recipe without a teacher, on the same device, as the reference.
# That is 30 runs of about a minute each alone on one GPU; the 25 that need no teacher run at once
# (--jobs), since one small run leaves most of the chip idle, then the 5 students (not yet timed
# on the accelerator: the first call tells). It compares student and recipe out of fold
# (benchmarks/compare_oof.py) and leaves the comparison, both OOF files and the logs in $OUT.
# The rule it answers is written in docs/results.md ("Distillation") before any run.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=(--backbone tf_efficientnet_lite2 --drop-path 0.1 --image-size 192 --epochs 28 --mixup 0.3
        --loss-weights 0.1,0.7,0.2 --tta --name skinnet_lite2 --no-progress)
DISTILL=(--distill-weight 0.5 --distill-temperature 2)
PY=${PYTHON:-python3}
# for a smoke test on the CPU: DEVICE=cpu DATA=<small release> EXTRA="--epochs 1 --image-size 48 ..."
DEVICE=${DEVICE:-cuda}
read -r -a EXTRA <<< "${EXTRA:-}"

case "${1:-}" in
pack)
  # only meta/ and the train + valid images (the cross-fit never reads test): with the tracked
  # files and the weights this stays under the device tool's 64 MiB
  data=${2:-../shared/derm7pt}
  rm -rf .device && mkdir -p .device/imagenet
  "$PY" - "$data" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from skinnet.backbones import offline_weights_path
from skinnet.data import Derm7pt
source, target = Path(sys.argv[1]), Path(".device/derm7pt")
shutil.copytree(source / "meta", target / "meta")
data = Derm7pt(source)
for case in data.split("train") + data.split("valid"):
    for image in {case.clinical_path, case.dermoscopy_path}:
        copy = target / image.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, copy)
name = "tf_efficientnet_lite2"  # float16: half the size, the same ImageNet features (tests/test_pretrained.py)
weights = torch.load(offline_weights_path(name), map_location="cpu", weights_only=True)
torch.save({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, f".device/imagenet/{name}.pth")
EOF
  du -sh .device
  ;;
run)
  export SKINNET_IMAGENET_DIR=$PWD/.device/imagenet PYTHONUNBUFFERED=1
  runs=${RUNS:-/tmp/leak_free}
  out=${OUT:-$runs/out}
  mkdir -p "$runs" "$out"
  trap 'tail -n 4 "$runs"/*.log "$runs"/*/fold*/train.log > "$out/logs.txt" 2>/dev/null || true' EXIT
  cv() { "$PY" -m training.crossval --data-root "${DATA:-.device/derm7pt}" --folds 5 --device "$DEVICE" "$@"; }
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  SECONDS=0
  pids=()
  # 20 teacher runs and the 5 recipe runs, all at once; one CPU thread each (25 processes share the cores)
  for k in 0 1 2 3 4; do
    cv --out "$runs/teach_k$k" --hold-out "$k" --jobs 4 -- "${RECIPE[@]}" "${EXTRA[@]}" --threads 1 > "$runs/teach_k$k.log" 2>&1 &
    pids+=($!)
  done
  cv --out "$runs/recipe" --jobs 5 -- "${RECIPE[@]}" "${EXTRA[@]}" --threads 1 > "$runs/recipe.log" 2>&1 &
  pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid"; done  # set -e: a failed cross-fit stops here (logs.txt says which)
  cp "$runs/recipe/oof.pt" "$out/recipe_oof.pt"
  echo "teachers and recipe: ${SECONDS}s"
  cv --out "$runs/student" --jobs 5 -- "${RECIPE[@]}" "${EXTRA[@]}" --threads 1 --distill "$runs/teach_k{fold}/oof.pt" \
    "${DISTILL[@]}" > "$runs/student.log" 2>&1
  cp "$runs/student/oof.pt" "$out/student_oof.pt"
  echo "students: ${SECONDS}s"
  "$PY" benchmarks/compare_oof.py "$out/student_oof.pt" "$out/recipe_oof.pt" --json "$out/leak_free_compare.json"
  ;;
*)
  echo "usage: bash training/device.sh pack [DERM7PT] | run" >&2
  exit 2
  ;;
esac
