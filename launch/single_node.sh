#!/usr/bin/env bash
# One node, N GPUs, through the deepspeed launcher.
#   launch/single_node.sh CONFIG.yaml DATA_DIR RUN_DIR [NUM_GPUS] [key=value ...]
set -euo pipefail
config=$1 data=$2 run=$3 gpus=${4:-8}
shift $(( $# < 4 ? $# : 4 ))
deepspeed \
  --num_gpus "$gpus" \
  scripts/train_stage1.py \
  --config "$config" \
  --data "$data" \
  --out "$run" \
  "$@"
