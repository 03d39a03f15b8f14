"""Splitting one instrument's bars by time (train, then val, then test, with a gap between them at least as
long as the longest window) and what is fitted on the train split (`fit_stats`)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stage1_ds.config import SPLITS
from stage1_ds.data.features import power_of_two_scale
from stage1_ds.data.store import SplitRange
from stage1_ds.data.timeframes import Bars
from stage1_ds.errors import DataError
from stage1_ds.timeframes import BASE, Timeframe

log = logging.getLogger(__name__)


#: Fewer 1-minute anchors than a day's worth in a val or test split and `prepare` warns.
FEW_ANCHORS = 1440


def warn_few_anchors(m1: Bars, splits: dict[str, SplitRange], name: str) -> None:
    """Warn when a non-empty val or test split has fewer than `FEW_ANCHORS` 1-minute bars after its history
    (the anchors its windows can end at, so the bars that can be scored)."""
    for split in ("val", "test"):
        r = splits[split]
        if r.empty:
            continue
        anchors = int(
            ((m1.start >= r.anchor_start - BASE.seconds) & (m1.start + BASE.seconds <= r.end)).sum()
        )
        if anchors < FEW_ANCHORS:
            log.warning(
                "%s: the %s split's windows can end at only %d 1-minute bars (%.1f hours of trading after its "
                "%.1f days of history), fewer than a day's worth (%d): its scores will be noisy; a longer "
                "file, a larger %s share (--split) or a smaller --window-bars gives more",
                name,
                split,
                anchors,
                anchors / 60,
                (r.anchor_start - r.history_start) / 86400,
                FEW_ANCHORS,
                split,
            )


def longest_window_span(by_tf: dict[Timeframe, Bars], window_bars: int, name: str) -> int:
    """The longest time, in seconds, that ``window_bars`` consecutive bars of any timeframe cover."""
    longest = 0
    for tf, bars in by_tf.items():
        if len(bars) < window_bars:
            raise DataError(
                f"instrument {name}: only {len(bars)} {tf.value} bars, fewer than one window of "
                f"{window_bars}; give more data or a smaller --window-bars"
            )
        start = bars.start
        span = int(np.max(start[window_bars - 1 :] - start[: len(start) - window_bars + 1])) + tf.seconds
        longest = max(longest, span)
    return longest


def split_ranges(
    m1: Bars, fractions: tuple[float, float, float], gap: int, name: str
) -> dict[str, SplitRange]:
    """Time ranges of the splits by shares of the 1-minute rows; every non-empty split but train starts
    with ``gap`` seconds of history (a val or test split with nothing before it too: that lead-in is what a
    folder without a train split fits its statistics on, `fitting_period`), and an empty split is an empty
    range at its place in time."""
    n = len(m1)
    end = int(m1.start[-1]) + BASE.seconds
    bounds = [0.0, fractions[0], fractions[0] + fractions[1], 1.0]
    rows = [min(n, int(n * b)) if k < 3 else n for k, b in enumerate(bounds)]
    times = [int(m1.start[r]) if r < n else end for r in rows]
    ranges = {}
    for k, split in enumerate(SPLITS):
        if rows[k + 1] <= rows[k]:
            ranges[split] = SplitRange(times[k], times[k], times[k])
            continue
        history = times[k]
        ranges[split] = SplitRange(history, history + (gap if split != "train" else 0), times[k + 1])
        r = ranges[split]
        if r.anchor_start >= r.end:
            raise DataError(
                f"instrument {name}: the {split} split ({(r.end - r.history_start) / 86400:.1f} days) is no "
                f"longer than the gap between splits ({gap / 86400:.1f} days, the longest window span); "
                "give more data, larger split fractions or a smaller --window-bars"
            )
    return ranges


def in_range(bars: Bars, tf: Timeframe, r: SplitRange) -> np.ndarray:
    return (bars.start >= r.history_start) & (bars.start + tf.seconds <= r.end)


def rows_per_split(bars: Bars, tf: Timeframe, splits: dict[str, SplitRange]) -> dict[str, int]:
    counts = {"total": len(bars)}
    counts.update({s: int(in_range(bars, tf, splits[s]).sum()) for s in SPLITS})
    return counts


def fit_stats(by_tf: dict[Timeframe, Bars], train: SplitRange, lag: int) -> dict[str, Any]:
    """Per timeframe: RMS of the log change of close over ``lag`` bars in the training split, its
    power-of-two scale, and the sufficient statistics it comes from (sum of squared changes and their
    count: what `stage1 prepare --merge` checks)."""
    rms, scale, sufficient = {}, {}, {}
    for tf, bars in by_tf.items():
        close = np.log(bars.ohlc[in_range(bars, tf, train), 3])
        h = max(1, min(lag, len(close) - 1))
        changes = close[h:] - close[:-h] if len(close) > 1 else np.zeros(0)
        value = float(np.sqrt(np.mean(changes**2))) if len(changes) else 0.0
        rms[tf.value] = value
        scale[tf.value] = power_of_two_scale(value)
        sufficient[tf.value] = {"sum_squares": float(np.sum(changes**2)), "count": len(changes)}
    return {"rms_log_change": rms, "scale": scale, "sufficient": sufficient}
