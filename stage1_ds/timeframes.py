"""The timeframes: m1 (the base every other is derived from), m5, m15, m30, h1 and h4, finest first.

At the ground floor beside the config (which validates timeframe names): the data layer aggregates bars into
them (`stage1_ds.data.timeframes`), the model embeds them.
"""

from __future__ import annotations

from enum import StrEnum


class Timeframe(StrEnum):
    M1 = "m1"
    M5 = "m5"
    M15 = "m15"
    M30 = "m30"
    H1 = "h1"
    H4 = "h4"

    @property
    def minutes(self) -> int:
        return _MINUTES[self]

    @property
    def seconds(self) -> int:
        return _MINUTES[self] * 60


_MINUTES = {
    Timeframe.M1: 1,
    Timeframe.M5: 5,
    Timeframe.M15: 15,
    Timeframe.M30: 30,
    Timeframe.H1: 60,
    Timeframe.H4: 240,
}

#: Every timeframe, finest first. m1 is the base every other one is derived from.
TIMEFRAMES: tuple[Timeframe, ...] = tuple(Timeframe)
BASE = Timeframe.M1


def sort_timeframes(names: list[str] | tuple[str, ...]) -> list[Timeframe]:
    """Return the given timeframe names as `Timeframe`s, finest first."""
    return sorted((Timeframe(n) for n in names), key=lambda tf: tf.minutes)
