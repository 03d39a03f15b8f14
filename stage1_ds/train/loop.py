"""The training loop, top to bottom: setup, a fail-fast evaluation, then steps with periodic actions.

A phase of trainability is a stretch of global steps with one DeepSpeed engine; at a phase boundary the
run checkpoints and rebuilds the engine for the next phase (`stage1_ds.train.engine.rebuild_engine`). The
global step, the data position and the lr schedule carry on across engines and across restarts; every
learning rate is a pure function of the global step, set before each step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from stage1_ds.config import Config, config_to_dict
from stage1_ds.data.batch import Batch
from stage1_ds.data.corpus import DataSource, open_windows
from stage1_ds.data.sampler import WindowSampler, build_loader, training_mix
from stage1_ds.data.store import write_json
from stage1_ds.errors import Stage1Error
from stage1_ds.model.losses import LossOutput, stage1_loss
from stage1_ds.model.masking import MaskedWindows, num_patches
from stage1_ds.model.stage1 import Stage1Model, format_parameter_report, parameter_report
from stage1_ds.timeframes import sort_timeframes
from stage1_ds.train.checkpoint import (
    TrainState,
    checkpoint_dir,
    find_resume_point,
    latest_tag,
    restore_engine,
    restore_model,
    save_checkpoint,
    write_run_files,
)
from stage1_ds.train.engine import (
    EngineBundle,
    build_ds_config,
    build_engine,
    device,
    init_distributed,
    is_offloaded,
    read_ds_json,
    rebuild_engine,
    release_engine,
    set_learning_rates,
)
from stage1_ds.train.metrics import MetricsWriter, peak_flops
from stage1_ds.train.ops import choose_adam
from stage1_ds.train.param_groups import format_group_table
from stage1_ds.train.preemption import StopFlag
from stage1_ds.train.schedule import lr_multiplier, phase_index

log = logging.getLogger(__name__)
#: The Adam implementation of the run and why (`stage1_ds.train.ops.choose_adam`), written to the run folder.
ADAM_RECORD = "optimizer_op.json"  # one of `stage1_ds.train.checkpoint.RUN_FILES`


class TrainingError(Stage1Error):
    """The run cannot go on (non-finite losses or gradients beyond the allowed number of bad steps)."""


class TrainingInterrupted(Stage1Error):
    """Ctrl-C (SIGINT) stopped the run at ``step``; ``checkpoint`` is the last complete one (None: none yet).
    Nothing is saved on an interrupt: the last complete checkpoint is what a resume continues from."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    """Where the run ended: its step, the last logged losses, the last val losses, the newest checkpoint's
    tag, the val losses evaluated before its first step (on the same batches as every evaluation), and what
    stopped it before ``train.max_steps``: a signal's name (``"SIGTERM"``, ``"SIGUSR1"``: a checkpoint of
    that step was saved), ``"stop_at_step"``, or None (it ran to the end)."""

    global_step: int
    last_losses: dict[str, float]
    val_losses: dict[str, float]
    checkpoint_tag: str | None
    start_val_losses: dict[str, float]
    stopped_by: str | None = None


def train(
    config: Config, data_dir: DataSource, run_dir: Path, resume: bool = False, stop_at_step: int | None = None
) -> TrainResult:
    """Train the Stage-1 model; see the module docstring.

    Args:
        data_dir: a prepared folder, or several (or a catalog file listing them) served as one corpus.
        resume: continue from the newest complete checkpoint (an existing checkpoint in ``run_dir`` also
            resumes). A checkpoint written by another number of ranks is loaded through a universal copy,
            optimizer state included, and the data position is carried over in samples.
        stop_at_step: save and stop after this global step, as a preempted job would (the schedule still
            runs to ``train.max_steps``); for time-limited jobs that run a long training in pieces.

    Raises:
        ConfigError: the config is invalid. TrainingError: too many non-finite steps. Whatever stops the
            run, the signal handlers are restored and the engine and metrics writer released.
    """
    # -- setup ---------------------------------------------------------------------------------------
    started = time.perf_counter()

    def since_start() -> str:
        return f"{time.perf_counter() - started:.1f} s"

    config.validate()
    rank, world = init_distributed()
    dev = device()
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    train_cfg = config.train
    phases = train_cfg.phases
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))

    patch_len = config.model.patch_len
    train_data = MaskedWindows(
        open_windows(data_dir, "train", config.data, seed=config.seed),
        config.model.masking,
        patch_len,
        seed=config.seed,
    )
    val_data = MaskedWindows(
        open_windows(data_dir, "val", config.data, seed=config.seed + 1),
        config.model.masking,
        patch_len,
        seed=config.seed + 1,
    )
    tokens_per_sample = sum(num_patches(config.data.bars(tf), patch_len) for tf in config.data.timeframes)
    log.info(
        "data read: %d train and %d val windows of %d instruments (%s)",
        len(train_data),
        len(val_data),
        len(train_data.windows.instruments),
        since_start(),
    )
    if config.data.context:
        log.info(
            "context: each sample also reads up to %d other instruments of these %d at its anchor time (absent "
            "where one has no bar in the %d minutes before it)",
            config.data.context_max,
            len(train_data.windows.instruments),
            config.data.context_stale_minutes,
        )

    model = Stage1Model(config.model, config.data)
    encoder = config.model.encoder
    log.info(
        "model built: %s, %s (%s)", encoder.preset.value, encoder.pretrained or "random init", since_start()
    )
    if rank == 0:
        write_run_files(run_dir, model, data_dir)
    point = find_resume_point(run_dir, resume, config)
    if point is None:
        state = TrainState()
        model.set_phase(phases[0].name, config.model.lora)
    else:
        state = point.state
        restore_model(point, model, config)
    torch.manual_seed(config.seed + 1000 * (rank + 1))  # dropout differs between ranks

    adam = choose_adam(train_cfg.adam_op, is_offloaded(read_ds_json(config)))
    (log.warning if adam.fallback else log.info)("optimizer: %s (%s)", adam.op, adam.reason)
    if rank == 0:
        write_json(run_dir / ADAM_RECORD, {"op": adam.op, "fallback": adam.fallback, "reason": adam.reason})
    ds_config = build_ds_config(config, adam)
    metrics = MetricsWriter(run_dir / "tensorboard", enabled=rank == 0)
    stop = StopFlag()
    stopped_by: str | None = None
    bundle = EngineBundle(engine=None, groups=[])
    try:
        log.info(
            "building the DeepSpeed engine (ZeRO stage %s%s); the first run on a machine compiles its "
            "ops, a minute or two",
            ds_config.get("zero_optimization", {}).get("stage"),
            ", optimizer on the CPU" if is_offloaded(ds_config) else "",
        )
        bundle = build_engine(model, config, point.ds_config(ds_config) if point else ds_config)
        log.info("engine ready (%s)", since_start())
        if point is not None:
            restore_engine(point, bundle.engine, run_dir)  # the random state too: nothing draws after this
        _log_phase(bundle, model, phases[state.phase_index].name, state.global_step)

        # The same validation batches every time: a fixed seed, always from the start.
        val_batches = partial(
            WindowSampler, len(val_data), train_cfg.micro_batch_size, config.seed + 1, rank, world
        )
        # The same batches as every later evaluation, so that this val loss (after a resume too) compares
        # with the ones logged along the run.
        first_val = validation_losses(
            bundle.engine, val_data, val_batches(num_batches=train_cfg.eval_batches), config, dev
        )
        log.info("evaluation before training works: val loss %.4f", first_val["val/loss/total"])
        if point is None:  # the curve's first point: the untrained model (a resume logged its own already)
            metrics.scalars(first_val, state.global_step)

        sampler = WindowSampler(
            len(train_data),
            train_cfg.micro_batch_size,
            seed=config.seed,
            rank=rank,
            world_size=world,
            start_batch=state.batches_consumed,
            mix=training_mix(train_data.windows, config.data, config.seed),
        )
        batches = iter(build_loader(train_data, sampler, config.data.num_workers))

        def save() -> str:
            """Checkpoint the current engine (every rank); returns the tag."""
            phase = phases[state.phase_index].name
            return save_checkpoint(bundle.engine, run_dir, state, config, phase, train_cfg.keep_checkpoints)

        last_losses: dict[str, float] = {}
        val_losses: dict[str, float] = first_val
        last_saved = state.global_step if point is not None else -1
        window_start, window_steps = time.perf_counter(), 0

        # -- the loop ----------------------------------------------------------------------------------
        with (
            logging_redirect_tqdm(),
            tqdm(
                total=train_cfg.max_steps,
                initial=state.global_step,
                unit="step",
                disable=rank != 0 or None,
                dynamic_ncols=True,
            ) as progress,
        ):
            while state.global_step < train_cfg.max_steps:
                is_phase_boundary = phase_index(state.global_step, phases) != state.phase_index
                if is_phase_boundary:
                    if last_saved != state.global_step:
                        save()
                    state.phase_index = phase_index(state.global_step, phases)
                    bundle, continuing = rebuild_engine(
                        bundle, model, config, ds_config, phases[state.phase_index].name
                    )
                    _log_phase(bundle, model, phases[state.phase_index].name, state.global_step)
                    log.info("Adam state carried over for groups %s; the others start fresh", continuing)

                lr_factor = lr_multiplier(state.global_step, train_cfg.optimizer, phases, train_cfg.max_steps)
                set_learning_rates(bundle, lr_factor)
                step_losses, bad_losses = train_step(bundle.engine, batches, config, dev, state)
                state.global_step += 1
                window_steps += 1
                progress.update(1)

                step = state.global_step
                is_bad_step = not bundle.engine.was_step_applied()
                is_log_step = step % train_cfg.log_every_steps == 0 or step == train_cfg.max_steps
                is_eval_step = step % train_cfg.eval_every_steps == 0 or step == train_cfg.max_steps
                is_image_step = step % train_cfg.image_every_steps == 0
                is_stop_step = stop.agreed(dev) or step == stop_at_step
                is_save_step = (
                    step % train_cfg.save_every_steps == 0 or step == train_cfg.max_steps or is_stop_step
                )

                if is_bad_step:
                    _skip_bad_step(state, config, bad_losses, run_dir)
                if is_log_step and "loss/total" in step_losses:  # absent when every micro batch was bad
                    elapsed = time.perf_counter() - window_start
                    last_losses = step_losses
                    samples = (
                        window_steps
                        * train_cfg.micro_batch_size
                        * train_cfg.gradient_accumulation_steps
                        * world
                    )
                    metrics.training(
                        bundle.engine,
                        bundle.groups,
                        model,
                        step_losses,
                        phase=state.phase_index,
                        step=step,
                        samples_per_s=samples / elapsed,
                        tokens_per_sample=tokens_per_sample,
                        device_peak_flops=train_cfg.peak_flops_per_device or peak_flops(),
                        lr_factor=lr_factor,
                    )
                    log.info(
                        "step %d/%d | phase %s | loss %.4f | recon %.4f | cross %.4f | lr %.2e (%s) | "
                        "%.1f samples/s",
                        step,
                        train_cfg.max_steps,
                        phases[state.phase_index].name,
                        step_losses["loss/total"],
                        step_losses["loss/reconstruction"],
                        step_losses["loss/cross"],
                        bundle.groups[0].lr * lr_factor,
                        bundle.groups[0].name,
                        samples / elapsed,
                    )
                    window_start, window_steps = time.perf_counter(), 0
                if is_eval_step:
                    val_losses = validation_losses(
                        bundle.engine,
                        val_data,
                        val_batches(num_batches=train_cfg.eval_batches),
                        config,
                        dev,
                    )
                    metrics.scalars(val_losses, step)
                    log.info("step %d | val loss %.4f", step, val_losses["val/loss/total"])
                if is_image_step:
                    metrics.masked_window(bundle.engine, val_data, dev, step)
                if is_save_step:
                    tag = save()
                    last_saved = step
                    log.info("checkpoint %s saved", checkpoint_dir(run_dir) / tag)
                if is_stop_step:  # the caller says so, with the command that resumes (`stage1 train`)
                    stopped_by = stop.name or "stop_at_step"
                    break
    except KeyboardInterrupt:
        last = latest_tag(run_dir)
        raise TrainingInterrupted(
            state.global_step, checkpoint_dir(run_dir) / last if last else None
        ) from None
    finally:
        stop.restore()
        metrics.close()
        release_engine(bundle, model)
    return TrainResult(state.global_step, last_losses, val_losses, latest_tag(run_dir), first_val, stopped_by)


def train_step(
    engine: Any, batches: Any, config: Config, dev: torch.device, state: TrainState
) -> tuple[dict[str, float], list[float]]:
    """One optimizer step: gradient accumulation over micro batches, forward, ``engine.backward``,
    ``engine.step``.

    A non-finite loss is backpropagated as it is: its non-finite gradients make DeepSpeed skip the whole
    optimizer step on every rank (weights, Adam moments and step count untouched; the engine's
    ``was_step_applied()`` says so), which is exactly what a skipped step should be.

    Returns:
        The step's losses, averaged over the micro batches with a finite loss and over ranks (the same keys
        on every rank, ``loss/...``; none when every micro batch was bad), and this rank's non-finite
        losses.
    """
    totals: dict[str, torch.Tensor] = {}
    bad: list[float] = []
    for _ in range(config.train.gradient_accumulation_steps):
        batch: Batch = next(batches).to(dev)
        state.batches_consumed += 1
        output = engine(batch)
        losses = stage1_loss(output.reconstruction, batch, config.model.loss, output.future_size)
        if torch.isfinite(losses.total):
            _accumulate(totals, losses, dev)
        else:
            bad.append(float(losses.total.detach()))
        engine.backward(losses.total)
        engine.step()
    return _mean_over_ranks(totals, config, dev), bad


def _skip_bad_step(state: TrainState, config: Config, bad_losses: list[float], run_dir: Path) -> None:
    """Count a step DeepSpeed skipped for non-finite gradients; stop the run when too many were skipped.

    Raises:
        TrainingError: more than ``train.max_bad_steps`` steps were skipped; names the step and the last
            good checkpoint.
    """
    state.bad_steps += 1
    last = latest_tag(run_dir)
    where = checkpoint_dir(run_dir) / last if last else "none yet"
    if state.bad_steps > config.train.max_bad_steps:
        raise TrainingError(
            f"step {state.global_step}: the loss or its gradients are not finite (this rank's non-finite "
            f"losses: {bad_losses or 'none'}), after "
            f"{state.bad_steps - 1} skipped bad steps (train.max_bad_steps {config.train.max_bad_steps}); "
            f"last good checkpoint: {where}"
        )
    log.warning(
        "step %d: non-finite loss or gradients, step skipped (%d of %d allowed)",
        state.global_step,
        state.bad_steps,
        config.train.max_bad_steps,
    )


def _accumulate(totals: dict[str, torch.Tensor], losses: LossOutput, dev: torch.device) -> None:
    """Add a batch's loss components to running (sum, count) pairs; empty components count for nothing."""
    one = torch.ones((), device=dev)
    present = {key: (count > 0).to(dev, torch.float64) for key, count in losses.counts.items()}
    for key, value in {**losses.components, "total": losses.total}.items():
        weight = present.get(key, one)
        totals.setdefault(key, torch.zeros(2, device=dev, dtype=torch.float64))
        totals[key] += torch.stack([value.detach().double() * weight, weight.double()])


