"""The future-size objective (issue 29, candidate b): targets from the bars after the anchor, inside the split
only; the head and its loss term; off by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model_config, tiny_train_config
from stage1_ds.config import TARGET_COVERAGE, ConfigError, DataConfig, MaskingConfig, Phase, load_config
from stage1_ds.data.store import load_prepared
from stage1_ds.data.windows import FUTURE_FLOOR, WindowDataset
from stage1_ds.evaluation.probe import probe
from stage1_ds.export import convert
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.timeframes import BASE
from stage1_ds.train import loop
from stage1_ds.train.param_groups import group_name

HORIZONS = [5, 60]


def _windows(folder: Path, split: str = "train") -> WindowDataset:
    return WindowDataset(folder, split, DataConfig(window_bars=16, future_minutes=HORIZONS), seed=0)


def test_targets_are_the_rms_range_of_the_bars_after_the_anchor_by_hand(synthetic_small: Path) -> None:
    """Each target read off the prepared 1-minute bars: those that start in [t, t + h) of the same
    instrument, after every bar of the window."""
    windows, data = _windows(synthetic_small), load_prepared(synthetic_small)
    ids = np.arange(0, len(windows), max(1, len(windows) // 40))
    batch = windows.batch(ids)
    assert batch.future_size is not None and batch.future_size.shape == (len(ids), len(HORIZONS))
    begin, end = data.rows("SYNTH", BASE)
    start = np.asarray(data.bars[BASE].start[begin:end])
    log_ohlc = np.asarray(data.bars[BASE].log_ohlc[begin:end])
    scale = data.scale("SYNTH", BASE)
    split_end = data.split("SYNTH", "train").end
    known = 0
    for k, t in enumerate(batch.anchor_time.numpy()):
        assert int(batch.windows["m1"].start_time[k].max()) < t, "the window ends before the targets begin"
        for j, minutes in enumerate(HORIZONS):
            ahead = (start >= t) & (start < t + 60 * minutes)
            got = float(batch.future_size[k, j])
            if t + 60 * minutes > split_end or ahead.sum() < TARGET_COVERAGE * minutes:
                assert np.isnan(got)
                continue
            ranges = (log_ohlc[ahead, 1] - log_ohlc[ahead, 2]) / scale
            assert got == pytest.approx(np.log(FUTURE_FLOOR + np.sqrt(np.mean(ranges**2))), rel=1e-5)
            known += 1
    assert known > len(ids), "most targets are known"


def test_no_target_reads_past_the_end_of_its_split(synthetic_small: Path) -> None:
    """The last anchors of train: a horizon that would pass the split's end is unknown, never read from
    the val split's bars."""
    windows = _windows(synthetic_small)
    last = np.arange(len(windows) - 90, len(windows))
    batch = windows.batch(last)
    split_end = load_prepared(synthetic_small).split("SYNTH", "train").end
    assert batch.future_size is not None
    for j, minutes in enumerate(HORIZONS):
        passes = batch.anchor_time.numpy() + 60 * minutes > split_end
        assert passes.any() and torch.isnan(batch.future_size[passes, j]).all(), minutes
    assert WindowDataset(synthetic_small, "train", DataConfig(window_bars=16)).batch(last).future_size is None


def test_the_head_and_term_are_off_by_default_and_train_the_head_when_on(synthetic_small: Path) -> None:
    data = DataConfig(window_bars=16, future_minutes=HORIZONS)
    masked = MaskedWindows(WindowDataset(synthetic_small, "train", data, seed=0), MaskingConfig(), 8, seed=0)
    batch = masked.batch(np.arange(8) * 37)
    torch.manual_seed(0)
    off = Stage1Model(tiny_model_config(), data)
    out = off(batch)
    assert off.heads.future is None and out.future_size is None
    assert "future" not in stage1_loss(out.reconstruction, batch, off.config.loss).components
    config = tiny_model_config()
    config.loss.future_weight = 0.5
    torch.manual_seed(0)
    on = Stage1Model(config, data)
    on.set_phase(Phase.FULL)
    out = on(batch)
    assert out.future_size is not None and out.future_size.shape == (8, len(HORIZONS))
    assert {group_name(n) for n, _ in on.named_parameters() if n.startswith("heads.future")} == {"heads"}
    losses = stage1_loss(out.reconstruction, batch, config.loss, out.future_size)
    without = stage1_loss(out.reconstruction, batch, off.config.loss)
    future = losses.components["future"]
    assert float(losses.counts["future"]) > 0 and float(future) > 0
    assert float(losses.total) == pytest.approx(float(without.total) + 0.5 * float(future), rel=1e-6)
    losses.total.backward()
    assert on.heads.future[1].weight.grad is not None and on.heads.future[1].weight.grad.abs().sum() > 0
    batch.future_size = torch.full_like(batch.future_size, float("nan"))  # nothing known: finite, zero
    empty = stage1_loss(on(batch).reconstruction, batch, config.loss, on(batch).future_size)
    assert float(empty.counts["future"]) == 0 and float(empty.components["future"]) == 0.0


def test_the_weight_needs_horizons() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.loss\.future_weight: 1\.0, but data\.future_minutes is empty"
    ):
        load_config(None, ["model.loss.future_weight=1.0"])
    with pytest.raises(ConfigError, match=r"data\.future_minutes: \[0\], expected whole minutes >= 1"):
        load_config(None, ["data.future_minutes=[0]"])


def test_a_run_with_the_future_size_term_logs_it_and_the_probe_reads_its_forecast(
    synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    """The head's own forecasts are read as a correction nested in the rule (never worse on val), beside
    the embeddings and both together, for the trained and the untrained model; a model without the head
    is refused a forecast readout, naming the keys that give it one."""
    config = tiny_train_config(max_steps=3)
    config.data.future_minutes = HORIZONS
    config.model.loss.future_weight = 1.0
    result = loop.train(config, synthetic_small, tmp_path / "run")
    assert np.isfinite(result.last_losses["loss/future"]) and "val/loss/future" in result.val_losses

    convert(tmp_path / "run", tmp_path / "export")
    model = Stage1Model.from_pretrained(tmp_path / "export")
    untrained = Stage1Model.untrained_like(tmp_path / "export")
    report = probe(model, untrained, synthetic_small, max_anchors=80, forecast=True)
    assert report["forecast"] is True
    for target in ("rv_60m", "rv_240m"):
        best = report["best_rule"][target]["rule"]
        val = report["val_mse"][target]
        for method in (
            "best_rule_plus_forecast",
            "best_rule_plus_forecast_and_embeddings",
            "best_rule_plus_forecast_random_init",
        ):
            assert method in report["targets"][target], method
            assert val[method] <= val[best] + 1e-12, "a nested readout never loses on val"
    assert "best_rule_plus_forecast" not in report["targets"]["ret_sign_60m"]

    without = Stage1Model.from_pretrained(trained_export)
    with pytest.raises(ConfigError, match=r"no future-size head.*model\.loss\.future_weight=1\.0"):
        probe(without, without, synthetic_small, forecast=True)
    assert probe(without, without, synthetic_small, max_anchors=80)["forecast"] is False
