"""The Stage-1 objective: masked reconstruction plus cross-timeframe consistency.

Reconstruction: mean squared (or Huber) error on masked bars of kept timeframes, per timeframe, then a
weighted mean over the timeframes that have masked bars.

Cross-timeframe consistency: for each consecutive pair (finer f, coarser c) of the batch, the model's
reconstructed f bars of each c bucket are aggregated (first open, max high, min low, last close) through
``parent_index`` and compared with the model's reconstruction of the c bar. Both sides are first brought
to the common unscaled space ``log(price / P_ref)`` (times each timeframe's power-of-two scale, exact), and
the difference is measured in units of c's scale. It is exactly zero on true bars and on consistent
predictions, and its gradient reaches both sides.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stage1_ds.config import LossConfig, LossKind
from stage1_ds.data.batch import Batch, TimeframeWindow


@dataclass
class LossOutput:
    """``total`` to optimise; ``components`` for logging: ``reconstruction``, ``cross``,
    ``reconstruction/<tf>`` and ``cross/<coarser tf>`` (the pair ending at that timeframe)."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]


def reconstruction_error(pred: torch.Tensor, target: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Elementwise error (B, L, F)."""
    if config.kind == LossKind.HUBER:
        return F.huber_loss(pred, target, reduction="none", delta=config.huber_delta)
    return (pred - target) ** 2


def aggregate_to_parent(
    fine: torch.Tensor, parent: torch.Tensor, coarse_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """First open, max high, min low, last close of finer bars per coarser position.

    Args:
        fine: (B, Lf, 4) values in a space where aggregation is exact (log price relative to P_ref).
        parent: (B, Lf) int64 coarser position of each finer bar, -1 for none.
        coarse_len: Lc.

    Returns:
        aggregated (B, Lc, 4) and has_children (B, Lc) bool; rows without children hold zeros.
    """
    b, lf, _ = fine.shape
    has = parent >= 0
    index = torch.where(has, parent, coarse_len)  # the extra slot Lc collects bars with no parent
    position = torch.arange(lf, device=fine.device).expand(b, lf)

    def reduce(values: torch.Tensor, how: str, fill: float) -> torch.Tensor:
        out = torch.full((b, coarse_len + 1), fill, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(1, index, values, reduce=how, include_self=True)[:, :coarse_len]

    big = float(lf)
    first = reduce(position.to(fine.dtype), "amin", big).long().clamp(max=lf - 1)
    last = reduce(position.to(fine.dtype), "amax", -1.0).long().clamp(min=0)
    count = torch.zeros((b, coarse_len + 1), device=fine.device).scatter_add(1, index, has.float())
    has_children = count[:, :coarse_len] > 0
    aggregated = torch.stack(
        [
            fine[..., 0].gather(1, first),
            reduce(fine[..., 1], "amax", float("-inf")),
            reduce(fine[..., 2], "amin", float("inf")),
            fine[..., 3].gather(1, last),
        ],
        dim=-1,
    )
    aggregated = torch.where(has_children.unsqueeze(-1), aggregated, torch.zeros_like(aggregated))
    return aggregated, has_children


def unscaled(values: torch.Tensor, window: TimeframeWindow) -> torch.Tensor:
    """Features (B, L, F) to ``log(price / P_ref)``: multiply by the timeframe's power-of-two scale."""
    return values * window.scale.to(values.dtype)[:, None, None]


def cross_timeframe_terms(predictions: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
    """Per coarser timeframe c, the mean squared inconsistency of the pair (finer, c), in units of c's scale.

    Pairs with no coarser bar wholly covered by the finer window are left out.
    """
    names = [tf for tf in batch.windows if tf in predictions]
    terms = {}
    for fine, coarse in itertools.pairwise(names):
        parent = batch.windows[fine].parent_index
        if parent is None:
            continue
        c_window = batch.windows[coarse]
        coarse_pred = predictions[coarse]
        aggregated, has = aggregate_to_parent(
            unscaled(predictions[fine], batch.windows[fine]), parent, coarse_pred.shape[1]
        )
        if not bool(has.any()):
            continue
        scale = c_window.scale.to(coarse_pred.dtype)[:, None, None]
        difference = (aggregated / scale - coarse_pred) * has.unsqueeze(-1)
        terms[coarse] = difference.pow(2).sum() / (has.sum() * coarse_pred.shape[-1])
    return terms


def stage1_loss(predictions: dict[str, torch.Tensor], batch: Batch, config: LossConfig) -> LossOutput:
    """The total loss and its components (see the module docstring), in fp32 whatever the model's dtype."""
    predictions = {tf: pred.float() for tf, pred in predictions.items()}
    components: dict[str, torch.Tensor] = {}
    weighted, weight_sum = [], 0.0
    for tf, pred in predictions.items():
        window = batch.windows[tf]
        if window.mask is None:
            raise ValueError(f"batch window {tf} has no mask; wrap the dataset with MaskedWindows")
        selected = (window.mask & window.valid).unsqueeze(-1).to(pred.dtype)  # (B, L, 1)
        count = selected.sum() * pred.shape[-1]
        if count == 0:
            continue
        error = reconstruction_error(pred, window.features.to(pred.dtype), config)
        components[f"reconstruction/{tf}"] = (error * selected).sum() / count
        weight = config.timeframe_weights.get(tf, 1.0)
        weighted.append(weight * components[f"reconstruction/{tf}"])
        weight_sum += weight
    anchor = next(iter(predictions.values()))
    zero = anchor.sum() * 0.0  # keeps the graph connected when a term is empty
    reconstruction = torch.stack(weighted).sum() / weight_sum if weighted and weight_sum > 0 else zero
    cross_terms = cross_timeframe_terms(predictions, batch)
    cross = torch.stack(list(cross_terms.values())).mean() if cross_terms else zero
    components.update({f"cross/{tf}": value for tf, value in cross_terms.items()})
    components["reconstruction"] = reconstruction
    components["cross"] = cross
    total = reconstruction + config.cross_timeframe_weight * cross
    return LossOutput(total=total, components=components)
