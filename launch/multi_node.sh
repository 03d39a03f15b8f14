#!/usr/bin/env bash
# Several nodes listed in a hostfile ("node1 slots=8" per line), reached by passwordless ssh, the repository
# and DATA_DIR at the same path on every node. Resumes by itself when RUN_DIR holds a checkpoint.
#   launch/multi_node.sh HOSTFILE CONFIG.yaml DATA_DIR RUN_DIR [key=value ...]
# `stage1 doctor` checks this node first, for the hostfile's nodes and slots, and stops the launch on a
# FAIL; SKIP_DOCTOR=1 skips it.
set -euo pipefail
hostfile=$1 config=$2 data=$3 run=$4
shift 4
if [ -z "${SKIP_DOCTOR:-}" ]; then
  nodes=$(grep -cE '^[^#[:space:]]' "$hostfile")
  slots=$(grep -m1 -oE 'slots=[0-9]+' "$hostfile" | cut -d= -f2)
  python -m stage1_ds doctor --config "$config" --data "$data" --out "$run" --gpus "${slots:-8}" --nodes "$nodes" "$@"
fi
deepspeed \
  --hostfile "$hostfile" \
  --master_port "${MASTER_PORT:-29500}" \
  scripts/train_stage1.py \
  --config "$config" \
  --data "$data" \
  --out "$run" \
  "$@"
