#!/usr/bin/env bash
# Several nodes listed in a hostfile ("node1 slots=8" per line), reached by passwordless ssh, the repository
# and DATA_DIR at the same path on every node. Resumes by itself when RUN_DIR holds a checkpoint.
#   launch/multi_node.sh HOSTFILE CONFIG.yaml DATA_DIR RUN_DIR [key=value ...]
set -euo pipefail
hostfile=$1 config=$2 data=$3 run=$4
shift 4
deepspeed \
  --hostfile "$hostfile" \
  --master_port "${MASTER_PORT:-29500}" \
  scripts/train_stage1.py \
  --config "$config" \
  --data "$data" \
  --out "$run" \
  "$@"
