"""`stage1 probe`: targets strictly after the anchor, HAR strictly before, the ridge fit, the Diebold-Mariano
test, the untrained control, and the command end to end on small synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stage1_ds.cli import main
from stage1_ds.config import DataConfig
from stage1_ds.data.store import SplitRange
from stage1_ds.data.windows import WindowDataset
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.probe import (
    LONGEST_MINUTES,
    METHODS,
    TARGETS,
    MinuteBars,
    future_targets,
    har_features,
    hour_of_week,
    probe_set,
    seasonal_profile,
)
from stage1_ds.quality import quality_report, train_for
from stage1_ds.statistics import Ridge, auc, diebold_mariano


def _minute_bars(seed: int = 0, minutes: int = 30000) -> MinuteBars:
    """A random walk of 1-minute bars with a few missing minutes."""
    rng = np.random.default_rng(seed)
    start = np.flatnonzero(rng.random(minutes) > 0.05) * 60
    log_close = np.cumsum(rng.normal(0, 1e-4, len(start)))
    log_open = np.r_[0.0, log_close[:-1]] + rng.normal(0, 1e-5, len(start))
    return MinuteBars(start, log_open, log_close)


def _changed(bars: MinuteBars, rows: np.ndarray) -> MinuteBars:
    log_close, log_open = bars.log_close.copy(), bars.log_open.copy()
    log_close[rows] += np.linspace(1e-3, 2e-3, len(rows))
    log_open[rows] -= 1e-3
    return MinuteBars(bars.start, log_open, log_close)


def test_targets_read_only_bars_after_the_anchor_and_har_only_bars_before() -> None:
    bars = _minute_bars()
    anchors = bars.start[[12000, 15000, 18000]] + 60  # ends of bars: the anchor times
    targets, har = future_targets(bars, anchors), har_features(bars, anchors)
    for k, t in enumerate(anchors):
        before = np.flatnonzero(bars.start < t)
        after = np.flatnonzero(bars.start >= t)
        past_changed, future_changed = _changed(bars, before), _changed(bars, after[:5])
        for name, value in future_targets(past_changed, anchors).items():
            assert value[k] == targets[name][k], f"{name} moved with a bar at or before t"
        np.testing.assert_array_equal(har_features(future_changed, anchors)[k], har[k])
        assert future_targets(future_changed, anchors)["rv_60m"][k] != targets["rv_60m"][k]
        assert not np.array_equal(har_features(past_changed, anchors)[k], har[k])


def test_realised_variance_and_sign_by_hand() -> None:
    start = np.arange(0, 300 * 60, 60)
    log_close = np.zeros(300)
    log_close[101:161] = 0.001 * np.arange(1, 61)  # a steady rise through the hour after t = 101 min
    bars = MinuteBars(start, np.r_[0.0, log_close[:-1]], log_close)
    targets = future_targets(bars, np.array([101 * 60]))
    assert targets["ret_sign_60m"][0] == 1.0
    assert targets["rv_60m"][0] == pytest.approx(math.log(60 * 0.001**2))


def test_anchors_near_a_split_end_are_left_out(synthetic_small: Path) -> None:
    windows = WindowDataset(synthetic_small, "val", DataConfig(window_bars=32))
    region = windows.data.split("SYNTH", "val")
    late = windows.anchor_time + 60 * LONGEST_MINUTES > region.end
    assert late.any(), "the split has anchors whose horizon would leave it"
    flat = {"SYNTH": np.zeros((168, 2))}
    chosen = probe_set(windows, max_anchors=10_000, seed=0, profiles=flat)
    times = windows.anchor_time[chosen.ids]
    assert len(times) > 20 and not late[chosen.ids].any()
    assert (np.diff(times) >= 3600).all(), "at least an hour apart"


def test_hour_of_week_starts_on_monday_utc() -> None:
    monday = np.datetime64("2024-01-01T00:00", "s").astype(np.int64)  # a Monday
    sunday_late = np.datetime64("2024-01-07T23:59", "s").astype(np.int64)
    assert hour_of_week(np.array([monday, monday + 3599, monday + 3600, sunday_late])).tolist() == [
        0,
        0,
        1,
        167,
    ]


def test_the_seasonal_profile_is_the_train_mean_per_hour_of_week_and_reads_only_train() -> None:
    bars = _minute_bars(minutes=40000)  # about four weeks
    train = SplitRange(history_start=0, anchor_start=2000 * 60, end=20000 * 60)
    profile = seasonal_profile(bars, train)
    # by hand for one hour of the week: every train bar starting in it whose hour stays in the split
    start = bars.start
    slot = 30
    time = start[(start >= train.anchor_start) & (start + 3600 <= train.end) & (hour_of_week(start) == slot)]
    assert len(time) > 100
    values = future_targets(bars, time)["rv_60m"]
    assert profile[slot, 0] == pytest.approx(np.nanmean(values))
    after = np.flatnonzero(start >= train.end)
    np.testing.assert_array_equal(seasonal_profile(_changed(bars, after), train), profile)
    inside = np.flatnonzero((start >= train.anchor_start) & (start < train.end))[:500]
    assert not np.array_equal(seasonal_profile(_changed(bars, inside), train), profile)


def test_ridge_matches_least_squares_with_augmented_rows() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)) * [1, 2, 3, 4, 5] + 1, rng.normal(size=200)
    model = Ridge(alpha=3.0).fit(x, y)
    z = (x - x.mean(0)) / x.std(0)
    augmented = np.vstack([z, math.sqrt(3.0) * np.eye(5)])
    weights = np.linalg.lstsq(augmented, np.r_[y - y.mean(), np.zeros(5)], rcond=None)[0]
    np.testing.assert_allclose(model.weights, weights, rtol=1e-10)
    np.testing.assert_allclose(model.predict(x), z @ weights + y.mean(), rtol=1e-10)


def test_diebold_mariano_by_hand() -> None:
    # d = [1, -1, 2, 0]: mean 0.5, variance (0.25 + 2.25 + 2.25 + 0.25) / 4 = 1.25, statistic 0.5 / sqrt(1.25/4).
    statistic, p = diebold_mariano(np.array([2.0, 0.0, 3.0, 1.0]), np.ones(4))
    assert statistic == pytest.approx(0.5 / math.sqrt(1.25 / 4))
    assert p == pytest.approx(0.3711, abs=1e-4)
    # With lag 1: g1 = (-0.75 * ... ) as the Newey-West weight 1/2 adds 2 * 0.5 * g1.
    d = np.array([1.0, -1.0, 2.0, 0.0]) - 0.5
    variance = 1.25 + 2 * 0.5 * float(d[1:] @ d[:-1] / 4)
    assert diebold_mariano(np.array([2.0, 0.0, 3.0, 1.0]), np.ones(4), lag=1)[0] == pytest.approx(
        0.5 / math.sqrt(variance / 4)
    )


def test_auc_by_hand() -> None:
    assert auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == 0.75
    assert auc(np.array([1, 0]), np.array([0.3, 0.3])) == 0.5


def test_the_untrained_control_is_the_same_architecture_with_other_weights(trained_export: Path) -> None:
    trained, untrained = (
        Stage1Model.from_pretrained(trained_export),
        Stage1Model.untrained_like(trained_export),
    )
    ours, theirs = trained.state_dict(), untrained.state_dict()
    assert ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
    different = [k for k in ours if not ours[k].equal(theirs[k])]
    assert len(different) > 0.9 * len(ours)
    again = Stage1Model.untrained_like(trained_export).state_dict()
    assert all(again[k].equal(theirs[k]) for k in theirs), "the control is seeded"


def test_probe_command_reports_every_target_and_method(
    synthetic_small: Path, trained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "probe.json"
    args = ["--model", str(trained_export), "--data", str(synthetic_small), "--json", str(out)]
    assert main(["probe", *args, "--max-anchors", "150"]) == 0
    report = json.loads(out.read_text())
    assert set(report["targets"]) == set(TARGETS)
    for target, results in report["targets"].items():
        assert set(results) == set(METHODS)
        for method, scores in results.items():
            assert scores["n"] > 10, (target, method)
            if target == "ret_sign_60m":
                assert scores["accuracy_low"] <= scores["accuracy"] <= scores["accuracy_high"]
            else:
                assert math.isfinite(scores["mse"]) and math.isfinite(scores["qlike"])
                assert math.isfinite(scores["dm_p_vs_har"]) or method == "har"
                assert math.isfinite(scores["dm_p_vs_har_seasonal"]) or method == "har_seasonal"
    assert report["targets"]["rv_60m"]["constant"]["r2"] == pytest.approx(0.0)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "har_seasonal_plus_embeddings" in capsys.readouterr().out


def test_the_quality_report_has_every_section(synthetic_small: Path, tmp_path: Path) -> None:
    """A smoke run of scripts/quality_report.py's library function at the tiny size: both runs trained,
    evaluated in every mode, probed, and every section and verdict written."""
    doc = quality_report(
        synthetic_small,
        minutes=0.0,  # each run trains the calibration steps
        work=tmp_path,
        max_anchors=80,
        batches=1,
        overrides=["model.encoder.preset=tiny"],
        calibration_steps=12,
    )
    for heading in (
        "## Setup",
        "**Mode `time`**",
        "**Mode `horizon`**",
        "## What the cross-timeframe loss does",
        "### Run (a)",
        "### Run (b)",
        "## Targets, as measured",
        "## Reproduce",
    ):
        assert heading in doc, heading
    assert "| embeddings_random_init |" in doc and "`time` mode at most 0.85" in doc


def test_a_report_run_starts_afresh_in_the_folder_of_an_earlier_report(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """Re-running the report must not resume the previous report's run (train resumes from any checkpoint
    in its folder): the second, shorter run ends on its own last step."""
    tiny = ["model.encoder.preset=tiny"]
    train_for("a", tiny, 20, synthetic_small, tmp_path)
    train_for("a", tiny, 10, synthetic_small, tmp_path)
    assert (tmp_path / "a" / "checkpoints" / "latest").read_text().strip() == "step00000010"
