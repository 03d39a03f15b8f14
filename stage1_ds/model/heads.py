"""Per-timeframe heads: each token back to its patch of bars."""

from __future__ import annotations

import torch
from torch import nn


class ReconstructionHeads(nn.Module):
    def __init__(self, timeframes: list[str], patch_len: int, num_features: int, d_model: int):
        super().__init__()
        self.patch_len = patch_len
        self.num_features = num_features
        self.heads = nn.ModuleDict(
            {
                tf: nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, patch_len * num_features))
                for tf in timeframes
            }
        )

    def forward(self, tf: str, hidden: torch.Tensor, length: int) -> torch.Tensor:
        """(B, P, d_model) hidden states to (B, length, F) bars, dropping the front padding."""
        out = self.heads[tf](hidden)  # (B, P, patch_len * F)
        bars = out.reshape(out.shape[0], -1, self.num_features)  # (B, P * patch_len, F)
        return bars[:, bars.shape[1] - length :]
