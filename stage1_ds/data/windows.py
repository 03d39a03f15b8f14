"""Time-aligned multi-timeframe windows, served in batches.

A sample is anchored at the end ``t`` of one 1-minute bar. For every timeframe its window is the last
``L_tf`` bars whose bucket ends at or before ``t`` (the 1-minute window ends with the anchor bar), all of
them inside the split's history range. Windows never mix instruments or splits.

Samples are addressed by *sample ids*: ``id = epoch * num_anchors + anchor``. Everything random about a
sample (which timeframes it drops) is a hash of ``(seed, id)``, so a batch is a pure function of its ids:
the same on any worker, after any restart, on any rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stage1_ds.config import DataConfig
from stage1_ds.data.batch import Batch, TimeframeWindow
from stage1_ds.data.features import to_features
from stage1_ds.data.store import SPLITS, PreparedData, load_prepared
from stage1_ds.data.timeframes import BASE, Timeframe, sort_timeframes
from stage1_ds.errors import DataError


def uniform_hash(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """Uniform floats in [0, 1) from (seed, id, stream) with the splitmix64 finaliser."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= np.uint64((seed * 1_000_003 + stream * 7919) & 0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class WindowDataset(Dataset):
    """Aligned windows of one split of a prepared folder.

    ``len(dataset)`` is the number of anchors. Fetch whole batches with `batch` (or ``__getitems__``, which a
    `DataLoader` with a batch sampler calls); indices are sample ids (see the module docstring).

    Raises:
        DataError: the split has no anchor with full history for every configured window length.
    """

    def __init__(self, data: PreparedData | Path | str, split: str, config: DataConfig, seed: int = 0):
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
        self._scale = {
            tf: np.array([self.data.scale(name, tf) for name in self.instruments], dtype=np.float32)
            for tf in self.timeframes
        }
        self._index_anchors()
        self._index_parents()

    def __len__(self) -> int:
        return len(self._anchor_instrument)

    def _index_anchors(self) -> None:
        instrument, close, log_close, time = [], [], [], []
        last: dict[Timeframe, list[np.ndarray]] = {tf: [] for tf in self.timeframes}
        for k, name in enumerate(self.instruments):
            region = self.data.split(name, self.split)
            begin, end = self.data.rows(name, BASE)
            m1_start = np.asarray(self._bars[BASE].start[begin:end])
            anchor_end = m1_start + BASE.seconds
            in_split = np.flatnonzero((anchor_end > region.anchor_start) & (anchor_end <= region.end))
            t = anchor_end[in_split]
            ok = np.ones(len(t), dtype=bool)
            lasts = {}
            for tf in self.timeframes:
                tf_begin, tf_end = self.data.rows(name, tf)
                start = np.asarray(self._bars[tf].start[tf_begin:tf_end])
                local_last = np.searchsorted(start + tf.seconds, t, side="right") - 1
                first = local_last - self.window_bars[tf] + 1
                ok &= first >= 0
                ok &= start[np.clip(first, 0, None)] >= region.history_start
                lasts[tf] = local_last + tf_begin
            keep = np.flatnonzero(ok)
            instrument.append(np.full(len(keep), k, dtype=np.int64))
            close.append(np.asarray(self._bars[BASE].ohlc[begin:end, 3])[in_split[keep]])
            log_close.append(self._log_ohlc[BASE][begin:end, 3][in_split[keep]])
            time.append(t[keep])
            for tf in self.timeframes:
                last[tf].append(lasts[tf][keep])
        self._anchor_instrument = np.concatenate(instrument)
        self._anchor_close = np.concatenate(close)
        self._anchor_log_close = np.concatenate(log_close)
        self._anchor_time = np.concatenate(time)
        self._last = {tf: np.concatenate(v) for tf, v in last.items()}
        if len(self) == 0:
            longest = max(self.window_bars.values())
            raise DataError(
                f"{self.data.root}: the {self.split} split has no anchor with full windows of all timeframes "
                f"(data.window_bars up to {longest}, data prepared for {self.data.manifest['window_bars']}); "
                "lower data.window_bars or prepare more data"
            )

    def _index_parents(self) -> None:
        """For each consecutive pair (finer f, coarser c): per f bar, the global row of its c bar, and the
        global row of the first f bar in the same c bucket."""
        self._parent_row: dict[Timeframe, np.ndarray] = {}
        self._bucket_first: dict[Timeframe, np.ndarray] = {}
        for fine, coarse in zip(self.timeframes[:-1], self.timeframes[1:], strict=True):
            parent_rows, bucket_first = [], []
            for name in self.instruments:
                f_begin, f_end = self.data.rows(name, fine)
                c_begin, c_end = self.data.rows(name, coarse)
                key = np.asarray(self._bars[fine].start[f_begin:f_end]) // coarse.seconds * coarse.seconds
                c_start = np.asarray(self._bars[coarse].start[c_begin:c_end])
                pos = np.searchsorted(c_start, key)
                if len(c_start) == 0 or not np.array_equal(c_start[np.minimum(pos, len(c_start) - 1)], key):
                    raise DataError(
                        f"{self.data.root}: {coarse} bars of {name} do not cover its {fine} bars; "
                        "prepare the data again"
                    )
                parent_rows.append(pos + c_begin)
                run_start = np.r_[True, key[1:] != key[:-1]]
                bucket_first.append(
                    np.maximum.accumulate(np.where(run_start, np.arange(len(key)), 0)) + f_begin
                )
            self._parent_row[fine] = np.concatenate(parent_rows)
            self._bucket_first[fine] = np.concatenate(bucket_first)

    def __getitems__(self, ids: list[int]) -> Batch:
        return self.batch(np.asarray(ids, dtype=np.int64))

    def __getitem__(self, sample_id: int) -> Batch:
        return self.batch(np.asarray([sample_id], dtype=np.int64))

    def batch(self, ids: np.ndarray) -> Batch:
        """Assemble the batch of the given sample ids."""
        anchors = ids % len(self)
        instrument = self._anchor_instrument[anchors]
        log_price = self._anchor_log_close[anchors]
        keep = {
            tf: uniform_hash(self.seed, ids, stream=i) < self.keep_probability[tf]
            for i, tf in enumerate(self.timeframes)
        }
        none_kept = ~np.any(np.stack(list(keep.values())), axis=0)
        keep[BASE] = keep[BASE] | none_kept

        rows, firsts = {}, {}
        for tf in self.timeframes:
            length = self.window_bars[tf]
            last = self._last[tf][anchors]
            firsts[tf] = last - length + 1
            rows[tf] = last[:, None] + np.arange(1 - length, 1)  # (B, L) global rows

        windows = {}
        for i, tf in enumerate(self.timeframes):
            scale = self._scale[tf][instrument]
            features = to_features(self._log_ohlc[tf][rows[tf]], log_price, scale)  # (B, L, F)
            features[~keep[tf]] = 0.0
            parent = None
            if i + 1 < len(self.timeframes):
                coarse = self.timeframes[i + 1]
                pos = self._parent_row[tf][rows[tf]] - firsts[coarse][:, None]
                inside = self._bucket_first[tf][rows[tf]] >= firsts[tf][:, None]
                ok = (pos >= 0) & (pos < self.window_bars[coarse]) & inside
                ok &= (keep[tf] & keep[coarse])[:, None]
                parent = torch.from_numpy(np.where(ok, pos, -1))
            windows[tf.value] = TimeframeWindow(
                features=torch.from_numpy(features),
                valid=torch.from_numpy(np.repeat(keep[tf][:, None], rows[tf].shape[1], axis=1)),
                start_time=torch.from_numpy(self._start[tf][rows[tf]]),
                parent_index=parent,
                scale=torch.from_numpy(scale),
            )
        return Batch(
            windows=windows,
            anchor_price=torch.from_numpy(self._anchor_close[anchors]),
            anchor_time=torch.from_numpy(self._anchor_time[anchors]),
            instrument=torch.from_numpy(instrument),
            sample_id=torch.from_numpy(ids),
        )

    def true_ohlc(self, ids: np.ndarray, tf: Timeframe) -> np.ndarray:
        """(B, L, 4) float64 true prices of the windows of ``tf`` (for tests and evaluation)."""
        anchors = np.asarray(ids) % len(self)
        length = self.window_bars[tf]
        rows = self._last[tf][anchors][:, None] + np.arange(1 - length, 1)
        return np.asarray(self._bars[tf].ohlc[rows])


