"""Bars of a timeframe and the bucket aggregation that derives coarser bars from 1-minute bars.

A bar of timeframe k covers the bucket ``[floor(t, k), floor(t, k) + k)`` of the data clock (seconds since
the epoch of the file's own naive clock). Buckets nest: every bucket of a coarser timeframe in
``TIMEFRAMES`` is a union of whole buckets of each finer one, which is what makes the cross-timeframe
consistency loss exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stage1_ds.timeframes import BASE, TIMEFRAMES, Timeframe


@dataclass(frozen=True)
class Bars:
    """Bars of one timeframe of one instrument, sorted by start time.

    Attributes:
        start: (N,) int64 bucket start, seconds of the data clock.
        ohlc: (N, 4) float64 open, high, low, close.
        volume: (N,) float64 summed volume (all zeros when the source has none).
        count: (N,) int32 number of 1-minute bars that built each bar.
        units: (N,) int64 volume in whole units of the instrument's volume unit (`volume_units`), summed
            exactly across timeframes; zeros when the source has no volume.
        log_ohlc: (N, 4) float64 natural log of ``ohlc``, stored by `prepare` so serving needs no log;
            None until written.
    """

    start: np.ndarray
    ohlc: np.ndarray
    volume: np.ndarray
    count: np.ndarray
    units: np.ndarray
    log_ohlc: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.start.shape[0])


def bucket_start(start: np.ndarray, timeframe: Timeframe, origin: int = 0) -> np.ndarray:
    """Start of the ``timeframe`` bucket holding each time: ``floor((t - origin) / k) * k + origin``
    (``origin`` in seconds; the same origin for every timeframe keeps the buckets nested)."""
    return (start - origin) // timeframe.seconds * timeframe.seconds + origin


def aggregate(m1: Bars, timeframe: Timeframe, origin: int = 0) -> Bars:
    """Derive the bars of ``timeframe`` from sorted, duplicate-free 1-minute bars, in buckets that start at
    ``origin`` seconds plus multiples of the timeframe (`bucket_start`).

    Open is the first open of the bucket, high the max of highs, low the min of lows, close the last close,
    volume the sum. A bucket without any 1-minute bar yields no bar (gaps stay gaps).
    """
    if timeframe == BASE:
        return m1
    if len(m1) == 0:
        return Bars(m1.start[:0], m1.ohlc[:0], m1.volume[:0], m1.count[:0], m1.units[:0])
    key = bucket_start(m1.start, timeframe, origin)
    firsts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    lasts = np.r_[firsts[1:], len(key)] - 1
    ohlc = np.empty((len(firsts), 4), dtype=np.float64)
    ohlc[:, 0] = m1.ohlc[firsts, 0]
    ohlc[:, 1] = np.maximum.reduceat(m1.ohlc[:, 1], firsts)
    ohlc[:, 2] = np.minimum.reduceat(m1.ohlc[:, 2], firsts)
    ohlc[:, 3] = m1.ohlc[lasts, 3]
    return Bars(
        start=key[firsts],
        ohlc=ohlc,
        volume=np.add.reduceat(m1.volume, firsts),
        count=np.add.reduceat(m1.count, firsts).astype(np.int32),
        units=np.add.reduceat(m1.units, firsts),
    )


#: Whole units a bar may hold and stay exact in float32, its sums across timeframes included.
MAX_UNITS = 2**24


def volume_unit(volume: np.ndarray, start: np.ndarray) -> float:
    """The quantum of an instrument's volume: a power of two near 1/16 of its median non-zero 1-minute
    volume (1.0 without volume), or the smallest coarser power of two with which every bar of every timeframe
    holds fewer than `MAX_UNITS` units: whole units make sums across timeframes exact in float32. The bound
    is the most volume in any span of the longest timeframe (any bucket of it lies in such a span), plus half
    a unit of rounding for each of its 1-minute bars. A bar's feature is its units over a per-sample
    reference, so the unit itself never reaches the model.

    Args:
        volume, start: (N,) 1-minute volumes and start times (seconds), sorted by time.
    """
    positive = volume[volume > 0]
    if len(positive) == 0:
        return 1.0
    unit = float(2.0 ** np.round(np.log2(np.median(positive) / 16)))
    longest = max(tf.seconds for tf in TIMEFRAMES)
    total = np.r_[0.0, np.cumsum(volume)]
    widest = float(np.max(total[np.searchsorted(start, start + longest)] - total[: len(start)]))
    needed = widest / (MAX_UNITS - longest // 60)
    return unit if needed <= unit else float(2.0 ** np.ceil(np.log2(needed)))


def volume_units(volume: np.ndarray, unit: float) -> np.ndarray:
    """(N,) int64 whole units of volume."""
    return np.round(volume / unit).astype(np.int64)
