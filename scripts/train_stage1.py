"""Train the Stage-1 model. The same script under every launcher:

python3 scripts/train_stage1.py --config configs/t5_large_nofreeze.yaml --data_dir ../data/derived
deepspeed --num_gpus 8 scripts/train_stage1.py --config CONFIG.yaml --data DATA_DIR --out RUN_DIR
torchrun --nproc_per_node 8 scripts/train_stage1.py --config CONFIG.yaml --data DATA_DIR --out RUN_DIR
"""

import sys

from stage1_ds.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