class WindowSampler(Sampler[list[int]]):
    """Batches of sample ids, deterministic given the seed, sharded over ranks, resumable by position.

    Epoch ``e`` is a seeded permutation of the anchors; rank ``r`` of ``w`` takes every ``w``-th anchor of
    it, so ranks see disjoint shares. Batch ``b`` (counted across epochs) is a pure function of
    ``(seed, rank, world_size, b)``: resuming means starting at the number of batches already consumed.

    Args:
        num_anchors: ``len(dataset)``.
        batch_size: samples per batch on this rank.
        seed: permutation seed.
        rank, world_size: this rank's share.
        start_batch: the first batch to yield (the resume position).
        num_batches: how many batches to yield; None for an endless stream.
    """

    def __init__(
        self,
        num_anchors: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        num_batches: int | None = None,
    ):
        self.num_anchors = num_anchors
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.num_batches = num_batches
        self.batches_per_epoch = num_anchors // world_size // batch_size
        if self.batches_per_epoch < 1:
            raise DataError(
                f"{num_anchors} anchors cannot fill one batch of {batch_size} on each of {world_size} ranks; "
                "lower the batch size or use more data"
            )
        self._cached_epoch = -1
        self._cached_share = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless WindowSampler has no length")
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start_batch
        while self.num_batches is None or b < self.start_batch + self.num_batches:
            yield self.batch_ids(b).tolist()
            b += 1

    def batch_ids(self, b: int) -> np.ndarray:
        """Sample ids of batch ``b`` of this rank."""
        epoch, k = divmod(b, self.batches_per_epoch)
        if epoch != self._cached_epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_anchors)
            self._cached_share = order[self.rank :: self.world_size]
            self._cached_epoch = epoch
        chunk = self._cached_share[k * self.batch_size : (k + 1) * self.batch_size]
        return chunk + epoch * self.num_anchors


def _unwrap(batch: Any) -> Any:
    # __getitems__ already built the whole batch; module level so that workers can pickle it.
    return batch


def build_loader(dataset: Dataset, sampler: WindowSampler, num_workers: int = 0) -> DataLoader:
    """A DataLoader that asks the dataset for whole batches; ``num_workers`` processes build them.

    It has a generator of its own: by default a DataLoader draws its workers' base seed from torch's global
    random state when an iterator starts, which would shift the dropout of a resumed run against the
    uninterrupted one (batches are pure functions of their ids and need no randomness).
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_unwrap,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(sampler.seed),
    )
