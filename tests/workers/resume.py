"""The run the world-size tests stop and resume (`resume_config`), on however many ranks the launcher gives.

    deepspeed --num_gpus 2 tests/workers/resume.py train DATA_DIR RUN_DIR GRADIENT_ACCUMULATION_STEPS [STOP]
    deepspeed --num_gpus 2 tests/workers/resume.py resume DATA_DIR RUN_DIR GRADIENT_ACCUMULATION_STEPS [STOP]

``train`` trains from scratch. ``resume`` loads the run's latest checkpoint as `stage1 train` does, writes
the Adam moments the engine loaded (rank 0, ``RUN_DIR/loaded_moments.pt``), then trains on to the end, or
saves and stops after step STOP.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conftest import tiny_train_config
from stage1_ds.config import Config
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train import loop
from stage1_ds.train.checkpoint import find_resume_point, restore_engine, restore_model
from stage1_ds.train.engine import (
    build_ds_config,
    build_engine,
    init_distributed,
    optimizer_moments,
    release_engine,
)


def resume_config(gradient_accumulation_steps: int) -> Config:
    """Nine steps, a checkpoint every three (all kept): the run that the world-size tests stop and resume.
    `spans` masks hide the same number of bars in every sample, so a step's loss (a mean over micro
    batches of means over masked bars) does not depend on how its samples are split into micro batches."""
    config = tiny_train_config(
        max_steps=9,
        save_every_steps=3,
        keep_checkpoints=3,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    config.model.masking.modes = {"spans": 1.0}
    return config


def loaded_moments(config: Config, run_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The Adam moments an engine holds right after loading the run's latest checkpoint (collective)."""
    init_distributed()
    model = Stage1Model(config.model, config.data)
    point = find_resume_point(run_dir, True, config)
    assert point is not None
    restore_model(point, model, config)
    bundle = build_engine(model, config, point.ds_config(build_ds_config(config)))
    restore_engine(point, bundle.engine, run_dir)
    moments = optimizer_moments(model, bundle)
    release_engine(bundle, model)
    return moments


def main(mode: str, data_dir: str, run_dir: str, gradient_accumulation_steps: str, stop: str = "") -> None:
    config = resume_config(int(gradient_accumulation_steps))
    if mode == "resume":
        moments = loaded_moments(config, Path(run_dir))
        if torch.distributed.get_rank() == 0:
            torch.save(moments, Path(run_dir) / "loaded_moments.pt")
    stop_at = int(stop) if stop else None
    loop.train(config, Path(data_dir), Path(run_dir), resume=mode == "resume", stop_at_step=stop_at)


if __name__ == "__main__":
    main(*[a for a in sys.argv[1:] if not a.startswith("--local_rank")])
