"""Simple rules that reconstruct masked bars from the same visible bars the model sees.

- ``linear_interpolation``: each feature interpolated linearly across each masked span of its own
  timeframe from the visible bars at its edges (held flat beyond the first or last visible bar);
- ``last_close``: the last visible close carried forward into every feature of the masked bars (the next
  visible close for a span at the window start);
- ``cross_timeframe_rules``: every visible bar of every timeframe, with the plain rules that tie them: a
  masked coarser bar is the aggregate (first open, max high, min low, last close) of its finer bars when
  they are all known; a masked finer bar takes its open from a known coarser bar it starts, its close from
  one it ends, is the whole coarser bar when it is its only finer bar, and lies within the coarser bar's
  high and low; what no rule gives comes from linear interpolation, clipped to the bounds the visible
  bars set. Rules chain: a bar recovered exactly counts as known for the next timeframe.

All work on a masked `Batch` and return ``{tf: (B, L, 4)}`` predictions in the feature space.
`recoverable` says which masked bars the other timeframes' visible bars determine exactly. They sit at the
model's floor, beside its masking: training draws them beside the model in TensorBoard, evaluation scores
them (with the train split's mean, `stage1_ds.evaluation.reconstruction.train_mean_predictor`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from stage1_ds.data.batch import Batch, TimeframeWindow

Predictor = Callable[[Batch], dict[str, torch.Tensor]]
OPEN, HIGH, LOW, CLOSE = range(4)
VOLUME = 4


def _visible(window: TimeframeWindow) -> np.ndarray:
    assert window.mask is not None, "baselines need a masked batch"
    return (window.valid & ~window.mask).numpy()


def _interpolate(features: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(B, L, F) features with every non-visible bar linearly interpolated from the visible ones."""
    pred = features.copy()
    positions = np.arange(features.shape[1])
    for b in range(features.shape[0]):
        known = positions[visible[b]]
        if len(known) == 0:
            pred[b] = 0.0
            continue
        for f in range(features.shape[2]):
            pred[b, :, f] = np.interp(positions, known, features[b, known, f])
    return pred


def linear_interpolation(batch: Batch) -> dict[str, torch.Tensor]:
    """Per feature, linear interpolation across masked bars from the visible ones of the same timeframe."""
    return {
        tf: torch.from_numpy(_interpolate(w.features.numpy(), _visible(w))) for tf, w in batch.windows.items()
    }


def last_close(batch: Batch) -> dict[str, torch.Tensor]:
    """The last visible close (the next visible one at the window start) in every feature of masked bars; a
    window with no visible bar gets the reference price (feature 0), the last visible close of the sample."""
    out = {}
    for tf, window in batch.windows.items():
        features = window.features.numpy()
        visible = _visible(window)
        length = features.shape[1]
        index = np.where(visible, np.arange(length), -1)
        last = np.maximum.accumulate(index, axis=1)  # last visible position at or before each bar
        first_visible = np.argmax(visible, axis=1)
        source = np.where(last >= 0, last, first_visible[:, None])
        carried = np.take_along_axis(features, source[..., None], axis=1)  # (B, L, F) the source bar
        carried[~visible.any(axis=1)] = 0.0  # nothing visible: never read a masked bar
        guess = np.repeat(carried[..., CLOSE : CLOSE + 1], features.shape[-1], axis=-1)
        if features.shape[-1] > VOLUME:
            guess[..., VOLUME] = carried[..., VOLUME]  # the last visible volume
        pred = np.where(visible[..., None], features, guess)
        out[tf] = torch.from_numpy(pred.astype(np.float32))
    return out


@dataclass
class _Knowledge:
    """What the visible bars of every timeframe say about one timeframe, in ``log(price / P_ref)``."""

    value: np.ndarray  # (B, L, 4) the bar where `known`
    known: np.ndarray  # (B, L) the whole bar is known: visible, or recovered exactly
    open: np.ndarray  # (B, L) NaN where no rule gives the open
    close: np.ndarray  # (B, L)
    high_at_least: np.ndarray  # (B, L) -inf where unbounded
    high_at_most: np.ndarray  # (B, L) +inf
    low_at_least: np.ndarray  # (B, L)
    low_at_most: np.ndarray  # (B, L)


def _knowledge(window: TimeframeWindow) -> _Knowledge:
    prices = window.features[..., :VOLUME].numpy().astype(np.float64)  # the rules are about prices
    unscaled = prices * window.scale.numpy().astype(np.float64)[:, None, None]
    visible = _visible(window)
    shape = visible.shape
    return _Knowledge(
        value=np.where(visible[..., None], unscaled, np.nan),
        known=visible.copy(),
        open=np.full(shape, np.nan),
        close=np.full(shape, np.nan),
        high_at_least=np.full(shape, -np.inf),
        high_at_most=np.full(shape, np.inf),
        low_at_least=np.full(shape, -np.inf),
        low_at_most=np.full(shape, np.inf),
    )


