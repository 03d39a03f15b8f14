"""One metrics writer: TensorBoard on rank 0, a no-op elsewhere, so call sites never branch on rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from stage1_ds.model.stage1 import Stage1Model, parameter_report

#: Dense bf16 peak FLOP/s of one device, for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


class MetricsWriter:
    def __init__(self, log_dir: Path, enabled: bool):
        self._writer = SummaryWriter(str(log_dir)) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        if self._writer is not None:
            self._writer.add_figure(tag, figure, step, close=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


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
