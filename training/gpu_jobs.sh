#!/usr/bin/env bash
# Trainings side by side on one GPU machine (they are launch-bound, so they share it well).
# Every run writes its resumable state into $OUT after each epoch, so a run cut short by the
# time limit comes back and resumes anywhere (`reswise train` with the same flags).
# Data: the blob from `training/pack_imagefolder.py pack .gpu/cifar10-jpeg train=... test=...`.
# SMOKE=1: one short epoch on 512 images each, on this machine's CPU, to test the plumbing.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
LIMIT=${LIMIT:-500}  # seconds each training may run
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
PY=${PY:-python3}
DATA=/tmp/cifar10-jpeg
$PY training/pack_imagefolder.py unpack .gpu/cifar10-jpeg $DATA || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
common=(--dataset imagefolder --data-root $DATA/train --test-root $DATA/test --no-progress)
if [ "${SMOKE:-0}" = 1 ]; then
  common+=(--limit 512 --device cpu); E1=1; E2=1; E3=1; E4=1; E5=1; E6=1
else
  E1=30; E2=30; E3=30; E4=30; E5=${E5:-8}; E6=${E6:-10}
fi
# STATES=DIR: resume runs from states brought back earlier (the session's NASNet-A run came
# with its CPU state after epoch 2; every run here resumes the same way)
[ -n "${STATES:-}" ] && cp "$STATES"/*.pt.state "$OUT"/
JOBS=${JOBS:-cifar_nasnet_a mbv2_050 mbv2_050_mr r20_mr4}
run() {  # name, then reswise train flags; one log for all runs, each line tagged
  local name=$1; shift
  [[ " $JOBS " == *" $name "* ]] || return 0
  ( timeout -s TERM "$LIMIT" $PY -m reswise train "$@" "${common[@]}" --out "$OUT/$name.pt" 2>&1 \
      | sed -u "s/^/[$name] /" >> "$OUT/train.log" ) &
}
run cifar_nasnet_a --model cifar_nasnet_a --random-init --epochs $E1 --lr 0.1
run mbv2_050 --model cifar_mobilenetv2_050 --random-init --epochs $E2 --lr 0.1 --no-channels-last
run mbv2_050_mr --model cifar_mobilenetv2_050 --random-init --epochs $E3 --lr 0.1 \
  --no-channels-last --train-resolutions 32,24,20,16 --sandwich-k all --distill --largest-weight 0.4
run r20_mr4 --model cifar_resnet20 --pretrained --epochs $E4 --lr 0.02 --warmup-epochs 0.5 \
  --train-resolutions 32,24,20,16 --sandwich-k all --distill --largest-weight 0.4
# the r20_mr4 recipe (multi-resolution fine-tune of the shipped single-resolution weights)
# on the other two families; fewer epochs because a session's GPU time is 15 minutes
run nasnet_mr --model cifar_nasnet_a --pretrained --epochs $E5 --lr 0.02 --warmup-epochs 0.5 \
  --train-resolutions 32,24,20,16 --sandwich-k all --distill --largest-weight 0.4
run mbv2_050_mr_ft --model cifar_mobilenetv2_050 --pretrained --epochs $E6 --lr 0.02 \
  --warmup-epochs 0.5 --no-channels-last --train-resolutions 32,24,20,16 --sandwich-k all --distill --largest-weight 0.4
wait
# a finished run needs only its weights; an unfinished one keeps its state to resume
for s in "$OUT"/*.pt.state; do [ -f "${s%.state}" ] && rm -f "$s"; done
ls -la "$OUT"; tail -n 3 "$OUT/train.log"
