"""Measurements shared by the benchmark scripts: step time of the DeepSpeed engine against a plain
PyTorch AdamW loop on the same model and batches, in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from stage1_ds.config import Config, Phase
from stage1_ds.data.windows import Batch
from stage1_ds.model import t5
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train.engine import build_ds_config, build_engine, device, init_distributed, release_engine
from stage1_ds.train.param_groups import build_param_groups


@dataclass
class StepTiming:
    median_s: float
    steps_per_s: float
    peak_memory_gb: float | None


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step: Callable[[int], None], warmup: int, windows: int, steps_per_window: int) -> StepTiming:
    """Median seconds per step over ``windows`` timed windows, after ``warmup`` untimed steps; the device is
    synchronised around every timed window."""
    for i in range(warmup):
        step(i)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    per_step = []
    for w in range(windows):
        synchronize()
        start = time.perf_counter()
        for i in range(steps_per_window):
            step(warmup + w * steps_per_window + i)
        synchronize()
        per_step.append((time.perf_counter() - start) / steps_per_window)
    median = statistics.median(per_step)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return StepTiming(median_s=median, steps_per_s=1.0 / median, peak_memory_gb=peak)


def build_model(config: Config, phase: Phase, seed: int = 0) -> Stage1Model:
    torch.manual_seed(seed)
    model = Stage1Model(config.model, config.data)
    model.set_phase(phase, config.model.lora)
    return model


def time_engine(
    config: Config, phase: Phase, batches: list[Batch], warmup: int, windows: int, steps_per_window: int
) -> StepTiming:
    """Forward, ``engine.backward``, ``engine.step`` under the DeepSpeed engine that ``config`` describes."""
    init_distributed()
    model = build_model(config, phase)
    bundle = build_engine(model, config, build_ds_config(config, None), first_step=0)
    engine = bundle.engine
    dev = device()
    moved = [b.to(dev) for b in batches]

    def step(i: int) -> None:
        batch = moved[i % len(moved)]
        out = engine(batch)
        loss = stage1_loss(
            {k: v.float() for k, v in out.reconstruction.items()}, batch, config.model.loss
        ).total
        engine.backward(loss)
        engine.step()

    timing = time_steps(step, warmup, windows, steps_per_window)
    release_engine(bundle, model)
    return timing


def time_plain(
    config: Config,
    phase: Phase,
    batches: list[Batch],
    warmup: int,
    windows: int,
    steps_per_window: int,
    dtype: torch.dtype = torch.float32,
) -> StepTiming:
    """The same model, groups and batches with ``torch.optim.AdamW`` and ``clip_grad_norm_``: the baseline."""
    model = build_model(config, phase)
    dev = device()
    model.to(device=dev, dtype=dtype)
    groups = build_param_groups(model, config.train.optimizer, t5.num_blocks(model.encoder))
    optimizer = torch.optim.AdamW([g.to_optimizer_group() for g in groups], fused=dev.type == "cuda")
    moved = [b.to(dev) for b in batches]

    def step(i: int) -> None:
        batch = moved[i % len(moved)]
        out = model(batch)
        loss = stage1_loss(
            {k: v.float() for k, v in out.reconstruction.items()}, batch, config.model.loss
        ).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.gradient_clipping)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, warmup, windows, steps_per_window)
