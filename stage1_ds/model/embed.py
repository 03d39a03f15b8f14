"""Per-timeframe stems: patches of bars to tokens, with timeframe, position and mask embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stage1_ds.model.time_aware import CalendarEmbedding, TimeBias
from stage1_ds.timeframes import Timeframe


def patchify(values: torch.Tensor, patch_len: int) -> torch.Tensor:
    """(B, L, ...) to (B, P, patch_len, ...), padding the oldest end with zeros to a whole patch."""
    pad = (-values.shape[1]) % patch_len
    if pad:
        widths = [0, 0] * (values.dim() - 2) + [pad, 0]
        values = F.pad(values, widths)
    return values.reshape(values.shape[0], -1, patch_len, *values.shape[2:])


def patch_end_times(
    start_time: torch.Tensor, valid: torch.Tensor, seconds: int, patch_len: int
) -> torch.Tensor:
    """(B, P) end time of each patch (seconds): the end of its newest existing bar; 0 for a patch of
    padding only.

    Args:
        start_time: (B, L) bar start times (seconds); valid: (B, L) bool, the bar exists.
    """
    ends = torch.where(valid, start_time + seconds, torch.zeros_like(start_time))
    return patchify(ends, patch_len).amax(-1)


class PatchEmbedding(nn.Module):
    """Tokens of every timeframe for the shared encoder.

    token = stem_tf(patch) + timeframe_embedding[tf] + position_embedding[p] (+ calendar(end of the patch)),
    where a masked patch's stem output is replaced by the learned mask embedding (and its bars are zeroed
    before the stem), so masked values cannot reach the encoder. Positions count from the window end:
    position 0 is the patch ending at the anchor in every timeframe. With ``model.position_bias: time`` it
    also holds the `TimeBias` (``time_bias``) that the model applies across all timeframes' tokens, and
    with ``data.context`` the `ContextSummary` (``context``) of the other instruments' windows: both train
    with the stems in every phase.
    """

    def __init__(
        self,
        timeframes: list[str],
        max_patches: int,
        patch_len: int,
        num_features: int,
        d_model: int,
        calendar: list[str] | None = None,
        time_bias: TimeBias | None = None,
        context: bool = False,
    ):
        super().__init__()
        self.patch_len = patch_len
        self.index = {tf: i for i, tf in enumerate(timeframes)}
        self.seconds = {tf: Timeframe(tf).seconds for tf in timeframes}
        self.stems = nn.ModuleDict({tf: nn.Linear(patch_len * num_features, d_model) for tf in timeframes})
        self.timeframe = nn.Embedding(len(timeframes), d_model)
        self.position = nn.Embedding(max_patches, d_model)
        self.mask_token = nn.Parameter(torch.empty(d_model))
        for weight in (self.timeframe.weight, self.position.weight, self.mask_token):
            nn.init.normal_(weight, std=0.02)
        self.calendar = CalendarEmbedding(calendar, d_model) if calendar else None
        self.time_bias = time_bias
        self.context = ContextSummary(d_model) if context else None

    def forward(
        self,
        tf: str,
        features: torch.Tensor,
        bar_mask: torch.Tensor | None,
        valid: torch.Tensor,
        start_time: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Embed one timeframe.

        Args:
            features: (B, L, F) scale-free features.
            bar_mask: (B, L) bool, True for masked bars; None: nothing masked (then no patch mask returned).
            valid: (B, L) bool, True for bars that exist in a kept timeframe.
            start_time: (B, L) bar start times, seconds.

        Returns:
            tokens (B, P, d_model), patch_mask (B, P) bool, patch_valid (B, P) bool, patch end times (B, P).
        """
        hidden = features if bar_mask is None else features.masked_fill(bar_mask.unsqueeze(-1), 0.0)
        patches = patchify(hidden, self.patch_len).flatten(2)  # (B, P, patch_len * F)
        patch_valid = patchify(valid, self.patch_len).any(-1)  # (B, P)
        end_time = patch_end_times(start_time, valid, self.seconds[tf], self.patch_len)  # (B, P)
        tokens = self.stems[tf](patches.to(self.mask_token.dtype))
        patch_mask = None if bar_mask is None else patchify(bar_mask, self.patch_len).any(-1)  # (B, P)
        if patch_mask is not None:
            tokens = torch.where(patch_mask.unsqueeze(-1), self.mask_token.expand_as(tokens), tokens)
        num = tokens.shape[1]
        positions = torch.arange(num - 1, -1, -1, device=tokens.device)  # 0 at the window end
        tf_index = torch.tensor(self.index[tf], device=tokens.device)
        tokens = tokens + self.position(positions) + self.timeframe(tf_index)
        if self.calendar is not None:
            tokens = tokens + self.calendar(end_time)
        return tokens, patch_mask, patch_valid, end_time


class ContextSummary(nn.Module):
    """One token per context instrument (``data.context``): what the market around the target looks like.

    A context instrument's windows go through the same stems, timeframe, position and calendar embeddings as
    the target's (`PatchEmbedding`, nothing masked); its tokens of every timeframe are then pooled into one:
    ``outer(mean over its patches of gelu(inner(token)))``. The nonlinearity comes before the mean because
    a stem is linear in signed moves, and a plain mean of signed moves averages their size away. The
    summary carries the ``context`` role embedding (the target's tokens carry the ``target`` one) and the
    end time of the instrument's newest bar, so the time bias measures minutes across instruments as it does
    across timeframes. No instrument identity enters: the encoder serves instruments it never saw.

    One token per instrument, not its every patch: with seven context instruments the mini T5's step costs
    1.16x with one token each and 10.6x with every patch (docs/benchmarks.md).
    """

    TARGET, CONTEXT = 0, 1

    def __init__(self, d_model: int):
        super().__init__()
        self.inner = nn.Linear(d_model, d_model)
        self.outer = nn.Linear(d_model, d_model)
        self.role = nn.Embedding(2, d_model)
        nn.init.normal_(self.role.weight, std=0.02)

    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor, end_time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            tokens: (N, P, d_model) one context instrument's tokens of every timeframe per row.
            valid: (N, P) bool, the patch holds a bar; end_time: (N, P) patch end times, seconds.

        Returns:
            (N, d_model) summary tokens and (N,) their end times (0 for a row without any valid patch).
        """
        weights = valid.unsqueeze(-1).to(tokens.dtype)
        hidden = F.gelu(self.inner(tokens)) * weights
        pooled = hidden.sum(1) / weights.sum(1).clamp(min=1.0)
        summary = self.outer(pooled) + self.role.weight[self.CONTEXT]
        return summary, torch.where(valid, end_time, torch.zeros_like(end_time)).amax(1)

    def target_role(self) -> torch.Tensor:
        """(d_model,) the role embedding added to every target token."""
        return self.role.weight[self.TARGET]
