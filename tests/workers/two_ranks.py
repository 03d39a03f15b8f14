"""Run by tests/test_two_ranks.py under the deepspeed launcher: three ZeRO-2 steps, one JSON per rank.

Rank 1 drops the h4 timeframe from every sample (`DROPPED_ON_RANK_1`), so its h4 head and stem get no
loss term of their own: ZeRO-2 must still see the same gradients on both ranks.
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import tiny_train_config
from stage1_ds.config import Phase
from stage1_ds.data.sampler import WindowSampler
from stage1_ds.data.windows import WindowDataset
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train.checkpoint import TrainState, save_checkpoint, write_run_files
from stage1_ds.train.engine import build_ds_config, build_engine, init_distributed, release_engine

DROPPED_ON_RANK_1 = {"h4": 0.0}


def main(data_dir: str, out_root: str, *ds_configs: str) -> None:
    """One launch, each DeepSpeed config in turn (its engine released before the next), each written to
    ``out_root/<config's stem>``."""
    for ds_config in ds_configs:
        out_dir = Path(out_root) / Path(ds_config).stem
        out_dir.mkdir(exist_ok=True)
        run(data_dir, str(out_dir), ds_config)


def run(data_dir: str, out_dir: str, ds_config: str) -> None:
    rank, world = init_distributed()
    config = tiny_train_config(ds_config=ds_config)
    torch.manual_seed(0)
    model = Stage1Model(config.model, config.data)
    model.set_phase(Phase.FULL)
    bundle = build_engine(model, config, build_ds_config(config))
    data_config = replace(config.data, keep_probability=DROPPED_ON_RANK_1 if rank == 1 else {})
    data = MaskedWindows(WindowDataset(data_dir, "train", data_config), config.model.masking, 8, seed=0)
    sampler = WindowSampler(len(data), config.train.micro_batch_size, seed=0, rank=rank, world_size=world)
    losses, ids = [], []
    for b in range(3):
        batch_ids = sampler.batch_ids(b)
        ids.append(batch_ids.tolist())
        batch = data.batch(batch_ids)
        loss = stage1_loss(bundle.engine(batch).reconstruction, batch, config.model.loss).total
        bundle.engine.backward(loss)
        bundle.engine.step()
        losses.append(loss.item())
    run_dir = Path(out_dir) / "run"
    if rank == 0:
        run_dir.mkdir()
        write_run_files(run_dir, model, Path(data_dir))
    save_checkpoint(bundle.engine, run_dir, TrainState(global_step=3, batches_consumed=3), config, "full", 1)
    if rank == 0:
        probe = data.batch(np.arange(4) * 97)
        bundle.engine.module.eval()
        with torch.no_grad():
            outputs = bundle.engine.module(probe).reconstruction
        torch.save({"ids": probe.sample_id, "outputs": outputs}, Path(out_dir) / "live_outputs.pt")
    partition = sum(p.numel() for p in bundle.engine.optimizer.single_partition_of_fp32_groups)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    result = {
        "rank": rank,
        "world": world,
        "losses": losses,
        "sample_ids": ids,
        "partition_numel": partition,
        "trainable_numel": trainable,
        "param_checksum": checksum,
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    release_engine(bundle, model)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(*args)
