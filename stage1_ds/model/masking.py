"""Span masking at patch granularity, deterministic per sample.

Each timeframe of each sample masks exactly ``k = round(ratio * P)`` of its ``P`` patches, in about
``k / mean_span_patches`` contiguous spans. The spans are a pure function of ``(seed, sample id,
timeframe)``, so a resumed run or another worker masks the same bars. With ``sync_across_timeframes`` a
masked coarser patch also masks every finer patch that overlaps its time span.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from stage1_ds.config import MaskingConfig
from stage1_ds.data.batch import Batch
from stage1_ds.data.timeframes import Timeframe
from stage1_ds.data.windows import WindowDataset, uniform_hash


def num_patches(window_bars: int, patch_len: int) -> int:
    return math.ceil(window_bars / patch_len)


def masked_patch_count(patches: int, ratio: float) -> int:
    """Patches to mask: ``round(ratio * P)``, at least 1, and at least one patch left visible when P > 1."""
    return min(max(1, round(ratio * patches)), max(patches - 1, 1))


def _random_keys(seed: int, ids: np.ndarray, stream: int, width: int) -> np.ndarray:
    """(B, width) uniforms from (seed, id, stream, column)."""
    if width == 0:
        return np.zeros((len(ids), 0))
    return np.stack([uniform_hash(seed, ids, stream * 4096 + j) for j in range(width)], axis=1)


def _smallest_sorted(keys: np.ndarray, count: int) -> np.ndarray:
    """Per row, the sorted column indices of the ``count`` smallest keys (a random subset of columns)."""
    return np.sort(np.argsort(keys, axis=1)[:, :count], axis=1)


def span_mask(
    patches: int, ratio: float, mean_span: float, seed: int, ids: np.ndarray, stream: int
) -> np.ndarray:
    """(B, P) bool patch mask with exactly `masked_patch_count` patches masked per row, in spans.

    The masked patches form ``s`` spans: the span lengths are a random composition of ``k`` into ``s``
    positive parts, the visible patches a random composition of ``P - k`` into ``s + 1`` gaps whose inner
    ones are positive.
    """
    b = len(ids)
    k = masked_patch_count(patches, ratio)
    s = int(min(max(1, round(k / mean_span)), k, patches - k + 1)) if patches > 1 else 1
    cuts = _smallest_sorted(_random_keys(seed, ids, 2 * stream, k - 1), s - 1) + 1  # (B, s-1) in 1..k-1
    bounds = np.concatenate([np.zeros((b, 1), int), cuts, np.full((b, 1), k)], axis=1)
    lengths = np.diff(bounds, axis=1)  # (B, s), each >= 1
    free = patches - k - (s - 1)  # visible patches beyond the one that separates each pair of spans
    slots = _smallest_sorted(_random_keys(seed, ids, 2 * stream + 1, free + s), s)  # (B, s)
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


def _patch_times(start_time: np.ndarray, tf: Timeframe, patch_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, P) start and end time of each patch; the front padding of a window makes the first patch short."""
    b, length = start_time.shape
    pad = (-length) % patch_len
    first = np.concatenate([np.repeat(start_time[:, :1], pad, axis=1), start_time], axis=1)
    first = first.reshape(b, -1, patch_len)
    return first[:, :, 0], first[:, :, -1] + tf.seconds


def build_masks(batch: Batch, config: MaskingConfig, patch_len: int, seed: int) -> dict[str, torch.Tensor]:
    """Per timeframe, the (B, L) bool bar mask of the batch (True: hidden and reconstructed)."""
    ids = batch.sample_id.numpy()
    timeframes = [Timeframe(name) for name in batch.windows]
    patch_masks: dict[Timeframe, np.ndarray] = {}
    times: dict[Timeframe, tuple[np.ndarray, np.ndarray]] = {}
    for i, tf in enumerate(timeframes):
        length = batch.windows[tf.value].features.shape[1]
        patch_masks[tf] = span_mask(
            num_patches(length, patch_len), config.ratio, config.mean_span_patches, seed, ids, stream=i
        )
        times[tf] = _patch_times(batch.windows[tf.value].start_time.numpy(), tf, patch_len)
    if config.sync_across_timeframes:
        # Coarsest first, so a span masked in h4 reaches m1 through every timeframe in between.
        for c_index in range(len(timeframes) - 1, 0, -1):
            coarse = timeframes[c_index]
            c_start, c_end = times[coarse]
            for fine in timeframes[:c_index]:
                f_start, f_end = times[fine]
                overlap = (f_start[:, :, None] < c_end[:, None, :]) & (
                    c_start[:, None, :] < f_end[:, :, None]
                )
                patch_masks[fine] |= (overlap & patch_masks[coarse][:, None, :]).any(axis=2)
    masks = {}
    for tf in timeframes:
        length = batch.windows[tf.value].features.shape[1]
        pad = (-length) % patch_len
        bars = np.repeat(patch_masks[tf], patch_len, axis=1)[:, pad:]  # (B, L)
        masks[tf.value] = torch.from_numpy(bars)
    return masks


def add_masks(batch: Batch, config: MaskingConfig, patch_len: int, seed: int) -> Batch:
    """Attach `build_masks` to the batch's windows (in place) and return the batch."""
    for name, mask in build_masks(batch, config, patch_len, seed).items():
        batch.windows[name].mask = mask
    return batch


class MaskedWindows(Dataset):
    """A `WindowDataset` whose batches come with masks (use it with `build_loader` like the dataset)."""

    def __init__(self, windows: WindowDataset, config: MaskingConfig, patch_len: int, seed: int):
        self.windows = windows
        self.config = config
        self.patch_len = patch_len
        self.seed = seed

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, ids: np.ndarray) -> Batch:
        return add_masks(self.windows.batch(ids), self.config, self.patch_len, self.seed)

    def __getitems__(self, ids: list[int]) -> Batch:
        return self.batch(np.asarray(ids, dtype=np.int64))

    def __getitem__(self, sample_id: int) -> Batch:
        return self.batch(np.asarray([sample_id], dtype=np.int64))
