"""The scale-free feature space shared by every timeframe of a sample.

``feature = log(price / P_ref) / scale_tf`` for open, high, low and close, where ``P_ref`` is the sample's
reference price (the close of its last visible bar, `stage1_ds.data.windows`) and ``scale_tf`` comes from
the training split's statistics. Scales are
powers of two, so dividing and multiplying by them is exact in floating point: undoing the scale gives
back exactly ``float32(log(price / P_ref))`` for every timeframe, and the first/max/min/last aggregation
of finer bars matches a coarser bar bit for bit (the cross-timeframe loss is exactly zero on true bars).

With ``data.channels: [ohlc, volume]`` a fifth feature is the bar's traded volume, ``units / (V_ref *
vscale_tf)``: ``units`` the bar's volume in whole units of the instrument (`stage1_ds.data.timeframes`),
``V_ref`` a power of two near the mean volume per minute of the visible bars the price reference comes
from, ``vscale_tf`` the power of two nearest the timeframe's minutes. Both are powers of two, so the volume
of a coarser bar is exactly the sum of its finer bars' in the unscaled space ``units / V_ref``.
"""

from __future__ import annotations

import numpy as np

#: Open, high, low, close.
NUM_FEATURES = 4
FEATURE_NAMES = ("open", "high", "low", "close")
#: Index of the volume feature when bars carry volume.
VOLUME = 4


def num_features(volume: bool) -> int:
    """Features per bar: open, high, low, close (and volume)."""
    return NUM_FEATURES + int(volume)


def volume_scale(minutes: int) -> float:
    """The power of two nearest (in log) to a timeframe's minutes: the volume feature's scale."""
    return float(2.0 ** np.round(np.log2(minutes)))


def volume_reference(units_per_minute: np.ndarray) -> np.ndarray:
    """(B,) the power of two nearest each sample's mean visible volume per minute (1 where it is 0)."""
    safe = np.where(units_per_minute > 0, units_per_minute, 1.0)
    return 2.0 ** np.round(np.log2(safe))


def to_features(log_ohlc: np.ndarray, log_reference: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Log prices to features.

    Args:
        log_ohlc: (B, L, 4) natural log of prices (the prepared ``log_ohlc`` arrays).
        log_reference: (B,) log of the reference price ``P_ref`` of each sample.
        scale: (B,) the timeframe's scale for each sample's instrument (a power of two).

    Returns:
        (B, L, 4) float32 features. Every step is monotonic in the price, so the first/max/min/last of
        finer bars maps exactly onto the coarser bar's features.
    """
    relative = log_ohlc - log_reference[:, None, None]
    relative *= (1.0 / scale.astype(np.float64))[:, None, None]  # exact: scales are powers of two
    return relative.astype(np.float32)


def window_features(
    log_ohlc: np.ndarray,
    log_reference: np.ndarray,
    scale: np.ndarray,
    minutes: int,
    units: np.ndarray | None = None,
    volume_ref: np.ndarray | None = None,
) -> np.ndarray:
    """(B, L, F) features of windows of one timeframe: the prices as `to_features`, and with ``units`` (B, L)
    the volume in units of each sample's ``volume_ref`` (B,) per minute times `volume_scale` of the
    timeframe's ``minutes``: what every window a model reads is made of (prepared folders and raw bars)."""
    features = to_features(log_ohlc, log_reference, scale)  # (B, L, 4)
    if units is None or volume_ref is None:
        return features
    volume = units / (volume_ref[:, None] * volume_scale(minutes))
    return np.concatenate([features, volume[..., None].astype(np.float32)], axis=2)  # (B, L, 5)


def to_prices(features: np.ndarray, reference_price: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Invert `to_features`: (B, L, 4) features back to float64 prices."""
    logs = features.astype(np.float64) * scale.astype(np.float64)[:, None, None]
    return np.exp(logs) * reference_price[:, None, None]


def power_of_two_scale(rms: float) -> float:
    """The power of two nearest (in log) to a positive RMS; 1.0 for a degenerate series."""
    if not np.isfinite(rms) or rms <= 0:
        return 1.0
    return float(2.0 ** np.round(np.log2(rms)))
