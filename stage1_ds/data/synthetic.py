"""A deterministic synthetic 1-minute market: the embedded default data set.

Realistic enough to train on: volatility clusters (an hourly AR(1) process on log-volatility), intraday
seasonality (Asian lull, London and New York sessions), fat tails (Student-t innovations with 4 degrees of
freedom), a traded volume that rises with volatility (gamma-distributed around it), weekend closures (Friday 17:00 to Sunday 17:00, as in FX files) with an opening jump, and about
1% of trading minutes missing.
"""

from __future__ import annotations

import numpy as np

from stage1_ds.data.timeframes import Bars, volume_unit, volume_units

SYNTHETIC_INSTRUMENT = "SYNTH"
# Monday 2024-01-01 00:00 of the data clock; the series starts on the Sunday open before it.
_EPOCH_START = np.datetime64("2023-12-31T17:00", "m")
_BASE_VOL_PER_MINUTE = 1.2e-4
_MISSING_FRACTION = 0.01


def generate_synthetic_m1(days: int, seed: int, instrument: int | None = None) -> Bars:
    """Return ``days`` calendar days of synthetic 1-minute bars (same arguments, same bars).

    ``instrument`` k of several draws from its own stream of ``seed``, with its own volatility level (0.5x
    to 2x) and price level (0.5 to 200); None is the single default instrument.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    rng = np.random.default_rng(seed if instrument is None else [seed, instrument])
    volatility, price = (
        (1.0, 1.1) if instrument is None else (2.0 ** rng.uniform(-1, 1), 10.0 ** rng.uniform(-0.3, 2.3))
    )
    minutes = np.arange(days * 1440)
    stamps = _EPOCH_START + minutes.astype("timedelta64[m]")
    weekday = (stamps.astype("datetime64[D]").view(np.int64) + 3) % 7  # Monday = 0
    hour = (stamps.astype("datetime64[h]").view(np.int64)) % 24
    closed = ((weekday == 4) & (hour >= 17)) | (weekday == 5) | ((weekday == 6) & (hour < 17))
    trading = ~closed & (rng.random(len(minutes)) > _MISSING_FRACTION)

    # Volatility clustering: log-volatility follows an AR(1) per hour, held over the hour's minutes.
    hours = days * 24
    shocks = rng.normal(0.0, 0.25, hours)
    log_vol = np.empty(hours)
    level = 0.0
    for i in range(hours):
        level = 0.97 * level + shocks[i]
        log_vol[i] = level
    hourly = np.exp(log_vol - log_vol.var() / 2)[minutes // 60]
    session = 0.45 + 0.9 * np.exp(-(((hour - 9) / 2.5) ** 2)) + 1.1 * np.exp(-(((hour - 14) / 2.0) ** 2))
    sigma = _BASE_VOL_PER_MINUTE * volatility * hourly * session

    t = rng.standard_t(4, len(minutes)) / np.sqrt(2.0)  # unit variance for 4 degrees of freedom
    returns = sigma * t
    week_open = trading & np.r_[True, closed[:-1]]
    returns[week_open] += rng.normal(0.0, 8 * _BASE_VOL_PER_MINUTE * volatility, int(week_open.sum()))
    log_close = np.log(price) + np.cumsum(returns)
    log_open = np.r_[np.log(price), log_close[:-1]]
    wick = np.abs(rng.normal(0.0, 0.5, (2, len(minutes)))) * sigma
    log_high = np.maximum(log_open, log_close) + wick[0]
    log_low = np.minimum(log_open, log_close) - wick[1]

    ohlc = np.round(np.exp(np.stack([log_open, log_high, log_low, log_close], axis=1)), 6)
    volume = np.round(rng.gamma(2.0, 50.0 * sigma / _BASE_VOL_PER_MINUTE))
    keep = np.flatnonzero(trading)
    start = stamps[keep].astype("datetime64[s]").view(np.int64)
    return Bars(
        start=start,
        ohlc=ohlc[keep],
        volume=volume[keep],
        count=np.ones(len(keep), dtype=np.int32),
        units=volume_units(volume[keep], volume_unit(volume[keep], start)),
    )