def _loss_keys(config: Config) -> list[str]:
    tfs = [tf.value for tf in sort_timeframes(config.data.timeframes)]
    volume = ["reconstruction/volume", "cross/volume"] if config.data.volume else []
    ranges = ["range", *(f"range/{tf}" for tf in tfs)] if config.model.loss.range_weight > 0 else []
    future = ["future"] if config.model.loss.future_weight > 0 else []
    return (
        ["total", "reconstruction", "cross"]
        + [f"reconstruction/{tf}" for tf in tfs]
        + [f"cross/{tf}" for tf in tfs]
        + volume
        + ranges
        + future
    )


def _mean_over_ranks(
    totals: dict[str, torch.Tensor], config: Config, dev: torch.device, prefix: str = "loss/"
) -> dict[str, float]:
    """Average (sum, count) pairs over ranks with one all-reduce on ``dev`` (NCCL takes device tensors
    only); every rank passes the same key list, whatever it has."""
    keys = _loss_keys(config)
    stacked = torch.stack([totals.get(k, torch.zeros(2, device=dev, dtype=torch.float64)) for k in keys])
    torch.distributed.all_reduce(stacked)
    return {f"{prefix}{k}": s / c for k, (s, c) in zip(keys, stacked.tolist(), strict=True) if c > 0}


@torch.no_grad()
def validation_losses(
    engine: Any, data: MaskedWindows, sampler: WindowSampler, config: Config, dev: torch.device
) -> dict[str, float]:
    """Mean validation losses over the sampler's batches, averaged over ranks."""
    engine.eval()
    totals: dict[str, torch.Tensor] = {}
    for ids in sampler:
        batch = data.batch(np.asarray(ids)).to(dev)
        output = engine(batch)
        _accumulate(
            totals, stage1_loss(output.reconstruction, batch, config.model.loss, output.future_size), dev
        )
    engine.train()
    return _mean_over_ranks(totals, config, dev, prefix="val/loss/")


def _log_phase(bundle: EngineBundle, model: Stage1Model, phase: str, step: int) -> None:
    log.info("phase %s from step %d; parameter groups:\n%s", phase, step, format_group_table(bundle.groups))
    log.info("parameters:\n%s", format_parameter_report(parameter_report(model)))
