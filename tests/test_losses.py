"""The two losses: masked reconstruction and cross-timeframe consistency."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model_config
from stage1_ds.config import DataConfig, LossConfig, LossKind, MaskingConfig, Phase
from stage1_ds.data.batch import Batch
from stage1_ds.data.windows import WindowDataset
from stage1_ds.model.losses import (
    aggregate_to_parent,
    cross_timeframe_terms,
    range_terms,
    stage1_loss,
    unscaled,
)
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model


def _batch(folder: Path, data: DataConfig, size: int = 16) -> Batch:
    windows = WindowDataset(folder, "train", data, seed=0)
    return MaskedWindows(windows, MaskingConfig(), 8, seed=0).batch(np.arange(size) * 101)


def _truth(batch: Batch) -> dict[str, torch.Tensor]:
    return {tf: w.features.clone() for tf, w in batch.windows.items()}


def _consistent(batch: Batch, seed: int) -> dict[str, torch.Tensor]:
    """Random finest predictions; each coarser one aggregates the finer where mapped, random elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    names = list(batch.windows)
    preds = {names[0]: torch.randn(batch.windows[names[0]].features.shape, generator=generator)}
    for fine, coarse in itertools.pairwise(names):
        window = batch.windows[coarse]
        aggregated, has = aggregate_to_parent(
            unscaled(preds[fine], batch.windows[fine]),
            batch.windows[fine].parent_index,
            window.features.shape[1],
        )
        scale = window.scale[:, None, None]
        random = torch.randn(window.features.shape, generator=generator)
        preds[coarse] = torch.where(has.unsqueeze(-1), aggregated / scale, random)
    return preds


def test_cross_timeframe_loss_is_exactly_zero_on_true_bars_of_a_real_sample(eurusd_2019: Path) -> None:
    batch = _batch(eurusd_2019, DataConfig(), size=32)
    terms = cross_timeframe_terms(_truth(batch), batch)
    assert set(terms) == {"m5", "m15", "m30", "h1", "h4"}
    for tf, term in terms.items():
        assert term.count > 0 and term.value.item() == 0.0, tf


