"""Measurements shared by the benchmark scripts: step time of the DeepSpeed engine against a plain
PyTorch AdamW loop on the same model and batches, in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.config import (
    Config,
    DataConfig,
    EncoderConfig,
    EncoderPreset,
    ModelConfig,
    Phase,
    PhaseConfig,
    Precision,
    TrainConfig,
)
from stage1_ds.data.batch import Batch
from stage1_ds.data.windows import WindowDataset
from stage1_ds.model import t5
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.timeframes import BASE
from stage1_ds.train.engine import (
    build_ds_config,
    build_engine,
    device,
    init_distributed,
    release_engine,
    use_bf16,
)
from stage1_ds.train.param_groups import build_param_groups


def bench_config(
    preset: str,
    window_bars: int,
    batch_size: int,
    precision: Precision = Precision.AUTO,
    ds_config: str = TrainConfig.ds_config,
    phase: Phase = Phase.FULL,
) -> Config:
    """The config every benchmark measures: six timeframes of ``window_bars``, no dropout, one phase, no
    warmup (a zero first lr would make the first steps unrepresentative)."""
    config = Config(
        data=DataConfig(window_bars=window_bars),
        model=ModelConfig(encoder=EncoderConfig(preset=EncoderPreset(preset), dropout=0.0)),
        train=TrainConfig(
            micro_batch_size=batch_size, precision=precision, ds_config=ds_config, phases=[PhaseConfig(phase)]
        ),
    )
    config.train.optimizer.warmup_steps = 0
    return config.validate()


def masked_batches(data_dir: Path | str, config: Config, count: int) -> list[Batch]:
    """``count`` masked training batches of ``train.micro_batch_size`` windows, spread over the split."""
    windows = WindowDataset(data_dir, "train", config.data)
    data = MaskedWindows(windows, config.model.masking, config.model.patch_len, seed=0)
    size = config.train.micro_batch_size
    return [data.batch(np.arange(size) * 997 + 7919 * i) for i in range(count)]


@dataclass
class StepTiming:
    median_s: float
    steps_per_s: float
    peak_memory_gb: float | None


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step: Callable[[int], object], warmup: int, windows: int, steps_per_window: int) -> StepTiming:
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


def loop_forward(model: Stage1Model, batch: Batch) -> dict[str, torch.Tensor]:
    """The design this project replaces: one encoder call per timeframe, no attention across timeframes."""
    out = {}
    for tf, window in batch.windows.items():
        mask = window.mask if window.mask is not None else torch.zeros_like(window.valid)
        tokens, _, valid, _ = model.embed(tf, window.features, mask, window.valid, window.start_time)
        hidden = t5.run_encoder(model.encoder, tokens, valid.long())
        out[tf] = model.heads(tf, hidden, window.features.shape[1])
    return out


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
    bundle = build_engine(model, config, build_ds_config(config))
    engine = bundle.engine
    dev = device()
    moved = [b.to(dev) for b in batches]

    def step(i: int) -> None:
        batch = moved[i % len(moved)]
        out = engine(batch)
        loss = stage1_loss(out.reconstruction, batch, config.model.loss, out.future_size).total
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
    forward: Callable[[Stage1Model, Batch], dict[str, torch.Tensor]] | None = None,
) -> StepTiming:
    """The same model, groups and batches with ``torch.optim.AdamW`` and ``clip_grad_norm_``: the baseline.

    fp32 weights, with bf16 autocast when the config asks for bf16 (plain PyTorch's mixed precision).
    ``forward`` replaces the model's own forward (e.g. `loop_forward`).
    """
    model = build_model(config, phase)
    dev = device()
    model.to(device=dev)
    autocast = use_bf16(config.train.precision)
    groups = build_param_groups(model, config.train.optimizer, t5.num_blocks(model.encoder))
    optimizer = torch.optim.AdamW([g.to_optimizer_group() for g in groups], fused=dev.type == "cuda")
    moved = [b.to(dev) for b in batches]

    def step(i: int) -> None:
        batch = moved[i % len(moved)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            out = forward(model, batch) if forward is not None else model(batch).reconstruction
        loss = stage1_loss(out, batch, config.model.loss).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.gradient_clipping)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, warmup, windows, steps_per_window)


def synthetic_frame(days: int, seed: int) -> Any:
    """The synthetic market's 1-minute bars as a user's pandas DataFrame (times as the index)."""
    import pandas as pd

    from stage1_ds.data.synthetic import generate_synthetic_m1

    bars = generate_synthetic_m1(days, seed)
    return pd.DataFrame(
        dict(zip(("open", "high", "low", "close"), bars.ohlc.T, strict=True), volume=bars.volume),
        index=pd.to_datetime(bars.start, unit="s"),
    )


def decision_latency(
    model: Stage1Model, buffer_days: int | None, repeats: int, seed: int = 0
) -> dict[str, float]:
    """Median milliseconds of one `stage1_ds.Encoder.embed` at the newest bar of a rolling buffer of
    ``buffer_days`` of the synthetic market (an instrument added from the 60 days before it), and of the
    forward pass alone on the same window; on the model's device. ``buffer_days`` None: half again the
    calendar span of the longest window, plus two days (weekends)."""
    import math

    import pandas as pd

    from stage1_ds.encoder import Encoder
    from stage1_ds.encoding import encode_batch
    from stage1_ds.timeframes import Timeframe

    if buffer_days is None:
        longest = max(bars * Timeframe(tf).minutes for tf, bars in model.window_bars.items())
        buffer_days = math.ceil(1.5 * longest / 1440) + 2
    frame = synthetic_frame(60 + buffer_days, seed)
    cut = frame.index[-1] - pd.Timedelta(days=buffer_days)
    synthetic = {"bucket_origin_seconds": 0, "instruments": {}}  # the synthetic market's buckets
    stats = {"instruments": {}, "lag_bars": max(model.window_bars.values()) // 2}
    encoder = Encoder(model, stats, synthetic, device=device())
    encoder.add_instrument("SYNTH", frame[frame.index < cut])
    buffer = frame[frame.index >= cut]
    derived = encoder.derive(encoder.minute_bars(buffer, "SYNTH"))
    batch = encoder.batch(derived, derived.ends[BASE][-1:], "SYNTH")
    embed_ms = time_steps(lambda _: encoder.embed(buffer, instrument="SYNTH"), 5, repeats, 1).median_s * 1e3
    forward_ms = time_steps(lambda _: encode_batch(encoder.model, batch), 5, repeats, 1).median_s * 1e3
    return {
        "decision_ms": embed_ms,
        "forward_only_ms": forward_ms,
        "buffer_bars": float(len(buffer)),
        "buffer_days": float(buffer_days),
    }
