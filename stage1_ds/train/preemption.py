"""Preemption notices: SIGTERM or SIGUSR1 ask the training loop to save a checkpoint and stop."""

from __future__ import annotations

import signal
from typing import Any


class StopFlag:
    """Raised by SIGTERM or SIGUSR1 (what SLURM and cloud schedulers send before they stop a job); the loop
    saves a checkpoint and stops after the current step. `restore` puts the previous handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.raised = False
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