def test_cross_timeframe_loss_is_zero_on_consistent_predictions(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    for term in cross_timeframe_terms(_consistent(batch, seed=1), batch).values():
        assert term.value.item() == 0.0


def test_cross_timeframe_loss_is_positive_with_gradients_to_both_sides(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    preds = {
        tf: (w.features + 0.1 * torch.randn_like(w.features)).requires_grad_()
        for tf, w in batch.windows.items()
    }
    terms = cross_timeframe_terms(preds, batch)
    assert all(t.value.item() > 0 for t in terms.values())
    terms["m5"].value.backward()
    mapped_m1 = batch.windows["m1"].parent_index >= 0
    assert preds["m1"].grad is not None and preds["m1"].grad[mapped_m1].abs().sum() > 0
    assert preds["m5"].grad is not None and preds["m5"].grad.abs().sum() > 0
    assert (preds["m1"].grad[~mapped_m1] == 0).all(), "bars whose map is -1 take no part"


def test_cross_timeframe_loss_ignores_bars_whose_map_is_minus_one(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    preds = _consistent(batch, seed=2)
    unmapped = batch.windows["m1"].parent_index < 0
    assert unmapped.any()
    preds["m1"][unmapped] += 5.0
    assert cross_timeframe_terms(preds, batch)["m5"].value.item() == 0.0


def test_reconstruction_counts_masked_bars_only(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    config = LossConfig(cross_timeframe_weight=0.0)
    preds = _truth(batch)
    assert stage1_loss(preds, batch, config).total.item() == 0.0
    for tf, window in batch.windows.items():
        assert window.mask is not None
        preds[tf][~window.mask] += 3.0  # visible bars: not part of the loss
    assert stage1_loss(preds, batch, config).total.item() == 0.0
    preds["m15"][batch.windows["m15"].mask] += 1.0
    out = stage1_loss(preds, batch, config)
    assert out.components["reconstruction/m15"].item() == 1.0
    assert abs(out.total.item() - 1.0 / 6) < 1e-6  # equal weights over six timeframes


def test_huber_and_weights_and_component_names(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    preds = {tf: w.features + 4.0 for tf, w in batch.windows.items()}
    config = LossConfig(kind=LossKind.HUBER, huber_delta=1.0, timeframe_weights={"m1": 3.0})
    out = stage1_loss(preds, batch, config)
    assert abs(out.components["reconstruction/m1"].item() - 3.5) < 1e-6  # delta * (|e| - delta / 2)
    assert {"reconstruction", "cross", "cross/h4", "reconstruction/h4"} <= set(out.components)
    expected = out.components["reconstruction"] + 0.1 * out.components["cross"]
    assert torch.allclose(out.total, expected)


def test_the_backward_graph_is_the_same_whatever_a_batch_drops(synthetic_small: Path) -> None:
    """What two ranks need for ZeRO-2 to reduce the same gradient buckets: every trainable parameter gets a
    gradient, in the same order, whether or not the batch holds a timeframe."""
    model = Stage1Model(tiny_model_config(), DataConfig(window_bars=32))
    model.set_phase(Phase.FULL)
    order: list[str] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(lambda _, name=name: order.append(name))

    def gradient_order(keep: dict[str, float]) -> list[str]:
        batch = _batch(synthetic_small, DataConfig(window_bars=32, keep_probability=keep), size=4)
        order.clear()
        model.zero_grad(set_to_none=True)
        stage1_loss(model(batch).reconstruction, batch, LossConfig()).total.backward()
        return list(order)

    everything = gradient_order({})
    assert len(everything) == sum(p.requires_grad for p in model.parameters())
    assert gradient_order({"h4": 0.0, "m30": 0.0}) == everything


def test_the_range_term_is_zero_on_true_bars_finite_on_flat_ones_and_positive_on_wrong_sizes(
    synthetic_small: Path,
) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    truth = _truth(batch)
    for term in range_terms(truth, batch).values():
        assert term.value.item() == 0.0
    flat = {tf: v.clone() for tf, v in truth.items()}
    for v in flat.values():
        v[..., 1] = v[..., 2] = v[..., 0]  # every bar flat: range 0
    flat_terms = range_terms(flat, batch)
    assert all(torch.isfinite(t.value) and t.value > 0 for t in flat_terms.values() if t.count > 0)
    wider = {tf: v.clone() for tf, v in truth.items()}
    for v in wider.values():
        v[..., 1] += 1.0  # every high one feature unit higher
    assert all(t.value > 0 for t in range_terms(wider, batch).values() if t.count > 0)


def test_the_range_term_reaches_high_and_low_of_masked_bars_only(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    preds = {tf: (v + 0.3 * torch.randn_like(v)).requires_grad_() for tf, v in _truth(batch).items()}
    total = sum(t.value for t in range_terms(preds, batch).values())
    total.backward()
    for tf, pred in preds.items():
        window = batch.windows[tf]
        assert pred.grad is not None
        hidden = (window.mask & window.valid).unsqueeze(-1)
        assert (pred.grad[..., [0, 3]] == 0).all(), "open and close get no gradient from the range"
        assert (pred.grad[..., 1:3] * ~hidden == 0).all(), "visible bars get no gradient"
        assert (pred.grad[..., 1:3].abs() * hidden).sum() > 0, tf


def test_a_range_weight_of_zero_is_todays_objective_and_a_weight_adds_the_range_term(
    synthetic_small: Path,
) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    preds = {tf: v + 0.3 * torch.randn_like(v) for tf, v in _truth(batch).items()}
    today = stage1_loss(preds, batch, LossConfig())
    assert "range" not in today.components
    assert today.total.item() == (today.components["reconstruction"] + 0.1 * today.components["cross"]).item()
    ranged = stage1_loss(preds, batch, LossConfig(range_weight=0.5))
    assert ranged.components["range"] > 0 and {"range/m1", "range/h4"} <= set(ranged.components)
    assert ranged.total.item() == pytest.approx(today.total.item() + 0.5 * ranged.components["range"].item())


def test_a_reconstruction_whose_high_and_low_cross_is_pushed_towards_a_positive_range(
    synthetic_small: Path,
) -> None:
    batch = _batch(synthetic_small, DataConfig(window_bars=32))
    preds = {tf: v.clone() for tf, v in _truth(batch).items()}
    for v in preds.values():
        v[..., 1], v[..., 2] = v[..., 2] - 0.5, v[..., 1] + 0.5  # high below low
        v.requires_grad_()
    sum(t.value for t in range_terms(preds, batch).values()).backward()
    for tf, pred in preds.items():
        hidden = batch.windows[tf].mask & batch.windows[tf].valid
        assert pred.grad is not None and hidden.any()
        assert (pred.grad[..., 1][hidden] < 0).all() and (pred.grad[..., 2][hidden] > 0).all(), tf
