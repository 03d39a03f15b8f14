"""Which bars the encoder does not see, per sample: masking modes ``spans``, ``time`` and ``horizon``.

Masks are a pure function of ``(seed, sample id)`` and the bar times of the sample's windows, so a resumed
run or another worker masks the same bars. They are built before the features (`WindowDataset.batch`
takes a `Masker`), because the reference price of the features is chosen among the visible bars: no
masked value can reach the encoder, not even through the reference.

- ``spans``: each timeframe on its own masks exactly ``k = round(ratio * P)`` of its ``P`` patches, in about
  ``k / mean_span_patches`` contiguous spans.
- ``time``: intervals of real time shared by every timeframe. Each timeframe draws spans of its own patches
  (as in ``spans``) but keeps only those in the part of its window older than the next finer window's
  start, so the finer windows are shaped by their own, shorter intervals; the union of every timeframe's
  intervals is masked in every timeframe (a bar is masked when its span overlaps an interval). A masked bar
  then can never be recomputed from visible bars of another timeframe: the finer bars inside it, and the
  coarser bar around it, overlap the same interval. At least one patch of each timeframe's own part stays
  visible.
- ``horizon``: every bar that overlaps the last ``horizon_minutes`` before the anchor (forecasting).

A sample whose ``time`` or ``horizon`` masks would hide a kept timeframe whole (``time``: only possible
when a coarser window spans less time than a finer one) or every timeframe (``horizon``) is masked in
``spans`` mode instead, and its mode says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from stage1_ds.config import MaskingConfig, MaskingMode
from stage1_ds.data.batch import Batch
from stage1_ds.data.corpus import Windows
from stage1_ds.data.streams import COLUMNS, STRIDE, Stream, uniform_columns, uniform_hash
from stage1_ds.timeframes import Timeframe

#: Index of each mode in `Batch.mask_mode`.
MODES: tuple[MaskingMode, ...] = tuple(MaskingMode)


def num_patches(window_bars: int, patch_len: int) -> int:
    return math.ceil(window_bars / patch_len)


def masked_patch_count(patches: int, ratio: float) -> int:
    """Patches to mask: ``round(ratio * P)``, at least 1, and at least one patch left visible when P > 1."""
    return min(max(1, round(ratio * patches)), max(patches - 1, 1))


def _smallest_sorted(keys: np.ndarray, count: int) -> np.ndarray:
    """Per row, the sorted column indices of the ``count`` smallest keys (a random subset of columns)."""
    return np.sort(np.argsort(keys, axis=1)[:, :count], axis=1)


def span_mask(
    patches: int, ratio: float, mean_span: float, seed: int, ids: np.ndarray, stream: int
) -> np.ndarray:
    """(B, P) bool patch mask with exactly `masked_patch_count` patches masked per row, in spans.

    The masked patches form ``s`` spans: the span lengths are a random composition of ``k`` into ``s``
    positive parts, the visible patches a random composition of ``P - k`` into ``s + 1`` gaps whose inner
    ones are positive. Draws from streams ``stream`` .. ``stream + 2 * COLUMNS``.
    """
    b = len(ids)
    k = masked_patch_count(patches, ratio)
    s = int(min(max(1, round(k / mean_span)), k, patches - k + 1)) if patches > 1 else 1
    cuts = _smallest_sorted(uniform_columns(seed, ids, stream, k - 1), s - 1) + 1  # (B, s-1) in 1..k-1
    bounds = np.concatenate([np.zeros((b, 1), int), cuts, np.full((b, 1), k)], axis=1)
    lengths = np.diff(bounds, axis=1)  # (B, s), each >= 1
    free = patches - k - (s - 1)  # visible patches beyond the one that separates each pair of spans
    slots = _smallest_sorted(uniform_columns(seed, ids, stream + COLUMNS, free + s), s)  # (B, s)
    gaps = (
        np.diff(np.concatenate([np.full((b, 1), -1), slots, np.full((b, 1), free + s)], axis=1), axis=1) - 1
    )
    gaps[:, 1:-1] += 1  # (B, s+1): inner gaps >= 1, outer gaps >= 0
    starts = gaps[:, :1] + np.concatenate(
        [np.zeros((b, 1), int), np.cumsum(lengths[:, :-1] + gaps[:, 1:-1], axis=1)], axis=1
    )  # (B, s)
    p = np.arange(patches)[None, None, :]
    inside = (p >= starts[:, :, None]) & (p < (starts + lengths)[:, :, None])  # (B, s, P)
    return inside.any(axis=1)


def patch_spans(start_time: np.ndarray, tf: Timeframe, patch_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, P) start and end time of each patch; the front padding of a window makes the first patch short."""
    b, length = start_time.shape
    pad = (-length) % patch_len
    first = np.concatenate([np.repeat(start_time[:, :1], pad, axis=1), start_time], axis=1)
    first = first.reshape(b, -1, patch_len)
    return first[:, :, 0], first[:, :, -1] + tf.seconds


