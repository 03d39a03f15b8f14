"""The one metrics writer: TensorBoard on rank 0, a no-op elsewhere, so call sites never branch on rank.

Besides plain scalars it knows what a training step reports (losses, per-group learning rates, gradient
norm, phase, throughput, MFU, memory) and draws the masked-window image.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from stage1_ds.evaluation.baselines import cross_timeframe_rules
from stage1_ds.evaluation.plots import ExampleWindow, example_figure, example_window
from stage1_ds.model.masking import MODES, MaskedWindows
from stage1_ds.model.stage1 import Stage1Model, parameter_report
from stage1_ds.train.param_groups import ParamGroup

#: Dense bf16 peak FLOP/s of one device, for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


class MetricsWriter:
    """TensorBoard events under ``log_dir`` when ``enabled`` (rank 0); every method is a no-op otherwise."""

    def __init__(self, log_dir: Path, enabled: bool):
        self._writer = SummaryWriter(str(log_dir)) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def training(
        self,
        engine: Any,
        groups: list[ParamGroup],
        model: Stage1Model,
        losses: dict[str, float],
        phase: int,
        step: int,
        samples_per_s: float,
        tokens_per_sample: int,
        device_peak_flops: float | None,
        lr_factor: float,
    ) -> None:
        """Scalars of a training step; ``lr_factor`` is the schedule's multiplier the step used (DeepSpeed's
        param groups already hold the next step's lr)."""
        if self._writer is None:
            return
        values = dict(losses)
        for group in groups:
            values[f"lr/{group.name}"] = group.lr * lr_factor
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            values["grad_norm"] = float(grad_norm)
        report = parameter_report(model)["all"]
        values["phase"] = phase
        values["params/trainable"] = report["trainable"]
        values["perf/samples_per_s"] = samples_per_s
        values["perf/tokens_per_s"] = samples_per_s * tokens_per_sample
        if device_peak_flops is not None:
            flops = samples_per_s * tokens_per_sample * flops_per_token(model)
            values["perf/mfu"] = flops / (device_peak_flops * torch.distributed.get_world_size())
        if torch.cuda.is_available():
            values["memory/peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            values["memory/peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        self.scalars(values, step)

    @torch.no_grad()
    def masked_window(self, engine: Any, data: MaskedWindows, device: torch.device, step: int) -> None:
        """The image ``val/masked_window``: the first validation sample as candles in price, the model's
        and ``cross_timeframe_rules``' reconstructions on its masked bars (`training_example`)."""
        if self._writer is None:
            return
        engine.eval()
        example = training_example(engine, data, device)
        engine.train()
        self._writer.add_figure("val/masked_window", example_figure(example), step, close=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def training_example(model: Any, data: MaskedWindows, device: torch.device) -> ExampleWindow:
    """The first sample of ``data`` with ``model``'s reconstruction (an engine or a `Stage1Model`) beside
    ``cross_timeframe_rules``, the strongest hand rule that needs no training split."""
    batch = data.batch(np.asarray([0]))
    output = model(batch.to(device))
    reconstruction = {tf: value.float().cpu() for tf, value in output.reconstruction.items()}
    assert batch.mask_mode is not None
    return example_window(
        batch,
        0,
        reconstruction,
        cross_timeframe_rules(batch),
        dict.fromkeys(batch.windows, "cross_timeframe_rules"),
        data.windows.instruments[int(batch.instrument[0])],
        MODES[int(batch.mask_mode[0])].value,
    )


def flops_per_token(model: Stage1Model) -> int:
    """Forward + backward FLOPs per patch token: 6 x trainable + 4 x frozen parameters (a frozen weight
    still needs the backward pass through it, but no weight gradient); the unused token embedding is left
    out."""
    report = parameter_report(model)["all"]
    return 6 * report["trainable"] + 4 * (report["total"] - report["trainable"])


def peak_flops() -> float | None:
    """Dense bf16 peak of this GPU from its name (H100/H200/A100); None on the CPU or an unknown GPU."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
