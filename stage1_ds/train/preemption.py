"""Preemption notices: SIGTERM or SIGUSR1 ask the training loop to save a checkpoint and stop.

A scheduler may signal one rank, or every rank at slightly different moments; the ranks agree on the
step to stop at with one all-reduce per step (`StopFlag.agreed`), so they all save the same checkpoint
and none is left waiting in a collective; they agree on the signal too (the highest number any rank
received), so every rank reports the same one and exits with the same code. A second signal to the same process while the first is being
honoured is not swallowed: it goes to the previous handler (by default, the process ends), so a run that
cannot finish its checkpoint can still be stopped.

A rank spends much of a step waiting inside that all-reduce, and Python runs a signal's handler when the
call returns: the signal this process received is kept apart from the agreed one, so a notice that lands
during the collective is agreed at the next step instead of being overwritten by the result.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch


class StopFlag:
    """Raised by SIGTERM or SIGUSR1 (what SLURM and cloud schedulers send before they stop a job); the loop
    saves a checkpoint and stops after the current step. `restore` puts the previous handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.raised = False
        #: The signal that stopped the run, agreed over ranks (0: none yet).
        self.signum = 0
        self._received = 0  # the signal this process itself received (raised may come from another rank)
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._received:  # asked again: let the previous handler act (by default, the process ends)
            signal.signal(signum, self._previous[signal.Signals(signum)])
            os.kill(os.getpid(), signum)
            return
        self._received = int(signum)

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank has been asked to stop (then `signum` is the same on every rank). Collective:
        every rank calls it after every step."""
        flag = torch.tensor([float(max(self.signum, self._received))], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        # Only the reduced value: a signal received during the call is in the next step's tensor, and no
        # rank stops a step before another.
        self.signum = int(flag.item())
        self.raised = self.signum > 0
        return self.raised

    @property
    def name(self) -> str | None:
        """The agreed signal's name (``"SIGTERM"``), None when no rank was signalled."""
        return signal.Signals(self.signum).name if self.signum else None

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