def patches_to_bars(patch_mask: np.ndarray, length: int, patch_len: int) -> np.ndarray:
    """(B, P) patch mask to the (B, L) mask of the window's bars (front padding dropped)."""
    pad = (-length) % patch_len
    return np.repeat(patch_mask, patch_len, axis=1)[:, pad:]


class IntervalUnion:
    """The union of each row's intervals ``[start, end)`` ((B, I) each; an empty interval, ``start == end``,
    adds nothing), for asking which bars overlap it (`overlaps`).

    Rows are laid end to end on one time line, the intervals sorted by start with the running maximum of
    their ends, so one sorted search answers a whole batch: a bar overlaps the union iff the intervals that
    start before its end reach past its start.
    """

    def __init__(self, start: np.ndarray, end: np.ndarray, earliest: int, latest: int):
        """``earliest`` and ``latest`` bound every time that will be asked about (bars included)."""
        self.origin = min(earliest, int(start.min()))
        self.width = max(latest, int(end.max())) - self.origin + 1
        self.row = (np.arange(start.shape[0], dtype=np.int64) * self.width)[:, None]
        starts, ends = (start - self.origin + self.row).ravel(), (end - self.origin + self.row).ravel()
        order = np.argsort(starts, kind="stable")
        self.starts, self.reach = starts[order], np.maximum.accumulate(ends[order])

    def overlaps(self, bar_start: np.ndarray, bar_end: np.ndarray) -> np.ndarray:
        """(B, L) whether each bar ``[bar_start, bar_end)`` of a row overlaps that row's union."""
        shift = self.row - self.origin
        last = (
            np.searchsorted(self.starts, (bar_end + shift).ravel(), side="left") - 1
        )  # start before its end
        hit = (last >= 0) & (self.reach[np.maximum(last, 0)] > (bar_start + shift).ravel())
        return hit.reshape(bar_start.shape)


