"""The Stage-1 objective: masked reconstruction plus cross-timeframe consistency.

Reconstruction: mean squared (or Huber) error on masked bars of kept timeframes, per timeframe, then a
weighted mean over the timeframes that have masked bars.

Cross-timeframe consistency: for each consecutive pair (finer f, coarser c) of the batch, the model's
reconstructed f bars of each c bucket are aggregated (first open, max high, min low, last close) through
``parent_index`` and compared with the model's reconstruction of the c bar. Both sides are first brought
to the common unscaled space ``log(price / P_ref)`` (times each timeframe's power-of-two scale, exact), and
the difference is measured in units of c's scale. With volume, the finer volumes are summed and compared
with the coarser volume the same way (in units of the sample's reference volume). It is exactly zero on
true bars and on consistent predictions, and its gradient reaches both sides.

Range (``loss.range_weight`` > 0): the squared error of each masked bar's log range, ``log(floor + high -
low)`` in feature units, between the reconstruction and the true bar (`range_terms`). The OHLC error of a
masked bar is dominated by where its prices went, which is mostly unforecastable direction; how LARGE the
bar was (its range) is what a volatility forecaster can learn, and this term gives it its own gradient.
Both ranges go through the same smooth positive part (`soft_range`), so a reconstruction whose high and
low cross still gets a gradient towards a positive range, and `RANGE_FLOOR` keeps flat bars (range 0)
finite.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stage1_ds.config import LossConfig, LossKind
from stage1_ds.data.batch import Batch, TimeframeWindow
from stage1_ds.data.features import NUM_FEATURES, VOLUME

#: Added to a bar's range (feature units) before its log: a sixth of a median bar's range (0.31-0.52 per
#: timeframe on EURUSD train windows, measured), so flat bars (0.5% of its 1-minute bars) stay finite and
#: ranges far below the usual count about alike.
RANGE_FLOOR = 0.05
_HIGH, _LOW = 1, 2


@dataclass
class LossOutput:
    """``total`` to optimise; ``components`` for logging (``reconstruction``, ``cross``,
    ``reconstruction/<tf>`` and ``cross/<coarser tf>``, the pair ending at that timeframe; with volume also
    ``reconstruction/volume`` and ``cross/volume``, `volume_terms`; with a range weight ``range`` and
    ``range/<tf>``, `range_terms`), each the mean
    over the values it covers, and ``counts``: how many values each covers (0: the term is empty in this
    batch and stands at 0; leave it out of averages)."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]


@dataclass
class Term:
    """A loss term: the mean over the values it covers (0 when it covers none), and how many it covers."""

    value: torch.Tensor
    count: torch.Tensor


