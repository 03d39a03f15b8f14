"""One metrics writer: TensorBoard on rank 0, a no-op elsewhere, so call sites never branch on rank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


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

    def text(self, tag: str, text: str, step: int) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
