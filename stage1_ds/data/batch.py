"""The batch contract between data, model, losses, evaluation and encoding.

A `Batch` holds one `TimeframeWindow` per timeframe, finest first, plus what every timeframe of a sample
shares (reference price, anchor time, instrument, sample id, masking mode). `stage1_ds.data.windows` builds
batches (masked by `stage1_ds.model.masking`); the model, the losses, `stage1 evaluate` and `stage1 encode`
read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TimeframeWindow:
    """One timeframe of a batch.

    Attributes:
        features: (B, L, F) float32 scale-free features: open, high, low, close (and volume); zeros where
            the timeframe is dropped.
        valid: (B, L) bool, the bar exists and the sample keeps this timeframe (a dropped timeframe is
            False everywhere).
        start_time: (B, L) int64 bucket start, seconds of the data clock.
        parent_index: (B, L) int64 position of the bar of the next coarser timeframe whose bucket holds
            this bar, or -1 when that bar is not in the coarser window, its bucket is not wholly inside
            this window, or either timeframe is dropped. None for the coarsest timeframe.
        scale: (B,) float32 the price features' scale of the sample's instrument for this timeframe.
        mask: (B, L) bool, bars hidden from the encoder and reconstructed; None for an unmasked batch.
        volume_scale: (B,) float32 the volume feature's scale for this timeframe; None without volume.
    """

    features: torch.Tensor
    valid: torch.Tensor
    start_time: torch.Tensor
    parent_index: torch.Tensor | None
    scale: torch.Tensor
    mask: torch.Tensor | None = None
    volume_scale: torch.Tensor | None = None

    def take(self, rows: np.ndarray) -> TimeframeWindow:
        """The windows of the samples ``rows`` (B',)."""
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))

        def pick(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value[index]

        return TimeframeWindow(
            features=self.features[index],
            valid=self.valid[index],
            start_time=self.start_time[index],
            parent_index=pick(self.parent_index),
            scale=self.scale[index],
            mask=pick(self.mask),
            volume_scale=pick(self.volume_scale),
        )

    def to(self, device: torch.device | str) -> TimeframeWindow:
        return TimeframeWindow(
            features=self.features.to(device),
            valid=self.valid.to(device),
            start_time=self.start_time.to(device),
            parent_index=None if self.parent_index is None else self.parent_index.to(device),
            scale=self.scale.to(device),
            mask=None if self.mask is None else self.mask.to(device),
            volume_scale=None if self.volume_scale is None else self.volume_scale.to(device),
        )


@dataclass
class ContextWindows:
    """The market around a batch's samples (`stage1_ds.data.context`): up to K other instruments' windows
    at each sample's anchor time, K slots per sample.

    Attributes:
        windows: per timeframe name, a `TimeframeWindow` of B x K windows (row ``b * K + k`` is slot ``k`` of
            sample ``b``): unmasked, every timeframe kept, each scaled to its own instrument's last close;
            features zero, ``valid`` false and ``parent_index`` -1 in an empty slot.
        present: (B, K) bool, the slot holds an instrument (false: fewer than K others were trading).
        instrument: (B, K) int64 the slot's instrument, an index into the context's ``instruments``; -1
            where empty. For evaluation only: no instrument identity reaches the model.
    """

    windows: dict[str, TimeframeWindow]
    present: torch.Tensor
    instrument: torch.Tensor

    @property
    def slots(self) -> int:
        return int(self.present.shape[1])

    def to(self, device: torch.device | str) -> ContextWindows:
        return ContextWindows(
            windows={tf: window.to(device) for tf, window in self.windows.items()},
            present=self.present.to(device),
            instrument=self.instrument.to(device),
        )


@dataclass
class Batch:
    """A batch of samples; ``windows`` is ordered finest timeframe first.

    Attributes:
        windows: per timeframe name, its `TimeframeWindow`.
        reference_price: (B,) float64 ``P_ref`` of the features: the close of the last visible bar of the
            sample's finest timeframe that has one (the anchor bar's close when nothing is masked).
        anchor_time: (B,) int64 end of the anchor bar, seconds.
        instrument: (B,) int64 index into the data's instrument list.
        sample_id: (B,) int64 sample ids.
        mask_mode: (B,) int64 index into `stage1_ds.model.masking.MODES` of each sample's masking mode; None
            for an unmasked batch.
        reference_volume: (B,) float64 the volume reference of each sample, in the folder's volume units
            per minute (a bar's volume feature times its window's ``volume_scale`` times this is its volume
            in those units; figures draw volume in the instrument's units with it); None without volume.
        future_size: (B, H) float32 the future-size targets, one per ``data.future_minutes`` horizon, NaN
            where unknown (`stage1_ds.data.windows.WindowDataset.future_sizes`); None without horizons.
        context: the other instruments' windows at each anchor time (`ContextWindows`); None without
            ``data.context``.
    """

    windows: dict[str, TimeframeWindow]
    reference_price: torch.Tensor
    anchor_time: torch.Tensor
    instrument: torch.Tensor
    sample_id: torch.Tensor
    mask_mode: torch.Tensor | None = None
    reference_volume: torch.Tensor | None = None
    future_size: torch.Tensor | None = None
    context: ContextWindows | None = None

    @property
    def size(self) -> int:
        return int(self.sample_id.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            windows={tf: window.to(device) for tf, window in self.windows.items()},
            reference_price=self.reference_price.to(device),
            anchor_time=self.anchor_time.to(device),
            instrument=self.instrument.to(device),
            sample_id=self.sample_id.to(device),
            mask_mode=None if self.mask_mode is None else self.mask_mode.to(device),
            reference_volume=None if self.reference_volume is None else self.reference_volume.to(device),
            future_size=None if self.future_size is None else self.future_size.to(device),
            context=None if self.context is None else self.context.to(device),
        )