def reconstruction_error(pred: torch.Tensor, target: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Elementwise error (B, L, F)."""
    if config.kind == LossKind.HUBER:
        return F.huber_loss(pred, target, reduction="none", delta=config.huber_delta)
    return (pred - target) ** 2


def aggregate_to_parent(
    fine: torch.Tensor, parent: torch.Tensor, coarse_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """First open, max high, min low, last close (and summed volume) of finer bars per coarser position.

    Args:
        fine: (B, Lf, F) values in a space where aggregation is exact (log price relative to P_ref, and
            volume in units of the sample's reference volume); F is 4, or 5 with volume.
        parent: (B, Lf) int64 coarser position of each finer bar, -1 for none.
        coarse_len: Lc.

    Returns:
        aggregated (B, Lc, F) and has_children (B, Lc) bool; rows without children hold zeros.
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
    columns = [
        fine[..., 0].gather(1, first),
        reduce(fine[..., 1], "amax", float("-inf")),
        reduce(fine[..., 2], "amin", float("inf")),
        fine[..., 3].gather(1, last),
    ]
    if fine.shape[-1] > VOLUME:  # volumes add up
        summed = torch.zeros((b, coarse_len + 1), dtype=fine.dtype, device=fine.device)
        columns.append(summed.scatter_add(1, index, fine[..., VOLUME] * has)[:, :coarse_len])
    aggregated = torch.stack(columns, dim=-1)
    aggregated = torch.where(has_children.unsqueeze(-1), aggregated, torch.zeros_like(aggregated))
    return aggregated, has_children


def unscaled(values: torch.Tensor, window: TimeframeWindow) -> torch.Tensor:
    """Features (B, L, F) to the space where aggregation is exact: prices times the timeframe's power-of-two
    scale (``log(price / P_ref)``), volume times its power-of-two scale (units of the reference volume)."""
    return values * _scales(window, values)


def _scales(window: TimeframeWindow, values: torch.Tensor) -> torch.Tensor:
    """(B, 1, F) each feature's scale in this timeframe."""
    price = window.scale.to(values.dtype)[:, None, None].expand(-1, 1, NUM_FEATURES)
    if values.shape[-1] == NUM_FEATURES:
        return price
    assert window.volume_scale is not None, "a volume feature needs the window's volume scale"
    return torch.cat([price, window.volume_scale.to(values.dtype)[:, None, None]], dim=-1)


def cross_timeframe_differences(
    predictions: dict[str, torch.Tensor], batch: Batch
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per coarser timeframe c of each consecutive pair (finer, c): the (B, Lc, F) inconsistency, in units
    of c's scale (zero where the c bar is not wholly covered by the finer window), and the (B, Lc) bool of
    the covered c bars."""
    names = [tf for tf in batch.windows if tf in predictions]
    out = {}
    for fine, coarse in itertools.pairwise(names):
        parent = batch.windows[fine].parent_index
        if parent is None:
            continue
        coarse_pred = predictions[coarse]
        aggregated, has = aggregate_to_parent(
            unscaled(predictions[fine], batch.windows[fine]), parent, coarse_pred.shape[1]
        )
        scale = _scales(batch.windows[coarse], coarse_pred)
        out[coarse] = ((aggregated / scale - coarse_pred) * has.unsqueeze(-1), has)
    return out


def _cross_terms(differences: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Term]:
    terms = {}
    for coarse, (difference, has) in differences.items():
        count = has.sum() * difference.shape[-1]
        terms[coarse] = Term(difference.pow(2).sum() / count.clamp(min=1), count)
    return terms


def cross_timeframe_terms(predictions: dict[str, torch.Tensor], batch: Batch) -> dict[str, Term]:
    """Per coarser timeframe c of each consecutive pair (finer, c): the mean squared inconsistency, in units
    of c's scale, over the c bars wholly covered by the finer window (count 0 when none is)."""
    return _cross_terms(cross_timeframe_differences(predictions, batch))


def volume_terms(
    predictions: dict[str, torch.Tensor],
    batch: Batch,
    differences: dict[str, tuple[torch.Tensor, torch.Tensor]],
    config: LossConfig,
) -> dict[str, Term]:
    """The volume feature's share, for monitoring (already inside the reconstruction and cross terms):
    ``reconstruction/volume``, its mean error over the masked bars of every timeframe, and ``cross/volume``,
    its mean squared inconsistency over every covered coarser bar. Empty without volume."""
    if not predictions or next(iter(predictions.values())).shape[-1] <= VOLUME:
        return {}
    errors, counts = [], []
    for tf, pred in predictions.items():
        window = batch.windows[tf]
        assert window.mask is not None
        selected = (window.mask & window.valid).to(pred.dtype)
        target = window.features[..., VOLUME].to(pred.dtype)
        errors.append((reconstruction_error(pred[..., VOLUME], target, config) * selected).sum())
        counts.append(selected.sum())
    error, count = torch.stack(errors).sum(), torch.stack(counts).sum()
    terms = {"reconstruction/volume": Term(error / count.clamp(min=1), count)}
    if differences:
        squared = torch.stack([d[..., VOLUME].pow(2).sum() for d, _ in differences.values()]).sum()
        covered = torch.stack([has.sum() for _, has in differences.values()]).sum()
        terms["cross/volume"] = Term(squared / covered.clamp(min=1), covered)
    return terms


def reconstruction_terms(
    predictions: dict[str, torch.Tensor], batch: Batch, config: LossConfig
) -> dict[str, Term]:
    """Per timeframe: the mean reconstruction error over its masked bars of kept timeframes."""
    terms = {}
    for tf, pred in predictions.items():
        window = batch.windows[tf]
        if window.mask is None:
            raise ValueError(f"batch window {tf} has no mask; wrap the dataset with MaskedWindows")
        selected = (window.mask & window.valid).unsqueeze(-1).to(pred.dtype)  # (B, L, 1)
        count = selected.sum() * pred.shape[-1]
        error = reconstruction_error(pred, window.features.to(pred.dtype), config)
        terms[tf] = Term((error * selected).sum() / count.clamp(min=1), count)
    return terms


def soft_range(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """A smooth positive part of ``high - low``: about ``high - low`` above `RANGE_FLOOR`, about
    ``RANGE_FLOOR x log 2`` where they cross, with a gradient everywhere."""
    return RANGE_FLOOR * F.softplus((high - low) / RANGE_FLOOR)


def log_range(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``log(RANGE_FLOOR + soft_range(high, low))`` of bars in feature units, the same function for true
    bars and reconstructions (so a reconstruction equal to the truth has error 0)."""
    return torch.log(RANGE_FLOOR + soft_range(high, low))


def range_terms(predictions: dict[str, torch.Tensor], batch: Batch) -> dict[str, Term]:
    """Per timeframe: the mean squared error of the log range (`log_range`) over its masked bars of kept
    timeframes (count 0 when there are none)."""
    terms = {}
    for tf, pred in predictions.items():
        window = batch.windows[tf]
        assert window.mask is not None
        selected = (window.mask & window.valid).to(pred.dtype)  # (B, L)
        truth = window.features.to(pred.dtype)
        error = (
            log_range(pred[..., _HIGH], pred[..., _LOW]) - log_range(truth[..., _HIGH], truth[..., _LOW])
        ) ** 2
        count = selected.sum()
        terms[tf] = Term((error * selected).sum() / count.clamp(min=1), count)
    return terms


def future_term(predicted: torch.Tensor, batch: Batch) -> Term:
    """The mean squared error of the future-size head's (B, H) predictions against the batch's known
    targets (`Batch.future_size`, NaN where unknown; count 0 when none is known: the term is still
    computed, so every rank builds the same graph)."""
    assert batch.future_size is not None, "the batch carries no future-size targets (data.future_minutes)"
    target = batch.future_size.to(predicted.device, predicted.dtype)
    known = torch.isfinite(target)
    error = (predicted - torch.where(known, target, predicted.detach())) ** 2
    count = known.sum()
    return Term((error * known).sum() / count.clamp(min=1), count)


def _weighted_mean(terms: list[Term], weights: list[float]) -> Term:
    """The mean of the non-empty terms, weighted; 0 (count 0) when every term is empty."""
    present = [(t.count > 0).to(t.value.dtype) * w for t, w in zip(terms, weights, strict=True)]
    total_weight = torch.stack(present).sum()
    value = torch.stack([t.value * p for t, p in zip(terms, present, strict=True)]).sum()
    return Term(value / total_weight.clamp(min=1e-12), torch.stack([t.count for t in terms]).sum())


def stage1_loss(
    predictions: dict[str, torch.Tensor],
    batch: Batch,
    config: LossConfig,
    future_size: torch.Tensor | None = None,
) -> LossOutput:
    """The total loss and its components (see the module docstring), in fp32 whatever the model's dtype;
    ``future_size``: the model's future-size predictions (`Stage1Output.future_size`), which
    ``config.future_weight`` > 0 needs.

    The same operations run whatever the batch holds (an empty term is computed and weighted by zero, not
    skipped), so every rank builds the same backward graph: ZeRO-2 fills its gradient buckets in the order
    gradients arrive, and a rank whose samples all dropped a timeframe would otherwise reduce different
    buckets than the others (gloo aborts, NCCL hangs or sums misaligned buffers).
    """
    predictions = {tf: pred.float() for tf, pred in predictions.items()}
    recon = reconstruction_terms(predictions, batch, config)
    differences = cross_timeframe_differences(predictions, batch)
    cross_terms = _cross_terms(differences)
    reconstruction = _weighted_mean(
        list(recon.values()), [config.timeframe_weights.get(tf, 1.0) for tf in recon]
    )
    if cross_terms:
        cross = _weighted_mean(list(cross_terms.values()), [1.0] * len(cross_terms))
    else:  # one timeframe: no pair
        cross = Term(torch.zeros((), device=reconstruction.value.device), torch.zeros(()))
    terms = {
        **{f"reconstruction/{tf}": t for tf, t in recon.items()},
        **{f"cross/{tf}": t for tf, t in cross_terms.items()},
        "reconstruction": reconstruction,
        "cross": cross,
        **volume_terms(predictions, batch, differences, config),
    }
    total = reconstruction.value + config.cross_timeframe_weight * cross.value
    if config.range_weight > 0:
        ranges = range_terms(predictions, batch)
        size = _weighted_mean(list(ranges.values()), [1.0] * len(ranges))
        terms.update({f"range/{tf}": t for tf, t in ranges.items()}, range=size)
        total = total + config.range_weight * size.value
    if config.future_weight > 0:
        assert future_size is not None, "model.loss.future_weight needs the model's future-size head"
        terms["future"] = future_term(future_size.float(), batch)
        total = total + config.future_weight * terms["future"].value
    return LossOutput(
        total=total,
        components={k: t.value for k, t in terms.items()},
        counts={k: t.count for k, t in terms.items()},
    )
