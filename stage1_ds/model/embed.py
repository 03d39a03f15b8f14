"""Per-timeframe stems: patches of bars to tokens, with timeframe, position and mask embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patchify(values: torch.Tensor, patch_len: int) -> torch.Tensor:
    """(B, L, ...) to (B, P, patch_len, ...), padding the oldest end with zeros to a whole patch."""
    pad = (-values.shape[1]) % patch_len
    if pad:
        widths = [0, 0] * (values.dim() - 2) + [pad, 0]
        values = F.pad(values, widths)
    return values.reshape(values.shape[0], -1, patch_len, *values.shape[2:])


class PatchEmbedding(nn.Module):
    """Tokens of every timeframe for the shared encoder.

    token = stem_tf(patch) + timeframe_embedding[tf] + position_embedding[p], where a masked patch's stem
    output is replaced by the learned mask embedding (and its bars are zeroed before the stem), so masked
    values cannot reach the encoder. Positions count from the window end: position 0 is the patch ending at
    the anchor in every timeframe.
    """

    def __init__(
        self, timeframes: list[str], max_patches: int, patch_len: int, num_features: int, d_model: int
    ):
        super().__init__()
        self.patch_len = patch_len
        self.index = {tf: i for i, tf in enumerate(timeframes)}
        self.stems = nn.ModuleDict({tf: nn.Linear(patch_len * num_features, d_model) for tf in timeframes})
        self.timeframe = nn.Embedding(len(timeframes), d_model)
        self.position = nn.Embedding(max_patches, d_model)
        self.mask_token = nn.Parameter(torch.empty(d_model))
        for weight in (self.timeframe.weight, self.position.weight, self.mask_token):
            nn.init.normal_(weight, std=0.02)

    def forward(
        self, tf: str, features: torch.Tensor, bar_mask: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed one timeframe.

        Args:
            features: (B, L, F) scale-free features.
            bar_mask: (B, L) bool, True for masked bars.
            valid: (B, L) bool, True for bars that exist in a kept timeframe.

        Returns:
            tokens (B, P, d_model), patch_mask (B, P) bool, patch_valid (B, P) bool.
        """
        hidden = features.masked_fill(bar_mask.unsqueeze(-1), 0.0)
        patches = patchify(hidden, self.patch_len).flatten(2)  # (B, P, patch_len * F)
        patch_mask = patchify(bar_mask, self.patch_len).any(-1)  # (B, P)
        patch_valid = patchify(valid, self.patch_len).any(-1)  # (B, P)
        stem = self.stems[tf](patches.to(self.mask_token.dtype))
        tokens = torch.where(patch_mask.unsqueeze(-1), self.mask_token.expand_as(stem), stem)
        num = tokens.shape[1]
        positions = torch.arange(num - 1, -1, -1, device=tokens.device)  # 0 at the window end
        tf_index = torch.tensor(self.index[tf], device=tokens.device)
        tokens = tokens + self.position(positions) + self.timeframe(tf_index)
        return tokens, patch_mask, patch_valid
