"""Realised variance in trading time, the forecasting targets of `stage1 probe`, and the features of the
simple rules a volatility forecaster builds first from the same past bars.

Realised variance (RV) of a run of 1-minute bars is the sum of their squared log returns. A bar's return is
close-to-close from the bar before it when that bar started at most `MAX_GAP_MINUTES` earlier, else its own
open-to-close (and the first bar of a run counts open-to-close): a jump across a weekend, a holiday or a
daily break is not a minute of trading, and intraday RV leaves it out.

Realised range: a bar's high-low range holds more about its variance than its close-to-close return
(Parkinson 1980: ``(log H - log L)^2 / (4 log 2)`` estimates the bar's variance about five times more
efficiently for a continuous path); HAR on ranges is Martens and van Dijk (2007). Bipower variation
(``pi / 2`` times the sum of products of consecutive absolute returns, Barndorff-Nielsen and Shephard 2004)
is realised variance without its jumps, the jump-robust part of HAR-CJ.

Targets come from the bars that start at or after the anchor time ``t``; every feature from the bars that
start before it (the anchor bar is the last). Trading time counts bars, not minutes: the last 60 bars are
the last hour of trading whether or not a weekend lies in between. Calendar windows (the last 60 minutes)
are kept as the first version of the probe built them (`calendar_log_variance`); after a weekend or a
holiday they hold no bar, and the floor of an empty window enters the features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from stage1_ds.config import CONTEXT_STALE_MINUTES, TARGET_COVERAGE
from stage1_ds.data.store import SplitRange
from stage1_ds.errors import DataError

VARIANCE_TARGETS = {"rv_60m": 60, "rv_240m": 240}
SIGN_TARGET, SIGN_MINUTES = "ret_sign_60m", 60
TARGETS = (*VARIANCE_TARGETS, SIGN_TARGET)
#: Returns across a longer gap between two bars are jumps, not trading (see the module docstring).
MAX_GAP_MINUTES = 30
#: Calendar look-backs of the first version of the probe's HAR, in minutes: an hour, a day, a week.
CALENDAR_MINUTES = (60, 1440, 10080)
#: Trading-time look-backs of HAR, in bars, one set chosen on val per target: an hour, a day, and a week
#: of FX trading (5 days) or of a market that never closes (7 days); or finer steps up to the week.
TRADING_WINDOWS = {
    "60/1440/7200": (60, 1440, 7200),
    "60/1440/10080": (60, 1440, 10080),
    "15/60/240/1440/7200": (15, 60, 240, 1440, 7200),
    "5/15/60/240/1440/7200": (5, 15, 60, 240, 1440, 7200),
}
LONGEST_WINDOW_BARS = max(max(w) for w in TRADING_WINDOWS.values())
HOURS_PER_WEEK = 168
_MONDAY = 3 * 24  # the Unix epoch began on a Thursday: hours from a Monday 00:00 UTC to it
_FLOOR = 1e-12  # the calendar features' log of an empty window (kept as it was, for comparison)
PARKINSON = 1.0 / (4.0 * np.log(2.0))
#: Another market without a bar that starts in this many minutes before ``t`` is closed at ``t`` (a weekend,
#: a holiday, before its data begins): absent from the market rule for that anchor, never a stale value (the
#: context windows' default, ``data.context_stale_minutes``, is the same).
MARKET_STALE_MINUTES = CONTEXT_STALE_MINUTES
#: The market rule's look-backs, in bars of the other market: its last hour and its last day of trading.
MARKET_WINDOWS = (60, 1440)


@dataclass
class MinuteBars:
    """One instrument's 1-minute bars: start times (seconds), log opens and log closes, optionally log highs
    and lows (without them a bar's range is its open-to-close move), and optionally a weight per bar that
    multiplies its squared return (a deseasonalising factor for HARP).

    ``cumulative[k]`` is the weighted sum of the squared returns of bars 1..k (see the module docstring);
    `ranged` and `bipower` are the same bars with each bar's Parkinson variance or bipower term in place
    of its squared return, so that `variance` sums them.
    """

    start: np.ndarray
    log_open: np.ndarray
    log_close: np.ndarray
    weight: np.ndarray | None = None
    log_high: np.ndarray | None = None
    log_low: np.ndarray | None = None
    #: What a bar contributes in place of its squared return (`ranged`, `bipower`); None: the squared return.
    term: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.joined = np.diff(self.start, prepend=self.start[:1]) <= 60 * MAX_GAP_MINUTES
        self.joined[:1] = False
        previous = np.r_[self.log_open[:1], self.log_close[:-1]]
        self.returns = np.where(self.joined, self.log_close - previous, self.log_close - self.log_open)
        squared = self.returns**2 if self.term is None else self.term
        if self.weight is not None:
            squared = squared * self.weight
        self.cumulative = np.cumsum(squared)

    def weighted(self, weight: np.ndarray) -> MinuteBars:
        """The same bars with each squared return multiplied by ``weight`` (one per bar)."""
        return replace(self, weight=weight)

    def ranged(self) -> MinuteBars:
        """The same bars with each squared return replaced by the bar's Parkinson variance
        ``(log H - log L)^2 / (4 log 2)`` (open-to-close range where highs and lows are not given): `variance`
        of these bars is realised range."""
        high = np.maximum(self.log_open, self.log_close) if self.log_high is None else self.log_high
        low = np.minimum(self.log_open, self.log_close) if self.log_low is None else self.log_low
        return replace(self, term=PARKINSON * (high - low) ** 2)

    def bipower(self) -> MinuteBars:
        """The same bars with each squared return replaced by ``pi / 2 |r_k| |r_k-1|`` (0 for the first bar of
        a run after a gap): `variance` of these bars is bipower variation, blind to one-bar jumps."""
        previous = np.r_[0.0, np.abs(self.returns[:-1])] * self.joined
        return replace(self, term=np.pi / 2 * np.abs(self.returns) * previous)

    def first_at_or_after(self, time: np.ndarray) -> np.ndarray:
        """Index of the first bar that starts at or after each time."""
        return np.searchsorted(self.start, time)

    def variance(self, first: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Realised variance of the bars ``first .. end - 1``: the first bar's open-to-close return, then
        each later bar's return, squared (and weighted) and summed; 0 where there is no bar."""
        n = len(self.start)
        head, tail = np.clip(first, 0, n - 1), np.clip(end - 1, 0, n - 1)
        opening = (self.log_close[head] - self.log_open[head]) ** 2 if self.term is None else self.term[head]
        if self.weight is not None:
            opening = opening * self.weight[head]
        inner = self.cumulative[np.maximum(tail, head)] - self.cumulative[head]
        return np.where(end > first, opening + inner, 0.0)


def future_targets(bars: MinuteBars, anchor_time: np.ndarray) -> dict[str, np.ndarray]:
    """Per anchor, from the bars that start at or after ``t`` only (the price at ``t`` is the first such
    bar's open): ``rv_60m``, ``rv_240m``, the log realised variance (NaN under `TARGET_COVERAGE` or when every bar
    is flat: a log of 0 is no target), and ``ret_sign_60m`` (+1, -1, or 0 with no move or no bar)."""
    first = bars.first_at_or_after(anchor_time)
    out: dict[str, np.ndarray] = {}
    for name, minutes in VARIANCE_TARGETS.items():
        end = bars.first_at_or_after(anchor_time + 60 * minutes)
        variance = bars.variance(first, end)
        known = (end - first >= TARGET_COVERAGE * minutes) & (variance > 0)
        out[name] = np.where(known, np.log(np.where(known, variance, 1.0)), np.nan)
    end = bars.first_at_or_after(anchor_time + 60 * SIGN_MINUTES)
    inside = np.minimum(first, len(bars.start) - 1)
    move = bars.log_close[np.maximum(end - 1, inside)] - bars.log_open[inside]
    out[SIGN_TARGET] = np.where(end > first, np.sign(move), 0.0)
    return out


def trading_log_variance(bars: MinuteBars, anchor_time: np.ndarray, windows: tuple[int, ...]) -> np.ndarray:
    """(N, len(windows)): log realised variance per bar over the last ``n`` bars before ``t`` for each ``n``
    of ``windows`` (shortest first). A window whose bars are all flat (RV 0) takes the next longer window's
    value; where even the longest is 0 the row is NaN (the caller drops and counts it). No floor value ever
    enters.

    Raises:
        ValueError: an anchor has fewer than ``max(windows)`` bars before it (the caller checks history).
    """
    end = bars.first_at_or_after(anchor_time)
    if len(end) and int(end.min()) < max(windows):
        raise ValueError(f"an anchor has fewer than {max(windows)} bars before it")
    per_bar = np.stack([bars.variance(end - n, end) / n for n in windows], axis=1)
    for k in reversed(range(len(windows) - 1)):
        per_bar[:, k] = np.where(per_bar[:, k] > 0, per_bar[:, k], per_bar[:, k + 1])
    flat = ~(per_bar[:, -1] > 0)
    per_bar[flat] = np.nan
    return np.log(per_bar)


def market_log_variance(
    bars: MinuteBars, anchor_time: np.ndarray, stale_minutes: int = MARKET_STALE_MINUTES
) -> np.ndarray:
    """(N, len(`MARKET_WINDOWS`)): another market's log realised variance per bar over its last 60 and 1,440
    bars before ``t`` (trading time, `trading_log_variance`), from its bars that start before ``t`` only. A
    row is NaN where that market is absent at ``t``: no bar of it starts in the last ``stale_minutes`` before
    ``t``, fewer than ``max(MARKET_WINDOWS)`` bars of it come before ``t``, or all of them are flat."""
    end = bars.first_at_or_after(anchor_time)
    recent = bars.first_at_or_after(anchor_time - 60 * stale_minutes)
    present = (end > recent) & (end >= max(MARKET_WINDOWS))
    out = np.full((len(anchor_time), len(MARKET_WINDOWS)), np.nan)
    if present.any():
        out[present] = trading_log_variance(bars, anchor_time[present], MARKET_WINDOWS)
    return out


def trading_last_return(bars: MinuteBars, anchor_time: np.ndarray, count: int = SIGN_MINUTES) -> np.ndarray:
    """(N,) log return of the last ``count`` bars before ``t``: the open of the first to the anchor's close."""
    end = bars.first_at_or_after(anchor_time)
    return bars.log_close[end - 1] - bars.log_open[np.maximum(end - count, 0)]


def calendar_log_variance(bars: MinuteBars, anchor_time: np.ndarray) -> np.ndarray:
    """(N, 4), the first version's HAR: log realised variance over the last 60, 1,440 and 10,080 minutes
    (`CALENDAR_MINUTES`) with an empty window at ``log(1e-12)``, and the log return over the last 60 minutes
    (0 with no bar in them)."""
    end = bars.first_at_or_after(anchor_time)  # the bars before t: ..., end - 1 (the anchor bar)
    columns = []
    for minutes in CALENDAR_MINUTES:
        first = bars.first_at_or_after(anchor_time - 60 * minutes)
        columns.append(np.log(np.maximum(bars.variance(first, end), _FLOOR)))
    first = np.minimum(bars.first_at_or_after(anchor_time - 60 * SIGN_MINUTES), end - 1)
    columns.append(bars.log_close[end - 1] - bars.log_open[first])
    return np.stack(columns, axis=1)


def hour_of_week(time: np.ndarray) -> np.ndarray:
    """0 for Monday 00:00-00:59 UTC ... 167 for Sunday 23:00-23:59."""
    return (np.asarray(time) // 3600 + _MONDAY) % HOURS_PER_WEEK


def clock_dummies(anchor_time: np.ndarray) -> np.ndarray:
    """(N, 31): one-hot hour of the day (24) and day of the week (7) of ``t`` on the UTC clock."""
    slot = hour_of_week(anchor_time)
    return np.concatenate([np.eye(24)[slot % 24], np.eye(7)[slot // 24]], axis=1)


def _train_starts(bars: MinuteBars, train: SplitRange) -> np.ndarray:
    return (bars.start >= train.anchor_start) & (bars.start < train.end)


def seasonal_profile(bars: MinuteBars, train: SplitRange) -> np.ndarray:
    """(168, 2): per hour of the week (UTC), the mean log realised variance over the next 60 and 240 minutes
    (`VARIANCE_TARGETS`) of the train split's bars that start in that hour and whose horizon stays in the
    split; an hour without any takes the mean over all hours. Reads the train split only."""
    profile = np.empty((HOURS_PER_WEEK, len(VARIANCE_TARGETS)))
    start = bars.start[_train_starts(bars, train)]
    for column, (name, minutes) in enumerate(VARIANCE_TARGETS.items()):
        time = start[start + 60 * minutes <= train.end]
        value = future_targets(bars, time)[name]
        known = np.isfinite(value)
        if not known.any():
            raise DataError(f"probe: no {minutes}-minute horizon fits in the train split")
        slot = hour_of_week(time[known])
        sums = np.bincount(slot, value[known], HOURS_PER_WEEK)
        counts = np.bincount(slot, None, HOURS_PER_WEEK)
        profile[:, column] = np.where(counts > 0, sums / np.maximum(counts, 1), value[known].mean())
    return profile


def periodicity(bars: MinuteBars, train: SplitRange) -> np.ndarray:
    """(168,): the intraday and weekly periodicity of variance, HARP's deseasonalising factor: per hour of
    the week (UTC), the log of the train split's mean squared 1-minute return of the bars that start in it,
    less the log of the mean over all its bars; 0 for an hour without train bars. Reads train only."""
    inside = _train_starts(bars, train)
    squared, slot = bars.returns[inside] ** 2, hour_of_week(bars.start[inside])
    if not squared.any():
        raise DataError("probe: the train split has no price move to fit the periodicity on")
    sums = np.bincount(slot, squared, HOURS_PER_WEEK)
    counts = np.bincount(slot, None, HOURS_PER_WEEK)
    moved = sums > 0
    level = np.zeros(HOURS_PER_WEEK)
    level[moved] = np.log(sums[moved] / counts[moved]) - np.log(squared.mean())
    return level


def deseasonalised(bars: MinuteBars, factor: np.ndarray) -> MinuteBars:
    """The bars with each squared return divided by its hour of the week's periodicity (`periodicity`)."""
    return bars.weighted(np.exp(-factor[hour_of_week(bars.start)]))


def seasonal_log_level(factor: np.ndarray, anchor_time: np.ndarray, minutes: int) -> np.ndarray:
    """(N,): the log of the mean periodicity over the ``minutes`` minutes after ``t``: what HARP multiplies
    back onto its deseasonalised forecast (the calendar of the horizon is known at ``t``)."""
    slots = hour_of_week(anchor_time[:, None] + 60 * np.arange(minutes)[None, :])  # (N, minutes)
    return np.log(np.exp(factor)[slots].mean(axis=1))