@dataclass(frozen=True)
class Masker:
    """Masks of a batch, for `WindowDataset.batch`: a pure function of (seed, ids, bar times)."""

    config: MaskingConfig
    patch_len: int
    seed: int

    def modes(self, ids: np.ndarray) -> np.ndarray:
        """(B,) index into `MODES` of each sample's mode, drawn by the configured weights."""
        weights = np.array(list(self.config.weights().values()))
        edges = np.cumsum(weights)[:-1]
        return np.searchsorted(edges, uniform_hash(self.seed, ids, Stream.MODE), side="right")

    def __call__(
        self,
        ids: np.ndarray,
        start_time: dict[Timeframe, np.ndarray],
        valid: dict[Timeframe, np.ndarray],
        anchor_time: np.ndarray,
    ) -> tuple[dict[Timeframe, np.ndarray], np.ndarray]:
        """Per timeframe the (B, L) bool mask (True: hidden and reconstructed), and each sample's mode.

        Args:
            start_time: per timeframe, finest first, (B, L) bar starts of the windows.
            valid: per timeframe (B, L): the bar exists and the sample keeps the timeframe.
            anchor_time: (B,) end of each sample's anchor bar.
        """
        modes = self.modes(ids)
        masks = {tf: np.zeros(t.shape, dtype=bool) for tf, t in start_time.items()}
        for index, mode in enumerate(MODES):
            rows = np.flatnonzero(modes == index)
            if len(rows) == 0 or mode == MaskingMode.SPANS:
                continue
            sub = {tf: t[rows] for tf, t in start_time.items()}
            if mode == MaskingMode.TIME:
                layout = self._time(ids[rows], sub)
            else:
                layout = self._horizon(sub, anchor_time[rows])
            visible = {tf: valid[tf][rows] & ~m for tf, m in layout.items()}
            if mode == MaskingMode.TIME:  # no kept timeframe masked whole
                fails = np.any([valid[tf][rows].any(1) & ~v.any(1) for tf, v in visible.items()], axis=0)
            else:  # at least one visible bar to take the reference price from
                fails = ~np.any([v.any(1) for v in visible.values()], axis=0)
            for tf in masks:
                masks[tf][rows] = layout[tf]
            modes[rows[fails]] = MODES.index(MaskingMode.SPANS)
        spans = np.flatnonzero(modes == MODES.index(MaskingMode.SPANS))
        if len(spans):
            layout = self._spans(ids[spans], {tf: t[spans] for tf, t in start_time.items()})
            for tf in masks:
                masks[tf][spans] = layout[tf]
        return masks, modes

    def _spans(self, ids: np.ndarray, start_time: dict[Timeframe, np.ndarray]) -> dict[Timeframe, np.ndarray]:
        config, out = self.config, {}
        for i, (tf, starts) in enumerate(start_time.items()):
            length = starts.shape[1]
            patches = span_mask(
                num_patches(length, self.patch_len),
                config.ratio,
                config.mean_span_patches,
                self.seed,
                ids,
                Stream.SPANS + i * STRIDE,
            )
            out[tf] = patches_to_bars(patches, length, self.patch_len)
        return out

    def _time(self, ids: np.ndarray, start_time: dict[Timeframe, np.ndarray]) -> dict[Timeframe, np.ndarray]:
        config = self.config
        interval_starts, interval_ends = [], []
        finer_start: np.ndarray | None = None  # (B,) start of the next finer window
        for i, (tf, starts) in enumerate(start_time.items()):
            begin, end = patch_spans(starts, tf, self.patch_len)  # (B, P)
            own = span_mask(
                begin.shape[1],
                config.ratio,
                config.mean_span_patches,
                self.seed,
                ids,
                Stream.TIME + i * STRIDE,
            )
            eligible = np.ones_like(own) if finer_start is None else end <= finer_start[:, None]
            own &= eligible
            whole = eligible.any(1) & ~(eligible & ~own).any(1)  # every eligible patch drawn: free the newest
            newest = eligible.shape[1] - 1 - np.argmax(eligible[:, ::-1], axis=1)
            own[np.flatnonzero(whole), newest[whole]] = False
            interval_starts.append(np.where(own, begin, 0))
            interval_ends.append(np.where(own, end, 0))  # not drawn: an empty interval
            finer_start = starts[:, 0]
        earliest = min(int(s[:, 0].min()) for s in start_time.values())
        latest = max(int(s[:, -1].max()) + tf.seconds for tf, s in start_time.items())
        union = IntervalUnion(
            np.concatenate(interval_starts, axis=1), np.concatenate(interval_ends, axis=1), earliest, latest
        )
        return {tf: union.overlaps(s, s + tf.seconds) for tf, s in start_time.items()}

    def _horizon(
        self, start_time: dict[Timeframe, np.ndarray], anchor_time: np.ndarray
    ) -> dict[Timeframe, np.ndarray]:
        cutoff = anchor_time - 60 * self.config.horizon_minutes
        return {tf: s + tf.seconds > cutoff[:, None] for tf, s in start_time.items()}


class MaskedWindows(Dataset):
    """A `WindowDataset` whose batches come masked (use it with `build_loader` like the dataset)."""

    def __init__(self, windows: Windows, config: MaskingConfig, patch_len: int, seed: int):
        self.windows = windows
        self.masker = Masker(config, patch_len, seed)

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, ids: np.ndarray) -> Batch:
        return self.windows.batch(ids, self.masker)

    def __getitems__(self, ids: list[int]) -> Batch:
        return self.batch(np.asarray(ids, dtype=np.int64))

    def __getitem__(self, sample_id: int) -> Batch:
        return self.batch(np.asarray([sample_id], dtype=np.int64))
