#!/usr/bin/env bash
# One node, N GPUs, through the deepspeed launcher.
#   launch/single_node.sh CONFIG.yaml DATA_DIR RUN_DIR [NUM_GPUS] [key=value ...]
# `stage1 doctor` checks the node first (ops, /dev/shm, disk, weights, memory per GPU) and stops the launch
# on a FAIL; SKIP_DOCTOR=1 skips it.
set -euo pipefail
config=$1 data=$2 run=$3 gpus=${4:-8}
shift $(( $# < 4 ? $# : 4 ))
if [ -z "${SKIP_DOCTOR:-}" ]; then
  python -m stage1_ds doctor --config "$config" --data "$data" --out "$run" --gpus "$gpus" "$@"
fi
deepspeed \
  --num_gpus "$gpus" \
  scripts/train_stage1.py \
  --config "$config" \
  --data "$data" \
  --out "$run" \
  "$@"
