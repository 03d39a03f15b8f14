"""Time-aligned multi-timeframe windows, served in batches.

A sample is anchored at the end ``t`` of one 1-minute bar. For every timeframe its window is the last
``L_tf`` bars whose bucket ends at or before ``t`` (the 1-minute window ends with the anchor bar), all of
them inside the split's history range. Windows never mix instruments or splits. With ``data.context`` a
sample also carries other instruments' windows as of ``t`` (`stage1_ds.data.context`), each of them
inside that instrument's own split of the same name.

Samples are addressed by *sample ids*: ``id = epoch * num_anchors + anchor``. Everything random about a
sample (which timeframes it drops, its masks) is a hash of ``(seed, id)`` (`stage1_ds.data.streams`), so a
batch is a pure function of its ids: the same on any worker, after any restart, on any rank.

Features are ``log(price / P_ref) / scale_tf`` (`stage1_ds.data.features`) with one reference price per
sample, the close of the last VISIBLE bar of its finest timeframe that has one (the anchor bar when
nothing is masked): masks are built first, so no masked value reaches the model through the reference.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from stage1_ds.config import SPLITS, TARGET_COVERAGE, DataConfig
from stage1_ds.data.batch import Batch, TimeframeWindow
from stage1_ds.data.context import MarketContext
from stage1_ds.data.features import volume_reference, volume_scale, window_features
from stage1_ds.data.store import PreparedData, load_prepared, scale_of
from stage1_ds.data.streams import Stream, uniform_hash
from stage1_ds.data.timeframes import bucket_start
from stage1_ds.errors import DataError
from stage1_ds.timeframes import BASE, TIMEFRAMES, Timeframe, sort_timeframes

#: Added to the RMS range (feature units) before the log: finite on flat bars, as the range loss's floor.
FUTURE_FLOOR = 0.05

log = logging.getLogger(__name__)


class BarMasker(Protocol):
    """What `WindowDataset.batch` asks for masks (`stage1_ds.model.masking.Masker`)."""

    def __call__(
        self,
        ids: np.ndarray,
        start_time: dict[Timeframe, np.ndarray],
        valid: dict[Timeframe, np.ndarray],
        anchor_time: np.ndarray,
    ) -> tuple[dict[Timeframe, np.ndarray], np.ndarray]: ...


_HEAP_TUNED_IN: int | None = None  # the process whose allocator `keep_batch_memory` has set up


def keep_batch_memory() -> None:
    """Keep the memory of one batch's arrays for the next (glibc's allocator; elsewhere nothing changes).

    A batch allocates and frees several MB of arrays. With glibc's defaults in a fresh process, each batch's
    freed memory goes back to the system at the top of the heap and is faulted in again by the next batch
    (about 2,000 page faults per batch of 256 windows): serving ran at 0.6x of its speed, measured in
    docs/benchmarks.md. Raising the thresholds at which glibc maps large blocks apart and trims the heap (to
    64 and 256 MB) keeps the pages; a serving process holds at most that much freed memory in reserve.
    """
    global _HEAP_TUNED_IN
    if os.getpid() == _HEAP_TUNED_IN:
        return
    _HEAP_TUNED_IN = os.getpid()
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return
    mallopt = ctypes.CDLL(name).mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 * 2**20)
    mallopt(m_trim_threshold, 256 * 2**20)


class WindowDataset(Dataset):
    """Aligned windows of one split of a prepared folder.

    ``len(dataset)`` is the number of anchors. Fetch whole batches with `batch` (or ``__getitems__``, which a
    `DataLoader` with a batch sampler calls); indices are sample ids (see the module docstring).

    Raises:
        DataError: the split has no anchor with full history for every configured window length.
    """

    def __init__(
        self,
        data: PreparedData | Path | str,
        split: str,
        config: DataConfig,
        seed: int = 0,
        stats: dict[str, Any] | None = None,
    ):
        """``stats``: feature statistics to scale with instead of the folder's own (a model's, see
        `stage1_ds.data.store.model_stats`)."""
        if split not in SPLITS:
            raise DataError(f"split {split!r}: expected one of {list(SPLITS)}")
        self.data = data if isinstance(data, PreparedData) else load_prepared(data)
        self.split = split
        self.seed = seed
        self.timeframes: list[Timeframe] = sort_timeframes(config.timeframes)
        self.window_bars = {tf: config.bars(tf) for tf in self.timeframes}
        self.keep_probability = {tf: config.keep(tf) for tf in self.timeframes}
        self.instruments = self.data.instruments
        self._bars = self.data.bars
        # Plain ndarray views of the memory maps: the same pages, without np.memmap's per-index overhead.
        self._log_ohlc = {tf: np.asarray(self._bars[tf].log_ohlc) for tf in self.timeframes}
        self._start = {tf: np.asarray(self._bars[tf].start) for tf in self.timeframes}
        self.volume = config.volume
        if self.volume:
            without = [n for n in self.instruments if not self.data.manifest["instruments"][n]["has_volume"]]
            if without:
                raise DataError(
                    f"{self.data.root}: instrument(s) {without} have no traded volume (all zeros in their source "
                    "files, as in HistData's FX files); data.channels [ohlc, volume] needs real volume: use "
                    "data.channels=[ohlc] for them"
                )
        self._units = {tf: np.asarray(self._bars[tf].units) for tf in self.timeframes} if self.volume else {}
        stats = stats or self.data.stats
        self._scale = {
            tf: np.array([scale_of(stats, name, tf) for name in self.instruments], dtype=np.float32)
            for tf in self.timeframes
        }
        # Nothing is held per anchor or per bar: the anchors of each instrument are one run of its 1-minute
        # rows, and the rows of every window come from the folder's memory-mapped serving index.
        self._index = {key: np.asarray(array) for key, array in self.data.index.items()}
        self._offset = {
            tf: np.array([self.data.rows(name, tf)[0] for name in self.instruments], dtype=np.int64)
            for tf in TIMEFRAMES
        }
        self.future_minutes = list(config.future_minutes)
        self._m1_end = np.array([self.data.rows(name, BASE)[1] for name in self.instruments], dtype=np.int64)
        self._split_end = np.array([self.data.split(name, split).end for name in self.instruments], np.int64)
        self._index_anchors()
        # The other instruments at each sample's anchor time (`data.context`): this folder's, or the corpus's
        # when a `stage1_ds.data.corpus.CorpusWindows` serves several folders (it sets one for all).
        self.context: MarketContext | None = MarketContext([self], config) if config.context else None

    def __len__(self) -> int:
        return int(self._anchors_before[-1])

    def _index_anchors(self) -> None:
        """Per instrument, the run of its 1-minute rows that are anchors: their end in the split, and every
        timeframe's window of full length inside the split's history (both conditions hold from some row
        on, since the last complete bar of a timeframe never moves back). Also each instrument's row from
        which its windows are full and the row its split's bars end before (`context_rows` reads both)."""
        first, count, full, high_rows = [], [], [], []
        for name in self.instruments:
            region = self.data.split(name, self.split)
            begin, end = self.data.rows(name, BASE)
            m1_start = self._start[BASE][begin:end]
            low = int(np.searchsorted(m1_start, region.anchor_start - BASE.seconds, side="right"))
            high = int(np.searchsorted(m1_start, region.end - BASE.seconds, side="right"))
            row = 0  # the first row whose windows are all full inside the split's history
            for tf in self.timeframes:
                tf_begin, tf_end = self.data.rows(name, tf)
                oldest = int(np.searchsorted(self._start[tf][tf_begin:tf_end], region.history_start))
                needed = oldest + self.window_bars[tf] - 1  # the newest bar of the first full window
                if tf == BASE:
                    row = max(row, needed)
                else:
                    last = self._index[f"{BASE.value}_last_{tf.value}"][begin:end]
                    row = max(row, int(np.searchsorted(last, needed)))
            full.append(row)
            high_rows.append(high)
            first.append(max(low, row))
            count.append(max(0, high - max(low, row)))
        self._full_from = np.array(full, dtype=np.int64)  # local rows: windows full from here
        self._split_high = np.array(high_rows, dtype=np.int64)  # local rows: the split's bars end before here
        self._first_anchor = np.array(first, dtype=np.int64)  # local 1-minute row of each instrument's first
        self._anchors_before = np.r_[0, np.cumsum(count)].astype(np.int64)
        if all(self.data.split(name, self.split).empty for name in self.instruments):
            raise DataError(
                f"{self.data.root}: the {self.split} split is empty (prepared with --split "
                f"{' '.join(f'{f:g}' for f in self.data.manifest['split_fractions'])}); prepare the data with a "
                f"share for {self.split}"
            )
        if len(self) == 0:
            longest, prepared = max(self.window_bars.values()), int(self.data.manifest["window_bars"])
            fix = (
                # A trained model's windows cannot be shortened: the folder's lead-ins must be lengthened.
                f"lower data.window_bars to {prepared} (a config to train), or prepare the folder again with "
                f"--window-bars {longest} (a trained model's windows cannot change)"
                if longest > prepared
                else "lower data.window_bars or prepare more data"
            )
            raise DataError(
                f"{self.data.root}: the {self.split} split has no anchor with full windows of all timeframes "
                f"(windows of up to {longest} bars; the folder was prepared for {prepared}, its splits' "
                f"history before their first anchor sized for those): {fix}"
            )

    def _locate(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) instrument index and global 1-minute row of each anchor."""
        instrument = np.searchsorted(self._anchors_before, anchors, side="right") - 1
        local = self._first_anchor[instrument] + anchors - self._anchors_before[instrument]
        return instrument, self._offset[BASE][instrument] + local

    def data_of(self, instrument: str) -> PreparedData:
        """The folder that holds an instrument (this dataset's one folder)."""
        return self.data

    @property
    def instrument_anchors(self) -> np.ndarray:
        """(instruments,) anchors of each instrument, in the order of `instruments` (their ids are
        consecutive, in that order)."""
        return np.diff(self._anchors_before)

    @property
    def anchor_instrument(self) -> np.ndarray:
        """(anchors,) index into `instruments` of each anchor; built on request (it has one entry per
        anchor: for evaluation, not serving)."""
        return np.repeat(np.arange(len(self.instruments)), np.diff(self._anchors_before))

    @property
    def anchor_time(self) -> np.ndarray:
        """(anchors,) end of each anchor bar, seconds, in time order within each instrument; built on
        request, as `anchor_instrument`."""
        return self._start[BASE][self._locate(np.arange(len(self)))[1]] + BASE.seconds

    def __getitems__(self, ids: list[int]) -> Batch:
        return self.batch(np.asarray(ids, dtype=np.int64))

    def __getitem__(self, sample_id: int) -> Batch:
        return self.batch(np.asarray([sample_id], dtype=np.int64))

    def future_sizes(self, instrument: np.ndarray, m1_row: np.ndarray) -> np.ndarray:
        """(B, H) the future-size targets of anchors (instrument index, global 1-minute row of the anchor
        bar), one per horizon h of ``future_minutes``: ``log(FUTURE_FLOOR + rms)``, rms the root mean
        square high-low range, in the instrument's 1-minute feature units, of the 1-minute bars that start
        in ``[t, t + h minutes)``, t the anchor bar's end: bars after every bar of the window. NaN (unknown)
        where the horizon passes the split's end (a target never reads another split) or fewer than
        `TARGET_COVERAGE` of its minutes have a bar (a closed market)."""
        anchor_time = self._start[BASE][m1_row] + BASE.seconds
        rows = m1_row[:, None] + 1 + np.arange(max(self.future_minutes))[None, :]  # (B, longest)
        inside = rows < self._m1_end[instrument][:, None]  # the instrument's own rows only
        rows = np.minimum(rows, len(self._start[BASE]) - 1)
        start, log_ohlc = self._start[BASE][rows], self._log_ohlc[BASE][rows]
        squared = ((log_ohlc[..., 1] - log_ohlc[..., 2]) / self._scale[BASE][instrument][:, None]) ** 2
        sizes = np.full((len(m1_row), len(self.future_minutes)), np.nan, dtype=np.float32)
        for k, minutes in enumerate(self.future_minutes):
            ahead = inside & (start < anchor_time[:, None] + 60 * minutes)
            count = ahead.sum(axis=1)
            known = (anchor_time + 60 * minutes <= self._split_end[instrument]) & (
                count >= TARGET_COVERAGE * minutes
            )
            rms = np.sqrt(np.where(ahead, squared, 0.0).sum(axis=1) / np.maximum(count, 1))
            sizes[known, k] = np.log(FUTURE_FLOOR + rms[known])
        return sizes

    def batch(
        self, ids: np.ndarray, masker: BarMasker | None = None, anchors: np.ndarray | None = None
    ) -> Batch:
        """Assemble the batch of the given sample ids, masked by ``masker`` (unmasked without one).

        Args:
            anchors: the anchor of each sample when it is not ``ids % len(self)`` (a folder of a
                `stage1_ds.data.corpus.CorpusWindows`, whose ids run over every folder's anchors).
        """
        keep_batch_memory()
        instrument, m1_row = self._locate(ids % len(self) if anchors is None else anchors)
        anchor_time = self._start[BASE][m1_row] + BASE.seconds
        keep = {
            tf: uniform_hash(self.seed, ids, Stream.KEEP + i) < self.keep_probability[tf]
            for i, tf in enumerate(self.timeframes)
        }
        none_kept = ~np.any(np.stack(list(keep.values())), axis=0)
        keep[BASE] = keep[BASE] | none_kept

        rows, start, valid = {}, {}, {}
        for tf in self.timeframes:
            rows[tf] = self._rows(instrument, m1_row, tf)  # (B, L) global rows
            start[tf] = self._start[tf][rows[tf]]
            valid[tf] = np.repeat(keep[tf][:, None], rows[tf].shape[1], axis=1)
        masks, modes = (None, None) if masker is None else masker(ids, start, valid, anchor_time)
        windows, log_reference, volume_ref = self._windows(instrument, rows, start, keep, valid, masks)
        return Batch(
            windows=windows,
            reference_price=torch.from_numpy(np.exp(log_reference)),
            anchor_time=torch.from_numpy(anchor_time),
            instrument=torch.from_numpy(instrument.astype(np.int64)),
            sample_id=torch.from_numpy(ids),
            mask_mode=None if modes is None else torch.from_numpy(modes),
            reference_volume=torch.from_numpy(np.asarray(volume_ref, np.float64)) if self.volume else None,
            future_size=torch.from_numpy(self.future_sizes(instrument, m1_row))
            if self.future_minutes
            else None,
            context=None
            if self.context is None
            else self.context.at(np.asarray(self.instruments)[instrument], anchor_time),
        )

    def _windows(
        self,
        instrument: np.ndarray,
        rows: dict[Timeframe, np.ndarray],
        start: dict[Timeframe, np.ndarray],
        keep: dict[Timeframe, np.ndarray],
        valid: dict[Timeframe, np.ndarray],
        masks: dict[Timeframe, np.ndarray] | None,
    ) -> tuple[dict[str, TimeframeWindow], np.ndarray, np.ndarray | None]:
        """Every timeframe's `TimeframeWindow` of samples whose windows hold the prepared ``rows`` (global),
        with the reference price taken from the visible bars (`_reference`); also (B,) the log reference
        price and the reference volume (None without volume)."""
        visible = {tf: valid[tf] if masks is None else valid[tf] & ~masks[tf] for tf in self.timeframes}
        log_reference, reference_tf = self._reference(rows, visible)
        volume_ref = self._volume_reference(rows, visible, reference_tf) if self.volume else None
        windows = {}
        for i, tf in enumerate(self.timeframes):
            scale = self._scale[tf][instrument]
            units = self._units[tf][rows[tf]] if volume_ref is not None else None
            features = window_features(
                self._log_ohlc[tf][rows[tf]], log_reference, scale, tf.minutes, units, volume_ref
            )
            features[~keep[tf]] = 0.0
            parent = None
            if i + 1 < len(self.timeframes):
                coarse = self.timeframes[i + 1]
                pos = self._parent(instrument, rows[tf], tf, coarse) - rows[coarse][:, :1]
                inside = self._bucket_inside(instrument, rows[tf], start[tf], tf, coarse)
                ok = (pos >= 0) & (pos < self.window_bars[coarse]) & inside
                ok &= (keep[tf] & keep[coarse])[:, None]
                parent = torch.from_numpy(np.where(ok, pos, -1))
            windows[tf.value] = TimeframeWindow(
                features=torch.from_numpy(features),
                valid=torch.from_numpy(valid[tf]),
                start_time=torch.from_numpy(start[tf]),
                parent_index=parent,
                scale=torch.from_numpy(scale),
                volume_scale=torch.full((len(instrument),), volume_scale(tf.minutes))
                if self.volume
                else None,
                mask=None if masks is None else torch.from_numpy(masks[tf]),
            )
        return windows, log_reference, volume_ref

    def context_rows(
        self, k: int, anchor_time: np.ndarray, stale_minutes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where instrument ``k`` of this dataset stands at other samples' anchor times: (B,) the global row of
        its last 1-minute bar that ENDS at or before each ``t`` (a bar at or after ``t`` never enters), and
        (B,) whether it is present there: that bar started within ``stale_minutes`` before ``t``, lies in
        this split (before its end), and every timeframe's window ending with it is full inside the split's
        history (a context window never reads another split)."""
        name = self.instruments[k]
        begin, end = self.data.rows(name, BASE)
        starts = self._start[BASE][begin:end]
        local = np.searchsorted(starts, anchor_time - BASE.seconds, side="right") - 1
        recent = starts[np.maximum(local, 0)] >= anchor_time - 60 * stale_minutes
        present = (local >= self._full_from[k]) & (local < self._split_high[k]) & recent
        return begin + np.maximum(local, 0), present

    def windows_at(self, instrument: np.ndarray, m1_row: np.ndarray) -> dict[str, TimeframeWindow]:
        """Unmasked windows of every timeframe (all kept) ending with the given 1-minute rows (global) of
        the given instruments (indices into `instruments`): a context instrument's windows. The reference
        price is the close of its own last 1-minute bar, so no other instrument's price level enters."""
        rows = {tf: self._rows(instrument, m1_row, tf) for tf in self.timeframes}
        start = {tf: self._start[tf][rows[tf]] for tf in self.timeframes}
        keep = {tf: np.ones(len(m1_row), bool) for tf in self.timeframes}
        valid = {tf: np.ones(rows[tf].shape, bool) for tf in self.timeframes}
        return self._windows(instrument, rows, start, keep, valid, None)[0]

    def _reference(
        self, rows: dict[Timeframe, np.ndarray], visible: dict[Timeframe, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B,) log of each sample's reference price, the close of the last visible bar of its finest
        timeframe that has a visible bar, and (B,) the index of that timeframe.

        Raises:
            DataError: a sample has no visible bar at all (the masker must leave one).
        """
        b = next(iter(rows.values())).shape[0]
        log_reference, source = np.full(b, np.nan), np.full(b, -1)
        for i, tf in enumerate(self.timeframes):
            seen = visible[tf]
            take = seen.any(axis=1) & (source < 0)
            last = seen.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
            close = self._log_ohlc[tf][rows[tf][np.arange(b), last], 3]
            log_reference = np.where(take, close, log_reference)
            source = np.where(take, i, source)
        if (source < 0).any():
            raise DataError("a sample has no visible bar to take its reference price from (masks hide all)")
        return log_reference, source

    def _volume_reference(
        self, rows: dict[Timeframe, np.ndarray], visible: dict[Timeframe, np.ndarray], source: np.ndarray
    ) -> np.ndarray:
        """(B,) each sample's reference volume: a power of two near the mean volume per minute of the visible
        bars of the timeframe its reference price comes from (visible bars only, like the price)."""
        per_minute = np.zeros(len(source))
        for i, tf in enumerate(self.timeframes):
            seen = visible[tf] & (source == i)[:, None]
            total = np.where(seen, self._units[tf][rows[tf]], 0).sum(axis=1)
            per_minute = np.where(
                source == i, total / np.maximum(seen.sum(axis=1), 1) / tf.minutes, per_minute
            )
        return volume_reference(per_minute)

    def rows(self, ids: np.ndarray, tf: Timeframe) -> np.ndarray:
        """(B, L) rows of the prepared ``tf`` arrays that the samples' windows of ``tf`` hold."""
        return self._rows(*self._locate(np.asarray(ids) % len(self)), tf)

    def _rows(self, instrument: np.ndarray, m1_row: np.ndarray, tf: Timeframe) -> np.ndarray:
        if tf == BASE:
            last = m1_row
        else:
            last = self._offset[tf][instrument] + self._index[f"{BASE.value}_last_{tf.value}"][m1_row]
        return last[:, None] + np.arange(1 - self.window_bars[tf], 1)

    def _parent(
        self, instrument: np.ndarray, rows: np.ndarray, fine: Timeframe, coarse: Timeframe
    ) -> np.ndarray:
        """(B, L) global rows of the ``coarse`` bars that hold ``fine`` bars (global ``rows``), through the
        stored parent of each prepared timeframe in between."""
        at = TIMEFRAMES.index(fine)
        while TIMEFRAMES[at] != coarse:
            step, up = TIMEFRAMES[at], TIMEFRAMES[at + 1]
            rows = self._offset[up][instrument][:, None] + self._index[f"{step.value}_parent"][rows]
            at += 1
        return rows

    def _bucket_inside(
        self, instrument: np.ndarray, rows: np.ndarray, start: np.ndarray, fine: Timeframe, coarse: Timeframe
    ) -> np.ndarray:
        """(B, L) whether the ``coarse`` bucket of each ``fine`` bar lies wholly inside the fine window: it
        starts at or after the window's first bar, or no fine bar lies between its start and that bar (the
        bar before the window, if the instrument has one, is older than the bucket)."""
        key = bucket_start(start, coarse, self.data.bucket_origin)
        before = rows[:, 0] - 1
        has_before = before >= self._offset[fine][instrument]
        before_start = np.where(has_before, self._start[fine][np.maximum(before, 0)], np.iinfo(np.int64).min)
        return (key >= start[:, :1]) | (before_start[:, None] < key)

    def true_ohlc(self, ids: np.ndarray, tf: Timeframe) -> np.ndarray:
        """(B, L, 4) float64 true prices of the windows of ``tf`` (for tests and evaluation)."""
        return np.asarray(self._bars[tf].ohlc[self.rows(ids, tf)])
