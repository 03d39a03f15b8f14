"""The preemption flag keeps a notice that lands while its rank waits in the step's all-reduce: Python runs
the handler when the collective returns, before the flag stores the reduced value. The launch tests send
real signals to real ranks; this one puts the signal inside the collective every time."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from stage1_ds.train.engine import device, init_distributed
from stage1_ds.train.preemption import StopFlag


def test_a_signal_received_during_the_all_reduce_is_agreed_at_the_next_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init_distributed()
    reduce = torch.distributed.all_reduce
    delivered = []

    def all_reduce_with_a_notice_inside(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
        """The real all-reduce, with SIGUSR1 delivered to this process after the flag built its tensor."""
        if not delivered:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs before the next line
            delivered.append(True)
        return reduce(tensor, *args, **kwargs)

    stop = StopFlag()
    try:
        assert not stop.agreed(device()), "no notice yet"
        monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce_with_a_notice_inside)
        assert not stop.agreed(device()), "the notice came after this step's value was sent"
        assert delivered
        assert stop.agreed(device()), "the notice received during the collective was lost"
        assert stop.name == "SIGUSR1"
        assert stop.agreed(device()) and stop.name == "SIGUSR1", "once agreed, it stays"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) != stop._handle, "the previous handler is back"
