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

from stage1_ds.data.corpus import volume_unit_of
from stage1_ds.data.figures import ExampleWindow, choose_example, example_figure, example_window
from stage1_ds.model.baselines import cross_timeframe_rules
from stage1_ds.model.masking import MODES, MaskedWindows
from stage1_ds.model.stage1 import Stage1Model, parameter_report
from stage1_ds.train.param_groups import ParamGroup

#: Dense bf16 peak FLOP/s of one device, for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


class MetricsWriter:
    """TensorBoard events under ``log_dir`` when ``enabled`` (rank 0); every method is a no-op otherwise."""

    def __init__(self, log_dir: Path, enabled: bool):
        self._writer = SummaryWriter(str(log_dir)) if enabled else None
        self._example_id: int | None = None  # the validation sample drawn all run (`example_sample`)

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
        """The image ``val/masked_window``: one validation window chosen at the first call
        (`example_sample`) and drawn at every call, so progress on the same bars can be watched, as candles
        in price with the model's and ``cross_timeframe_rules``' reconstructions on its masked bars. The
        choice is a function of the data and its seed only: a resumed run draws the same window."""
        if self._writer is None:
            return
        if self._example_id is None:
            self._example_id = example_sample(data)
        engine.eval()
        example = training_example(engine, data, device, self._example_id)
        engine.train()
        self._writer.add_figure("val/masked_window", example_figure(example), step, close=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


#: Validation samples `example_sample` chooses among, spread evenly over the split (neighbouring anchors
#: share their windows: the first ones would all hold the same weekend).
EXAMPLE_CANDIDATES = 64


def example_sample(data: MaskedWindows, seed: int = 0) -> int:
    """The id of the validation sample to draw all run (`choose_example` over `EXAMPLE_CANDIDATES` samples
    spread over the split); the same for the same data and seed."""
    ids = np.unique(np.linspace(0, len(data) - 1, min(EXAMPLE_CANDIDATES, len(data))).astype(np.int64))
    chosen = choose_example(data.batch(ids), np.ones(len(ids), bool), seed)
    return int(ids[chosen or 0])


@torch.no_grad()
def training_example(
    model: Any, data: MaskedWindows, device: torch.device, sample_id: int = 0
) -> ExampleWindow:
    """Sample ``sample_id`` of ``data`` with ``model``'s reconstruction (an engine or a `Stage1Model`)
    beside ``cross_timeframe_rules``, the strongest hand rule that needs no training split."""
    batch = data.batch(np.asarray([sample_id]))
    output = model(batch.to(device))
    reconstruction = {tf: value.float().cpu() for tf, value in output.reconstruction.items()}
    assert batch.mask_mode is not None
    instrument = data.windows.instruments[int(batch.instrument[0])]
    return example_window(
        batch,
        0,
        reconstruction,
        cross_timeframe_rules(batch),
        dict.fromkeys(batch.windows, "cross_timeframe_rules"),
        instrument,
        MODES[int(batch.mask_mode[0])].value,
        volume_unit=volume_unit_of(data.windows, instrument),
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
