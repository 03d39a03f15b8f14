"""An honest task: no masked value reaches the model, and in `time` mode no masked bar can be read off
another timeframe; masking modes, their mixture, and the random streams behind them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import encoder_inputs, tiny_model_config
from stage1_ds.config import DataConfig, MaskingConfig, MaskingMode
from stage1_ds.data.batch import Batch
from stage1_ds.data.streams import COLUMNS, STRIDE, Stream, uniform_hash
from stage1_ds.data.windows import WindowDataset
from stage1_ds.model.baselines import (
    cross_timeframe_rules,
    last_close,
    linear_interpolation,
    recoverable,
)
from stage1_ds.model.masking import MODES, MaskedWindows, span_mask
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.timeframes import TIMEFRAMES, Timeframe

BASELINES = {
    "linear_interpolation": linear_interpolation,
    "last_close": last_close,
    "cross_timeframe_rules": cross_timeframe_rules,
}


def _masked(folder: Path, mode: str, data: DataConfig, ids: np.ndarray, seed: int = 0) -> Batch:
    windows = WindowDataset(folder, "train", data, seed=seed)
    return MaskedWindows(windows, MaskingConfig(modes={mode: 1.0}), 8, seed=seed).batch(ids)


@pytest.mark.parametrize("mode", [m.value for m in MaskingMode])
def test_changing_masked_prices_changes_no_input_but_the_targets(
    eurusd_2019: Path, tmp_path: Path, mode: str
) -> None:
    """Raise the raw prices of every masked bar of a sample (the anchor bar included, when it is masked):
    everything the encoder receives stays bit-identical, the targets of the masked bars move."""
    folder = tmp_path / "data"
    shutil.copytree(eurusd_2019, folder)
    data = DataConfig(window_bars=32)
    model = Stage1Model(tiny_model_config(), data).eval()
    dataset = WindowDataset(folder, "train", data)
    anchors_masked = windows_masked = 0
    for sample in np.linspace(0, len(dataset) - 1, 6).astype(np.int64):
        ids = np.array([sample])
        before = _masked(folder, mode, data, ids)
        inputs = encoder_inputs(model, before)
        anchors_masked += int(before.windows["m1"].mask[0, -1])  # type: ignore[index]
        arrays = {}
        for tf in TIMEFRAMES:
            rows = dataset.rows(ids, tf)[before.windows[tf.value].mask.numpy()]  # type: ignore[union-attr]
            for name, shift in (("ohlc", 1.01), ("log_ohlc", np.log(1.01))):
                array = np.load(folder / "bars" / f"{tf.value}_{name}.npy", mmap_mode="r+")
                arrays[tf, name] = (array, rows, array[rows].copy())
                array[rows] = array[rows] * shift if name == "ohlc" else array[rows] + shift
                array.flush()
        after = _masked(folder, mode, data, ids)
        for original, changed in zip(inputs, encoder_inputs(model, after), strict=True):
            assert torch.equal(original, changed), f"{mode}: an encoder input moved with a masked price"
        assert torch.equal(before.reference_price, after.reference_price)
        for name, window in before.windows.items():
            mask = window.mask
            assert mask is not None and torch.equal(mask, after.windows[name].mask)  # type: ignore[arg-type]
            assert torch.equal(window.features[~mask], after.windows[name].features[~mask])
            if mask.any():  # the targets of the masked bars move with their prices
                windows_masked += 1
                assert not torch.equal(window.features[mask], after.windows[name].features[mask])
        for array, rows, values in arrays.values():  # put the folder back for the next sample
            array[rows] = values
            array.flush()
    assert windows_masked >= 6, "each sample masks bars of some timeframe"
    if mode == "horizon":
        assert anchors_masked == 6, "horizon masking always hides the anchor bar"


def test_per_mode_masked_share_and_bars_other_timeframes_give_away(eurusd_2019: Path) -> None:
    """On real EURUSD windows (six timeframes x 128 bars): `spans` masks leave many masked bars exactly
    recomputable from other timeframes' visible bars; `time` masks leave none, and mask every timeframe
    near the ratio without ever hiding a window whole."""
    ids = np.random.default_rng(0).choice(
        len(WindowDataset(eurusd_2019, "train", DataConfig())), 256, replace=False
    )
    report = {}
    for mode in MaskingMode:
        batch = _masked(eurusd_2019, mode.value, DataConfig(), ids)
        exact = recoverable(batch)
        assert batch.mask_mode is not None and (batch.mask_mode == MODES.index(mode)).all(), "no fallback"
        report[mode.value] = {
            tf: (
                float(w.mask.float().mean()),  # type: ignore[union-attr]
                float(exact[tf].sum() / max(int(w.mask.sum()), 1)),  # type: ignore[union-attr]
                float(w.mask.all(dim=1).float().mean()),  # type: ignore[union-attr]
            )
            for tf, w in batch.windows.items()
        }
    for mode, row in report.items():  # shown with -s; the figures are quoted in docs/quality.md
        print(
            mode, {tf: f"masked {m:.2f} recoverable {r:.3f} whole {w:.2f}" for tf, (m, r, w) in row.items()}
        )
    assert all(r > 0.05 for tf, (_, r, _) in report["spans"].items() if tf != "m1"), "the shortcut exists"
    for tf, (masked, recovered, whole) in report["time"].items():
        assert recovered == 0.0 and whole == 0.0, tf
        assert 0.15 <= masked <= 0.5, (tf, masked)
    assert report["horizon"]["m1"][0] > 0.4 and report["horizon"]["h4"][0] < 0.05


def test_horizon_masks_exactly_the_bars_overlapping_the_last_minutes(synthetic_small: Path) -> None:
    windows = WindowDataset(synthetic_small, "train", DataConfig(window_bars=32))
    config = MaskingConfig(modes={"horizon": 1.0}, horizon_minutes=45)
    batch = MaskedWindows(windows, config, 8, seed=1).batch(np.arange(16) * 31)
    cutoff = batch.anchor_time - 45 * 60
    for name, window in batch.windows.items():
        end = window.start_time + Timeframe(name).seconds
        assert torch.equal(window.mask, end > cutoff[:, None]), name  # type: ignore[arg-type]


def test_modes_are_mixed_by_weight_and_a_function_of_the_sample(synthetic_small: Path) -> None:
    windows = WindowDataset(synthetic_small, "train", DataConfig(window_bars=32))
    config = MaskingConfig(modes={"spans": 1.0, "time": 2.0, "horizon": 1.0})
    ids = np.arange(2000)
    batch = MaskedWindows(windows, config, 8, seed=3).batch(ids)
    assert batch.mask_mode is not None
    shares = torch.bincount(batch.mask_mode, minlength=3).float() / len(ids)
    torch.testing.assert_close(shares, torch.tensor([0.25, 0.5, 0.25]), atol=0.04, rtol=0)
    again = MaskedWindows(windows, config, 8, seed=3).batch(ids[::-1].copy())
    assert torch.equal(again.mask_mode.flip(0), batch.mask_mode)  # type: ignore[union-attr]
    for name, window in batch.windows.items():
        assert torch.equal(again.windows[name].mask.flip(0), window.mask)  # type: ignore[union-attr]
    other_seed = MaskedWindows(windows, config, 8, seed=4).batch(ids)
    assert not torch.equal(other_seed.mask_mode, batch.mask_mode)  # type: ignore[arg-type]


def test_spans_mode_masks_an_exact_share_in_spans() -> None:
    mask = span_mask(16, 0.3, 2.0, seed=0, ids=np.arange(500), stream=Stream.SPANS)
    assert (mask.sum(1) == 5).all()
    runs = (np.diff(mask.astype(int), axis=1) == 1).sum(1) + mask[:, 0]
    assert runs.mean() < 3 and runs.min() >= 1


def test_the_random_streams_of_keeping_mode_and_layout_are_disjoint() -> None:
    """Each decision reads numbers of its own: (keep m1, mode, spans of m1, time spans of m1) share none."""
    ids = np.arange(20000)
    draws = {
        "keep m1": uniform_hash(0, ids, Stream.KEEP),
        "keep m5": uniform_hash(0, ids, Stream.KEEP + 1),
        "mode": uniform_hash(0, ids, Stream.MODE),
        "spans m1": uniform_hash(0, ids, Stream.SPANS),
        "spans m1 gaps": uniform_hash(0, ids, Stream.SPANS + COLUMNS),
        "spans m5": uniform_hash(0, ids, Stream.SPANS + STRIDE),
        "time m1": uniform_hash(0, ids, Stream.TIME),
    }
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert abs(np.corrcoef(draws[a], draws[b])[0, 1]) < 0.03, (a, b)


def test_cross_timeframe_rules_recover_what_other_timeframes_give_away(eurusd_2019: Path) -> None:
    ids = np.random.default_rng(1).choice(
        len(WindowDataset(eurusd_2019, "train", DataConfig())), 64, replace=False
    )
    batch = _masked(eurusd_2019, "spans", DataConfig(), ids)
    rules, interpolation = cross_timeframe_rules(batch), linear_interpolation(batch)
    exact = recoverable(batch)
    for tf, window in batch.windows.items():
        mask = window.mask & window.valid  # type: ignore[operator]
        given = torch.from_numpy(exact[tf])
        torch.testing.assert_close(rules[tf][given], window.features[given], atol=1e-5, rtol=0)
        pred = rules[tf][mask]
        assert (pred[:, 1] >= torch.maximum(pred[:, 0], pred[:, 3]) - 1e-6).all(), "high above open and close"
        assert (pred[:, 2] <= torch.minimum(pred[:, 0], pred[:, 3]) + 1e-6).all(), "low below open and close"
        if tf != "m1":
            rules_error = (rules[tf][mask] - window.features[mask]).pow(2).mean()
            interpolation_error = (interpolation[tf][mask] - window.features[mask]).pow(2).mean()
            assert rules_error < interpolation_error, tf


@pytest.mark.parametrize(
    ("mode", "channels"), [*((m.value, ["ohlc"]) for m in MaskingMode), ("time", ["ohlc", "volume"])]
)
def test_baselines_read_no_masked_value(synthetic_small: Path, mode: str, channels: list[str]) -> None:
    """A baseline sees what the model sees: changing the true values of masked bars changes none of its
    predictions (in `horizon` mode with 32-bar windows the whole m1 window is masked)."""
    batch = _masked(synthetic_small, mode, DataConfig(window_bars=32, channels=channels), np.arange(24) * 13)
    before = {name: fn(batch) for name, fn in BASELINES.items()}
    for window in batch.windows.values():
        window.features[window.mask] += 5.0  # type: ignore[index]
    for name, fn in BASELINES.items():
        after = fn(batch)
        for tf, window in batch.windows.items():
            masked = window.mask & window.valid  # type: ignore[operator]
            assert torch.equal(before[name][tf][masked], after[tf][masked]), (name, tf)


def test_rules_give_an_only_childs_volume_as_they_give_its_prices(synthetic_small: Path) -> None:
    """A masked finer bar that is the only finer bar of a known coarser bar is that bar, volume included
    (h1 16:00-17:00 UTC on a Friday is the only h1 bar of its h4 bar in the synthetic market)."""
    data = DataConfig(window_bars=32, channels=["ohlc", "volume"])
    batch = _masked(synthetic_small, "spans", data, np.arange(0, 12800, 25))
    rules, exact = cross_timeframe_rules(batch), recoverable(batch)
    only_children = 0
    for tf, window in batch.windows.items():
        given = torch.from_numpy(exact[tf])
        torch.testing.assert_close(rules[tf][given], window.features[given], atol=1e-5, rtol=0)
        if window.parent_index is not None:
            parent = window.parent_index
            siblings = (parent[:, :, None] == parent[:, None, :]) & (parent >= 0)[:, :, None]
            only_children += int((given & (siblings.sum(-1) == 1)).sum())
    assert only_children > 0, "the batch has masked only children that other timeframes give away"
