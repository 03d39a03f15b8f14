"""Per-timeframe heads: each token back to its patch of bars."""

from __future__ import annotations

import torch
from torch import nn


class ReconstructionHeads(nn.Module):
    """Per timeframe, tokens back to bars; with ``future`` > 0 also the future-size head: the mean of each
    timeframe's valid states, side by side, to one prediction per horizon (`future_size`)."""

    def __init__(
        self, timeframes: list[str], patch_len: int, num_features: int, d_model: int, future: int = 0
    ):
        super().__init__()
        self.patch_len = patch_len
        self.num_features = num_features
        self.timeframes = list(timeframes)
        self.heads = nn.ModuleDict(
            {
                tf: nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, patch_len * num_features))
                for tf in timeframes
            }
        )
        self.future = (
            nn.Sequential(
                nn.LayerNorm(len(timeframes) * d_model), nn.Linear(len(timeframes) * d_model, future)
            )
            if future > 0
            else None
        )

    def future_size(self, hidden: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, horizons) from per-timeframe (B, P, d) states and (B, P) validity: a timeframe a sample
        dropped contributes zeros (the same graph for every sample and rank)."""
        assert self.future is not None, "built without a future-size head"
        pooled = [pool_states(hidden[tf], valid[tf]) for tf in self.timeframes]
        return self.future(torch.cat(pooled, dim=-1))

    def forward(self, tf: str, hidden: torch.Tensor, length: int) -> torch.Tensor:
        """(B, P, d_model) hidden states to (B, length, F) bars, dropping the front padding."""
        out = self.heads[tf](hidden)  # (B, P, patch_len * F)
        bars = out.reshape(out.shape[0], -1, self.num_features)  # (B, P * patch_len, F)
        return bars[:, bars.shape[1] - length :]


def pool_states(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, d): the mean of (B, P, d) encoder states over the (B, P) attended tokens (zeros where none is):
    the pooled embedding a Stage-2 model reads (`stage1_ds.encoding.encode_batch`), and what the
    future-size head sees."""
    weight = valid.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weight).sum(1) / weight.sum(1).clamp(min=1)
