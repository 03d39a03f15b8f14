"""What the encoder knows of time: calendar inputs of each patch, and attention that measures minutes.

A patch's time is its end (`stage1_ds.model.embed.patch_end_times`): the end of its newest bar, so a patch
of m1 bars and a patch of h1 bars that end at the same minute are at distance 0 whatever their place in
the joint sequence. Every time is at or before the anchor: nothing after it enters.

- `CalendarEmbedding`: learned embeddings of the hour of the week and the minute of the hour of a patch's
  last minute, on the data clock (UTC when the data was prepared on UTC), added to the patch token.
- `TimeBias`: the attention bias between two tokens as a learned value per head for the bucket of the
  signed difference of their end times in minutes (0 exactly, then log-spaced up to `LONGEST_MINUTES`, each
  direction its own buckets), optionally plus one per head for the (query timeframe, key timeframe)
  pair; one bias for every layer, as T5 shares its own. It depends on differences of times only, so the
  encoder's output is the same whatever order the timeframes are concatenated in, and when every time
  shifts by a constant (tested).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Buckets of the time bias, half for each sign of the difference.
TIME_BUCKETS = 64
#: Differences from 1 minute to this many are spread over the log-spaced buckets; longer ones share the last.
LONGEST_MINUTES = 2**16  # 45 days: a 128-bar h4 window with weekends is about 30
_SIZES = {"hour_of_week": 168, "minute_of_hour": 60}
_MONDAY_HOURS = 3 * 24  # the Unix epoch began on a Thursday: hours from a Monday 00:00 to it


def calendar_indices(end_time: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per calendar feature, the index of each patch's last minute: hour of the week (0 for Monday
    00:00-00:59) and minute of the hour."""
    last_minute = end_time - 60
    return {
        "hour_of_week": torch.div(last_minute, 3600, rounding_mode="floor").add(_MONDAY_HOURS).remainder(168),
        "minute_of_hour": torch.div(last_minute, 60, rounding_mode="floor").remainder(60),
    }


class CalendarEmbedding(nn.Module):
    """The sum of learned embeddings of the calendar features of each patch's end (see the module docstring)."""

    def __init__(self, features: list[str], d_model: int):
        super().__init__()
        tables = {name: nn.Embedding(_SIZES[name], d_model) for name in features}
        for table in tables.values():
            nn.init.normal_(table.weight, std=0.02)
        self.tables = nn.ModuleDict(tables)

    def forward(self, end_time: torch.Tensor) -> torch.Tensor:
        """(B, P) end times (seconds) to (B, P, d_model)."""
        indices = calendar_indices(end_time)
        return torch.stack([table(indices[name]) for name, table in self.tables.items()]).sum(0)


def time_bucket(minutes: torch.Tensor) -> torch.Tensor:
    """Bucket of a signed difference in minutes (query end minus key end): 0 for none, then
    ``1 + floor(log(|d|) / log(LONGEST_MINUTES) * (half - 2))`` up to ``half - 1``; a negative difference
    (the key ends later) adds ``half``."""
    half = TIME_BUCKETS // 2
    distance = minutes.abs()
    spread = torch.log(distance.clamp(min=1).float()) / math.log(LONGEST_MINUTES) * (half - 2)
    bucket = torch.where(distance == 0, 0, (1 + spread.floor().long()).clamp(max=half - 1))
    return bucket + half * (minutes < 0).long()


class TimeBias(nn.Module):
    """(B, heads, T, T) attention bias from the difference of token end times (see the module docstring)."""

    def __init__(self, heads: int, timeframes: int, pairwise: bool):
        super().__init__()
        self.timeframes = timeframes
        self.distance = nn.Embedding(TIME_BUCKETS, heads)
        nn.init.zeros_(self.distance.weight)  # no preference at first: attention as without any bias
        self.pairs = nn.Embedding(timeframes * timeframes, heads) if pairwise else None
        if self.pairs is not None:
            nn.init.zeros_(self.pairs.weight)

    def forward(self, end_time: torch.Tensor, timeframe: torch.Tensor) -> torch.Tensor:
        """
        Args:
            end_time: (B, T) token end times, seconds.
            timeframe: (B, T) index of each token's timeframe.
        """
        minutes = torch.div(
            end_time[:, :, None] - end_time[:, None, :], 60, rounding_mode="floor"
        )  # (B, T, T)
        index, table = time_bucket(minutes), self.distance.weight  # (B, T, T), (buckets, heads)
        if self.pairs is not None:  # one table of (bucket, pair) rows: one gather instead of two
            pairs = timeframe[:, :, None] * self.timeframes + timeframe[:, None, :]
            index = index * self.pairs.num_embeddings + pairs
            table = (table[:, None, :] + self.pairs.weight[None, :, :]).flatten(0, 1)
        # Indexing the transposed table, not nn.Embedding: its backward over B*T*T indices is 5x slower on CPU.
        return table.t()[:, index].transpose(0, 1)  # (B, heads, T, T)
