"""Context windows: the other instruments of the corpus at a sample's anchor time (``data.context``).

For a sample of instrument i anchored at ``t``, each other instrument j of the corpus (every one, or
``data.context_instruments``) stands at its last 1-minute bar that ends at or before ``t``; its windows of
every timeframe end with that bar, exactly as if j had a sample anchored there (the same timeframes and
lengths). Nothing of any instrument at or after ``t`` enters. j is absent from the sample where that bar
started more than ``data.context_stale_minutes`` before ``t`` (j closed, a holiday, before its data
begins), where it lies outside j's split of the same name, or where j's windows would reach before that
split's history (a context window never reads another split: a train sample never sees another
instrument's val or test bars). Absent instruments are left out, not zero-filled: the first
``data.context_max`` present instruments, in corpus order, fill the sample's slots, and an empty slot has
``present`` false, ``valid`` false and zero features.

A context instrument's features are scaled to its own last close, with its own scales (the scales of the
dataset that serves it), so no price level of any instrument enters and the encoder sees every market as
it sees the target. Context is a pure function of the sample's instrument and anchor time: batches stay a
pure function of their sample ids (exact resume, identical workers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from stage1_ds.config import DataConfig
from stage1_ds.data.batch import ContextWindows, TimeframeWindow
from stage1_ds.data.features import num_features
from stage1_ds.errors import DataError
from stage1_ds.timeframes import Timeframe


class ContextSource(Protocol):
    """What serves a market's instruments as context (`stage1_ds.data.windows.WindowDataset` does)."""

    instruments: list[str]
    timeframes: list[Timeframe]
    window_bars: dict[Timeframe, int]
    volume: bool

    def context_rows(
        self, k: int, anchor_time: np.ndarray, stale_minutes: int
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def windows_at(self, instrument: np.ndarray, m1_row: np.ndarray) -> dict[str, TimeframeWindow]: ...


class MarketContext:
    """Which instruments can be context and which dataset serves each (the same split as the samples').

    Args:
        parts: the datasets of one split whose instruments form the market (one folder's, or every folder
            of a corpus).
        config: ``context_instruments``, ``context_max`` and ``context_stale_minutes`` are read.

    Raises:
        DataError: ``data.context_instruments`` names an instrument the data does not hold.
    """

    def __init__(self, parts: Sequence[ContextSource], config: DataConfig):
        members = [(part, k, name) for part in parts for k, name in enumerate(part.instruments)]
        self.instruments = [name for _, _, name in members]
        chosen = config.context_instruments or self.instruments
        unknown = [name for name in chosen if name not in self.instruments]
        if unknown:
            raise DataError(
                f"data.context_instruments: {unknown} are not in the data; its instruments: {self.instruments}"
            )
        self._members = [
            (part, k, self.instruments.index(name)) for part, k, name in members if name in chosen
        ]
        self.slots = config.context_max
        self.stale_minutes = config.context_stale_minutes

    def at(self, target: np.ndarray, anchor_time: np.ndarray) -> ContextWindows:
        """The context of samples of the instruments named in ``target`` (B,) anchored at ``anchor_time`` (B,)
        seconds (see the module docstring)."""
        return self._assemble(*self._slots(target, anchor_time))

    def present(self, target: np.ndarray, anchor_time: np.ndarray) -> np.ndarray:
        """(B, K) which slots `at` fills, without assembling the windows."""
        return self._slots(target, anchor_time)[0] >= 0

    def _slots(self, target: np.ndarray, anchor_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, K) the member of each slot (-1: empty) and (B, members) each member's 1-minute row."""
        b = len(anchor_time)
        rows = np.zeros((b, len(self._members)), dtype=np.int64)
        present = np.zeros((b, len(self._members)), dtype=bool)
        for j, (part, k, index) in enumerate(self._members):
            rows[:, j], present[:, j] = part.context_rows(k, anchor_time, self.stale_minutes)
            present[:, j] &= target != self.instruments[index]
        return first_present(present, self.slots), rows

    def _assemble(self, member: np.ndarray, rows: np.ndarray) -> ContextWindows:
        """Gather each slot's windows from the dataset that serves its instrument into B x K rows."""
        b, slots = member.shape
        first = self._members[0][0]
        pieces: list[tuple[np.ndarray, dict[str, TimeframeWindow]]] = []
        for j, (part, k, _) in enumerate(self._members):
            sample, slot = np.nonzero(member == j)
            if len(sample):
                served = part.windows_at(np.full(len(sample), k), rows[sample, j])
                pieces.append((sample * slots + slot, served))
        windows = slot_windows(b * slots, pieces, first.timeframes, first.window_bars, first.volume)
        index = np.array([m[2] for m in self._members], dtype=np.int64)
        instrument = np.where(member >= 0, index[np.maximum(member, 0)], -1)
        return ContextWindows(
            windows=windows,
            present=torch.from_numpy(member >= 0),
            instrument=torch.from_numpy(instrument.astype(np.int64)),
        )


def first_present(present: np.ndarray, slots: int) -> np.ndarray:
    """(B, K) the member of each of ``slots`` slots, -1 where empty: the first present members of each
    sample (``present``: (B, members)), in member order."""
    b = len(present)
    order = np.cumsum(present, axis=1) - 1  # each present member's place among the sample's present ones
    taken = present & (order < slots)
    member = np.full((b, slots), -1, dtype=np.int64)
    sample, which = np.nonzero(taken)
    member[sample, order[sample, which]] = which
    return member


def slot_windows(
    n: int,
    pieces: list[tuple[np.ndarray, dict[str, TimeframeWindow]]],
    timeframes: Sequence[Timeframe],
    window_bars: Mapping[Timeframe, int],
    volume: bool,
) -> dict[str, TimeframeWindow]:
    """The windows of ``n`` = B x K context slots (slot k of sample b at ``b * K + k``), each filled from
    the ``pieces`` (flat slot positions and the windows that fill them, in that order); an empty slot has
    zero features and no valid bar."""
    windows = {}
    for i, tf in enumerate(timeframes):
        length, channels = window_bars[tf], num_features(volume)
        features = torch.zeros((n, length, channels), dtype=torch.float32)
        valid = torch.zeros((n, length), dtype=torch.bool)
        start = torch.zeros((n, length), dtype=torch.int64)
        scale = torch.ones(n, dtype=torch.float32)
        last = i + 1 == len(timeframes)
        parent = None if last else torch.full((n, length), -1, dtype=torch.int64)
        volume_scales = torch.ones(n) if volume else None
        for at, served in pieces:
            window, where = served[tf.value], torch.from_numpy(at)
            features[where], valid[where], start[where] = window.features, window.valid, window.start_time
            scale[where] = window.scale
            if parent is not None and window.parent_index is not None:
                parent[where] = window.parent_index
            if volume_scales is not None and window.volume_scale is not None:
                volume_scales[where] = window.volume_scale
        windows[tf.value] = TimeframeWindow(
            features=features,
            valid=valid,
            start_time=start,
            parent_index=parent,
            scale=scale,
            volume_scale=volume_scales,
        )
    return windows