def _children(parent: np.ndarray, coarse_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per coarser bar (B, Lc): number of finer bars, and the positions of its first and last one."""
    b, lf = parent.shape
    rows = np.repeat(np.arange(b), lf).reshape(b, lf)
    has = parent >= 0
    count = np.zeros((b, coarse_len), dtype=np.int64)
    np.add.at(count, (rows[has], parent[has]), 1)
    first = np.full((b, coarse_len), lf, dtype=np.int64)
    last = np.full((b, coarse_len), -1, dtype=np.int64)
    positions = np.broadcast_to(np.arange(lf), (b, lf))
    np.minimum.at(first, (rows[has], parent[has]), positions[has])
    np.maximum.at(last, (rows[has], parent[has]), positions[has])
    return count, first, last


def _infer(batch: Batch) -> dict[str, _Knowledge]:
    """Apply the cross-timeframe rules: exact aggregates upwards, then opens, closes, bounds and only
    children downwards (see the module docstring)."""
    names = list(batch.windows)
    know = {tf: _knowledge(batch.windows[tf]) for tf in names}
    pairs = [(f, c) for f, c in itertools.pairwise(names) if batch.windows[f].parent_index is not None]
    for fine, coarse in pairs:  # finest first: recovered bars feed the next timeframe up
        parent = batch.windows[fine].parent_index.numpy()  # type: ignore[union-attr]
        f, c = know[fine], know[coarse]
        b, lc = c.known.shape
        count, first, last = _children(parent, lc)
        rows = np.repeat(np.arange(b), parent.shape[1]).reshape(parent.shape)
        has = parent >= 0
        known_children = np.zeros((b, lc), dtype=np.int64)
        np.add.at(known_children, (rows[has], parent[has]), f.known[has].astype(np.int64))
        high = np.full((b, lc), -np.inf)
        low = np.full((b, lc), np.inf)
        take = has & f.known
        np.maximum.at(high, (rows[take], parent[take]), f.value[..., HIGH][take])
        np.minimum.at(low, (rows[take], parent[take]), f.value[..., LOW][take])
        batch_rows = np.arange(b)[:, None]
        first_known = (count > 0) & f.known[batch_rows, np.minimum(first, parent.shape[1] - 1)]
        last_known = (count > 0) & f.known[batch_rows, np.maximum(last, 0)]
        first_open = f.value[batch_rows, np.minimum(first, parent.shape[1] - 1), OPEN]
        last_close = f.value[batch_rows, np.maximum(last, 0), CLOSE]
        whole = (count > 0) & (known_children == count) & ~c.known
        c.value[whole] = np.stack([first_open, high, low, last_close], axis=-1)[whole]
        c.known |= whole
        c.open = np.where(first_known & np.isnan(c.open), first_open, c.open)
        c.close = np.where(last_known & np.isnan(c.close), last_close, c.close)
        c.high_at_least = np.maximum(c.high_at_least, high)
        c.low_at_most = np.minimum(c.low_at_most, low)
    for fine, coarse in reversed(pairs):  # coarsest first: what a known coarser bar says of its finer ones
        parent = batch.windows[fine].parent_index.numpy()  # type: ignore[union-attr]
        f, c = know[fine], know[coarse]
        b, lf = parent.shape
        count, first, last = _children(parent, c.known.shape[1])
        batch_rows = np.arange(b)[:, None]
        p = np.maximum(parent, 0)
        from_known = (parent >= 0) & c.known[batch_rows, p]
        value = c.value[batch_rows, p]  # (B, Lf, 4) the coarser bar of each finer bar
        position = np.arange(lf)[None, :]
        only = from_known & (count[batch_rows, p] == 1) & ~f.known
        f.value[only] = value[only]
        f.known |= only
        starts = from_known & (first[batch_rows, p] == position)
        ends = from_known & (last[batch_rows, p] == position)
        f.open = np.where(starts & np.isnan(f.open), value[..., OPEN], f.open)
        f.close = np.where(ends & np.isnan(f.close), value[..., CLOSE], f.close)
        f.high_at_most = np.where(from_known, np.minimum(f.high_at_most, value[..., HIGH]), f.high_at_most)
        f.low_at_least = np.where(from_known, np.maximum(f.low_at_least, value[..., LOW]), f.low_at_least)
    return know


def cross_timeframe_rules(batch: Batch) -> dict[str, torch.Tensor]:
    """The cross-timeframe rules baseline (see the module docstring); with volume, a masked bar's volume
    is the sum of its finer bars' when they are all known, or its known coarser bar's when it is that bar's
    only finer bar, else interpolated."""
    know = _infer(batch)
    interpolated = linear_interpolation(batch)
    volumes = _volume_rules(batch, interpolated) if _has_volume(batch) else {}
    out = {}
    for tf, window in batch.windows.items():
        k = know[tf]
        scale = window.scale.numpy().astype(np.float64)[:, None]
        guess = interpolated[tf].numpy().astype(np.float64) * scale[..., None]
        o = np.where(np.isnan(k.open), guess[..., OPEN], k.open)
        c = np.where(np.isnan(k.close), guess[..., CLOSE], k.close)
        high_floor = np.maximum(k.high_at_least, np.maximum(o, c))
        high = np.minimum(np.maximum(guess[..., HIGH], high_floor), np.maximum(k.high_at_most, high_floor))
        low_ceiling = np.minimum(k.low_at_most, np.minimum(o, c))
        low = np.maximum(np.minimum(guess[..., LOW], low_ceiling), np.minimum(k.low_at_least, low_ceiling))
        rules = np.stack([o, high, low, c], axis=-1)
        unscaled = np.where(k.known[..., None], k.value, rules)
        prices = (unscaled / scale[..., None]).astype(np.float32)
        out[tf] = torch.from_numpy(
            np.concatenate([prices, volumes[tf][..., None]], axis=-1) if volumes else prices
        )
    return out


def _has_volume(batch: Batch) -> bool:
    return next(iter(batch.windows.values())).features.shape[-1] > VOLUME


def _volume_rules(batch: Batch, interpolated: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per timeframe (B, L) volume features: visible bars as they are, a masked bar whose finer bars are all
    known (visible or recovered) their sum, a masked only child of a known coarser bar that bar's volume
    (as `_infer` recovers its prices), the rest interpolated. Works in units of the reference volume."""
    names = list(batch.windows)
    known, value = {}, {}
    for tf, window in batch.windows.items():
        vscale = window.volume_scale.numpy().astype(np.float64)[:, None]  # type: ignore[union-attr]
        visible = _visible(window)
        known[tf] = visible.copy()
        value[tf] = np.where(visible, window.features[..., VOLUME].numpy() * vscale, np.nan)
    pairs = [(f, c) for f, c in itertools.pairwise(names) if batch.windows[f].parent_index is not None]
    for fine, coarse in pairs:  # finest first: the sum of known finer bars
        p = batch.windows[fine].parent_index.numpy()  # type: ignore[union-attr]
        b, lc = known[coarse].shape
        rows = np.repeat(np.arange(b), p.shape[1]).reshape(p.shape)
        has = p >= 0
        count, known_count, total = (np.zeros((b, lc)) for _ in range(3))
        np.add.at(count, (rows[has], p[has]), 1)
        np.add.at(known_count, (rows[has], p[has]), known[fine][has])
        np.add.at(total, (rows[has], p[has]), np.nan_to_num(value[fine][has]))
        whole = (count > 0) & (known_count == count) & ~known[coarse]
        value[coarse] = np.where(whole, total, value[coarse])
        known[coarse] |= whole
    for fine, coarse in reversed(pairs):  # coarsest first: an only child is its known coarser bar
        p = batch.windows[fine].parent_index.numpy()  # type: ignore[union-attr]
        count = _children(p, known[coarse].shape[1])[0]
        batch_rows = np.arange(p.shape[0])[:, None]
        q = np.maximum(p, 0)
        only = (p >= 0) & known[coarse][batch_rows, q] & (count[batch_rows, q] == 1) & ~known[fine]
        value[fine] = np.where(only, value[coarse][batch_rows, q], value[fine])
        known[fine] |= only
    out = {}
    for tf, window in batch.windows.items():
        vscale = window.volume_scale.numpy().astype(np.float64)[:, None]  # type: ignore[union-attr]
        guess = interpolated[tf][..., VOLUME].numpy().astype(np.float64)
        out[tf] = np.where(known[tf], value[tf] / vscale, guess).astype(np.float32)
    return out


def recoverable(batch: Batch) -> dict[str, np.ndarray]:
    """Per timeframe (B, L): masked bars of kept timeframes that the visible bars of the other timeframes
    determine exactly (with the rules of `cross_timeframe_rules`)."""
    know = _infer(batch)
    return {tf: know[tf].known & ~_visible(w) & w.valid.numpy() for tf, w in batch.windows.items()}
