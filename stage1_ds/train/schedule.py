"""Pure functions of the global step: the learning-rate multiplier and the phase of trainability."""

from __future__ import annotations

import math

from stage1_ds.config import OptimizerConfig, PhaseConfig


def phase_index(step: int, phases: list[PhaseConfig]) -> int:
    """Index of the phase that global step ``step`` (0-based, the step about to run) belongs to."""
    for i, phase in enumerate(phases):
        if phase.until_step is None or step < phase.until_step:
            return i
    return len(phases) - 1


def phase_start(index: int, phases: list[PhaseConfig]) -> int:
    """The first global step of phase ``index``."""
    if index == 0:
        return 0
    start = phases[index - 1].until_step
    assert start is not None, "every phase but the last has until_step"
    return start


def rewarmup_steps(index: int, phases: list[PhaseConfig], optimizer: OptimizerConfig) -> int:
    """Re-warmup length of phase ``index``: as configured, else none for the first phase and the run's
    ``warmup_steps`` for every later one."""
    configured = phases[index].rewarmup_steps
    if configured is not None:
        return configured
    return 0 if index == 0 else optimizer.warmup_steps


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at ``max_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(step: int, optimizer: OptimizerConfig, phases: list[PhaseConfig], max_steps: int) -> float:
    """The factor every group's base lr is multiplied by at global step ``step``: warmup + cosine over the
    whole run, times the current phase's linear re-warmup (`rewarmup_steps`)."""
    factor = warmup_cosine(step, optimizer.warmup_steps, max_steps, optimizer.min_lr_ratio)
    index = phase_index(step, phases)
    rewarmup = rewarmup_steps(index, phases, optimizer)
    since = step - phase_start(index, phases)
    if rewarmup > 0 and since < rewarmup:
        factor *= (since + 1) / rewarmup
    return factor
