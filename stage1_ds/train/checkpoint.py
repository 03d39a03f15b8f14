"""Complete, self-describing checkpoints, and resuming from them.

Layout of RUN_DIR/checkpoints::

    latest                    the tag of the newest COMPLETE checkpoint (written last, atomically)
    step00001200/             DeepSpeed's files (model states, one optimizer shard per rank)
        meta.json             phase, global step, data position, config snapshot, parameter shapes
        rng_rank<r>.pt        each rank's RNG states

DeepSpeed's own ``latest`` is written by rank 0 before every rank has finished its shard, so it is not
used: after a barrier, rank 0 writes ``latest`` itself. A crash or kill mid-save leaves ``latest`` on the
previous complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.config import Config, config_from_snapshot, config_to_dict
from stage1_ds.data.corpus import DataSource, corpus_record, corpus_stats, load_corpus
from stage1_ds.data.fingerprint import fingerprint
from stage1_ds.data.store import write_json
from stage1_ds.errors import CheckpointError
from stage1_ds.model import t5
from stage1_ds.model.stage1 import (
    EXPORT_DATA,
    EXPORT_ENCODER_CONFIG,
    EXPORT_STATS,
    RUN_FINGERPRINT,
    Stage1Model,
)
from stage1_ds.outputs import mark_folder
from stage1_ds.train.engine import UNIVERSAL_DIR, universal_checkpoint
from stage1_ds.train.pickles import check_folder, safe_load
from stage1_ds.version import code_version

log = logging.getLogger(__name__)
LATEST = "latest"
META = "meta.json"


@dataclass
class TrainState:
    """What the loop carries across steps, phases and restarts."""

    global_step: int = 0
    phase_index: int = 0
    batches_consumed: int = 0
    bad_steps: int = 0


@dataclass
class ResumePoint:
    """A complete checkpoint to continue from: its tag, its meta.json, the loop state to continue with, and
    whether it was written by another number of ranks than this run has."""

    tag: str
    meta: dict[str, Any]
    state: TrainState
    world_changed: bool

    def ds_config(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        """The DeepSpeed config of the engine that loads this checkpoint: with universal loading when the
        number of ranks changed."""
        if not self.world_changed:
            return ds_config
        return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


#: The command whose mark (`stage1_ds.outputs.MARK`) a run folder carries, and what a run writes there.
TRAIN = "stage1 train"
RUN_FILES = [
    EXPORT_ENCODER_CONFIG,
    EXPORT_STATS,
    EXPORT_DATA,
    RUN_FINGERPRINT,
    "checkpoints",
    "tensorboard",
    "optimizer_op.json",
]


def write_run_files(run_dir: Path, model: Stage1Model, data: DataSource) -> None:
    """What `stage1 convert` needs besides the weights: the exact T5 layout, the data statistics (of every
    instrument of the folder, or of the folders of a corpus) and the record of the data (`corpus_record`);
    and the folder's mark (made by ``stage1 train``, the files a run writes)."""
    t5.write_layout(model.encoder, run_dir / EXPORT_ENCODER_CONFIG)
    datas = load_corpus(data)
    write_json(run_dir / EXPORT_STATS, corpus_stats(datas))
    write_json(run_dir / EXPORT_DATA, corpus_record(datas))
    write_json(run_dir / RUN_FINGERPRINT, fingerprint(datas))
    mark_folder(run_dir, TRAIN, RUN_FILES)


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def parameter_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(p.shape) for name, p in model.named_parameters()}


def save_checkpoint(
    engine: Any, run_dir: Path, state: TrainState, config: Config, phase: str, keep: int
) -> str:
    """Save on every rank; rank 0 then marks it complete in ``latest`` and prunes to ``keep`` checkpoints."""
    root = checkpoint_dir(run_dir)
    tag = tag_for(state.global_step)
    meta = {
        "phase": phase,
        "phase_index": state.phase_index,
        "global_step": state.global_step,
        "batches_consumed": state.batches_consumed,
        "bad_steps": state.bad_steps,
        "world_size": torch.distributed.get_world_size(),
        "code_version": code_version(),
        "config": config_to_dict(config),
        "parameter_shapes": parameter_shapes(engine.module),
    }
    engine.save_checkpoint(str(root), tag=tag, client_state={"stage1": meta}, save_latest=False)
    rank = torch.distributed.get_rank()
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this rank's device
    }
    torch.save(rng, root / tag / f"rng_rank{rank}.pt")
    if rank == 0:
        (root / tag / META).write_text(json.dumps(meta, indent=2) + "\n")
    torch.distributed.barrier()  # every rank's shard and RNG file is on disk before `latest` moves
    if rank == 0:
        tmp = root / f"{LATEST}.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / LATEST)
        _prune(root, keep)
    torch.distributed.barrier()
    return tag


def _prune(root: Path, keep: int) -> None:
    tags = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step"))
    latest = (root / LATEST).read_text().strip()
    for old in tags[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(root / UNIVERSAL_DIR / old.name, ignore_errors=True)


def latest_tag(run_dir: Path) -> str | None:
    path = checkpoint_dir(run_dir) / LATEST
    return path.read_text().strip() if path.is_file() else None


def read_meta(run_dir: Path, tag: str | None = None) -> tuple[str, dict[str, Any]]:
    """The tag (default: ``latest``) and its meta.json.

    Raises:
        CheckpointError: no checkpoint, a missing tag, or a checkpoint folder without its meta.json.
    """
    root = checkpoint_dir(run_dir)
    tag = tag or latest_tag(run_dir)
    if tag is None:
        raise CheckpointError(f"{root}: no complete checkpoint ('{LATEST}' is missing)")
    folder = root / tag
    if not folder.is_dir():
        available = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise CheckpointError(f"{folder}: no such checkpoint; available tags: {available}")
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; {folder} is not a complete stage1 checkpoint")
    return tag, json.loads(meta_path.read_text())


def check_compatible(meta: dict[str, Any], config: Config, shapes: dict[str, list[int]]) -> None:
    """An architecture change against the checkpoint is an error; other config differences are warnings.

    Args:
        meta: the checkpoint's meta.json.
        config: this run's config.
        shapes: parameter shapes of this run's model built for the checkpoint's phase.

    Raises:
        CheckpointError: the parameters' names or shapes differ (naming the config keys that changed).
    """
    changed = _diff(config_to_dict(config_of(meta)), config_to_dict(config))  # keys added since: as they were
    if shapes != meta["parameter_shapes"]:
        missing = sorted(set(meta["parameter_shapes"]) - set(shapes))[:5]
        extra = sorted(set(shapes) - set(meta["parameter_shapes"]))[:5]
        raise CheckpointError(
            "the model's architecture differs from the checkpoint's "
            f"(config keys changed: {changed or 'none'}; parameters only in the checkpoint: {missing}; "
            f"only in this model: {extra}); start a new run directory instead of resuming"
        )
    for key in changed:
        log.warning("config differs from the checkpoint's at %s; continuing with this run's value", key)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def find_resume_point(run_dir: Path, resume: bool, config: Config) -> ResumePoint | None:
    """The newest complete checkpoint of ``run_dir`` when asked to resume or when there is one (a rerun into
    the same folder resumes); None for a fresh start.

    The data position is counted in samples: a checkpoint of 2 ranks at batch b continues on 1 rank at
    batch 2b, where the two ranks' next windows begin (with the same micro-batch size).

    Raises:
        CheckpointError: ``resume`` is set but the run has no complete checkpoint.
    """
    if latest_tag(run_dir) is None and not resume:
        return None
    tag, meta = read_meta(run_dir)
    world = torch.distributed.get_world_size()
    samples = meta["batches_consumed"] * meta["world_size"] * meta["config"]["train"]["micro_batch_size"]
    per_batch = world * config.train.micro_batch_size
    if samples % per_batch:
        log.warning(
            "%d samples consumed do not fill whole batches of %d on %d ranks: %d skipped",
            samples,
            config.train.micro_batch_size,
            world,
            samples % per_batch,
        )
    state = TrainState(meta["global_step"], meta["phase_index"], -(-samples // per_batch), meta["bad_steps"])
    return ResumePoint(tag, meta, state, world_changed=meta["world_size"] != world)


def restore_model(point: ResumePoint, model: Stage1Model, config: Config) -> None:
    """Bring a freshly built model to the checkpoint's phase (LoRA added or merged as it was, phase by
    phase) and check that its architecture is the checkpoint's.

    Raises:
        CheckpointError: the architecture differs (see `check_compatible`).
    """
    for index in range(point.state.phase_index + 1):
        model.set_phase(config.train.phases[index].name, config.model.lora)
    check_compatible(point.meta, config, parameter_shapes(model))
    log.info(
        "resuming from %s at step %d (phase %s)", point.tag, point.state.global_step, point.meta["phase"]
    )


def restore_engine(point: ResumePoint, engine: Any, run_dir: Path) -> None:
    """Load the checkpoint into an engine built for its phase (with ``point.ds_config``), optimizer state
    included, then this rank's random state.

    A checkpoint written by another number of ranks is loaded through its universal copy (made once, by
    DeepSpeed's ``ds_to_universal``), which re-partitions the optimizer state over this run's ranks.
    """
    load_dir = checkpoint_dir(run_dir)
    check_folder(load_dir / point.tag)  # before DeepSpeed unpickles anything of it
    if point.world_changed:
        log.warning(
            "checkpoint %s was written by %d ranks, this run has %d: loading it through a universal "
            "checkpoint (weights and optimizer state re-partitioned)",
            point.tag,
            point.meta["world_size"],
            torch.distributed.get_world_size(),
        )
        load_dir = universal_checkpoint(load_dir, point.tag)
        check_folder(load_dir / point.tag)
    engine.load_checkpoint(str(load_dir), tag=point.tag, load_lr_scheduler_states=False)
    restore_rng(run_dir, point.tag, torch.distributed.get_rank())


def restore_rng(run_dir: Path, tag: str, rank: int) -> None:
    path = checkpoint_dir(run_dir) / tag / f"rng_rank{rank}.pt"
    if not path.is_file():
        log.warning("%s: missing; this rank's random state starts fresh", path)
        return
    rng = safe_load(path)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def config_of(meta: dict[str, Any]) -> Config:
    """The config snapshot stored in a checkpoint's meta."""
    return config_from_snapshot(meta["config"], source="checkpoint config snapshot")
