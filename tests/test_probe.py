"""`stage1 probe`: targets strictly after the anchor, the simple rules strictly before it (in trading time,
finite after weekends and holidays), the best rule chosen on val, the untrained control, and the command
end to end on small synthetic data."""

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
from stage1_ds.evaluation.probe import (
    LONGEST_MINUTES,
    InstrumentRules,
    is_refitted,
    probe_set,
    readout_methods,
)
from stage1_ds.evaluation.probe.rules import MARKET_RULES, REFITS, SIGN_RULES, VARIANCE_RULES
from stage1_ds.evaluation.statistics import Ridge, auc
from stage1_ds.evaluation.volatility import (
    HOURS_PER_WEEK,
    LONGEST_WINDOW_BARS,
    TARGETS,
    TRADING_WINDOWS,
    MinuteBars,
    calendar_log_variance,
    deseasonalised,
    future_targets,
    hour_of_week,
    periodicity,
    seasonal_log_level,
    seasonal_profile,
    trading_last_return,
    trading_log_variance,
)
from stage1_ds.experiments import main as main_report
from stage1_ds.experiments.harness import Options, train_for, write_report
from stage1_ds.model.stage1 import Stage1Model


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

    def har_features(bars: MinuteBars, anchors: np.ndarray) -> np.ndarray:
        windows = (15, 60, 1440, 7200)
        trading = trading_log_variance(bars, anchors, windows)
        ranges = trading_log_variance(bars.ranged(), anchors, windows)
        jumpless = trading_log_variance(bars.bipower(), anchors, windows)
        return np.c_[
            trading,
            ranges,
            jumpless,
            trading_last_return(bars, anchors),
            calendar_log_variance(bars, anchors),
        ]

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
    flat = {"SYNTH": InstrumentRules(np.zeros((HOURS_PER_WEEK, 2)), np.zeros(HOURS_PER_WEEK))}
    chosen = probe_set(windows, max_anchors=10_000, seed=0, known=flat)
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
    synthetic_small: Path,
    unseen: Path,
    trained_export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end, with another instrument (OTHER) as the market: the market rules are scored, and an
    instrument is never its own market."""
    out = tmp_path / "probe.json"
    args = ["--model", str(trained_export), "--data", str(synthetic_small), "--json", str(out)]
    market = ["--market", str(synthetic_small), str(unseen)]
    assert main(["probe", *args, "--max-anchors", "150", *market]) == 0
    report = json.loads(out.read_text())
    assert set(report["targets"]) == set(TARGETS)
    assert report["market"]["instruments"] == ["OTHER", "SYNTH"]
    for split, present in report["market"]["present"].items():
        assert present["SYNTH"] == 0.0 and present["OTHER"] > 0.5, split
    assert report["provenance"]["market"]
    for target, results in report["targets"].items():
        best = report["best_rule"][target]
        if target == "ret_sign_60m":
            rules: tuple[str, ...] = SIGN_RULES
        else:  # every squared-loss rule also refitted as time rolls, expanding and rolling
            fixed = (*VARIANCE_RULES, *MARKET_RULES)
            rules = (*fixed, *(r + s for r in fixed if r != "har_seasonal_huber" for s in REFITS))
        readouts = readout_methods(target, forecast=False, refitted=is_refitted(best["rule"]))
        assert set(results) == {*rules, *readouts, "constant"}
        assert best["chosen_on"] == "val" and best["rule"] == min(best["val_mse"], key=best["val_mse"].get)
        for method, scores in results.items():
            assert scores["n"] > 10, (target, method)
            if target == "ret_sign_60m":
                assert scores["accuracy_low"] <= scores["accuracy"] <= scores["accuracy_high"]
            else:
                assert math.isfinite(scores["mse"]) and math.isfinite(scores["qlike"])
                # no test where the forecasts are the rule's own (the rule itself, a declined correction, a
                # rolling window as long as the data)
                same = scores["mse"] == results[best["rule"]]["mse"]
                assert math.isfinite(scores["dm_p_vs_best_rule"]) or same, (target, method)
    assert report["targets"]["rv_60m"]["constant"]["r2"] == pytest.approx(0.0)
    assert out.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "best_rule_plus_embeddings" in printed
    assert printed.count("negative: the method's errors are smaller") == 1, "the DM convention, once"
    assert printed.count("dropped:") == 3 and "{" not in printed, "each count once, in words"
    verdicts = printed.split("verdict (test split):\n", 1)[1].splitlines()
    assert [v.split(":")[0].strip() for v in verdicts[:2]] == ["`rv_60m`", "`rv_240m`"]
    for target in ("rv_60m", "rv_240m"):
        line = next(v for v in verdicts if v.strip().startswith(f"`{target}`: the embeddings"))
        if report["alphas"][target]["best_rule_plus_embeddings"] is None:
            assert "declined on val" in line and "(declined on val)" in printed
        else:
            assert "MSE" in line and (
                "better" in line or "worse" in line or "no measurable difference" in line
            )
    assert "market (the market rules' other instruments, present on test anchors): OTHER " in printed


def test_the_main_report_has_every_section(synthetic_small: Path, tmp_path: Path) -> None:
    """A smoke run of the main experiment at the tiny size, its steps set by a speed measured first: both
    runs trained, evaluated in every mode, probed, the results plain JSON data and every section and
    verdict of the report rendered from them."""
    options = Options(
        synthetic_small,
        tmp_path / "runs",
        minutes=0.0,
        max_anchors=80,
        batches=1,
        overrides=["model.encoder.preset=tiny"],
    )
    results = json.loads(json.dumps(main_report.measure(options, calibration_steps=10)))
    assert results["steps"] == 10 and results["steps_per_minute"] > 0  # the budget's fewest steps
    assert not (tmp_path / "runs" / "calibration").exists()
    write_report(main_report.EXPERIMENT, results, tmp_path / "docs")
    doc = (tmp_path / "docs" / "main.md").read_text()
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
    assert "(best_rule) |" in doc and "chosen on val" in doc and "--minutes 0" in doc


def test_a_report_run_starts_afresh_in_the_folder_of_an_earlier_report(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """Re-running the report must not resume the previous report's run (train resumes from any checkpoint
    in its folder): the second, shorter run ends on its own last step."""
    tiny = ["model.encoder.preset=tiny"]
    train_for("a", tiny, 20, synthetic_small, tmp_path)
    train_for("a", tiny, 10, synthetic_small, tmp_path)
    assert (tmp_path / "a" / "checkpoints" / "latest").read_text().strip() == "step00000010"


def test_a_report_run_stopped_by_a_signal_is_not_taken_for_a_whole_one(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """A preemption notice saves a checkpoint and ends training early; the report must not convert and
    measure that model as if it had trained every step."""
    import os
    import signal
    import threading
    import time

    def notice() -> None:  # once training listens for notices (its handler is in place), send one
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            handler = signal.getsignal(signal.SIGUSR1)
            if getattr(handler, "__qualname__", "") == "StopFlag._handle":
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=notice, daemon=True)
    sender.start()
    with pytest.raises(RuntimeError, match=r"training stopped at step \d+ of 100000"):
        train_for("a", ["model.encoder.preset=tiny"], 100_000, synthetic_small, tmp_path)
    sender.join()
    assert not (tmp_path / "a_export").exists()


def _trading_weeks(weeks: int = 5, seed: int = 0) -> MinuteBars:
    """Bars of a random walk traded Monday 00:00 to Friday 21:00 UTC, with a 1% jump at every reopening and
    the Wednesday of the third week closed (a holiday); the first bar after that holiday is flat."""
    monday = np.datetime64("2024-01-01T00:00", "s").astype(np.int64)
    minute = np.arange(weeks * 7 * 1440)
    day = minute // 1440
    trading = ((day % 7 < 4) | ((day % 7 == 4) & (minute % 1440 < 21 * 60))) & (day != 16)
    start = monday + 60 * minute[trading]
    rng = np.random.default_rng(seed)
    reopening = np.diff(start, prepend=start[0]) > 3600
    move = rng.normal(0, 1e-4, len(start))
    move[np.flatnonzero(reopening)[1]] = 0.0  # the holiday's first bar: open = close
    log_open = np.cumsum(np.where(reopening, 0.01, 0.0) + np.r_[0.0, move[:-1]])
    return MinuteBars(start, log_open, log_open + move)


def test_trading_time_har_is_finite_and_ordinary_right_after_a_weekend_and_a_holiday() -> None:
    """Anchors 1, 5 and 30 minutes after each weekend and after the holiday: every trading-time feature is
    finite and within the range of ordinary anchors (every minute at least two hours after any break). The
    calendar windows of the first version are not: their last hour holds one bar (log of one squared
    return, or of 0 when that bar is flat), far below any ordinary hour."""
    bars = _trading_weeks()
    enough = bars.start[LONGEST_WINDOW_BARS:]  # anchors need a week of trading before them
    breaks = bars.start[1:][np.diff(bars.start) > 3600]
    reopened = breaks[breaks > enough[0]]
    assert len(reopened) == 4, "two weekends and the holiday (and its end) after the first week and a half"
    special = (reopened[:, None] + 60 * np.array([1, 5, 30])).ravel()
    anchors = enough + 60
    since_break = anchors - breaks[np.maximum(np.searchsorted(breaks, anchors) - 1, 0)]
    ordinary = anchors[(since_break >= 7200) | (anchors < breaks[0])]
    for name, windows in TRADING_WINDOWS.items():
        usual = trading_log_variance(bars, ordinary, windows)
        after = trading_log_variance(bars, special, windows)
        margin = 0.1 * (usual.max(axis=0) - usual.min(axis=0))
        assert np.isfinite(after).all(), name
        assert (after >= usual.min(axis=0) - margin).all() and (after <= usual.max(axis=0) + margin).all(), (
            name
        )
    calendar = calendar_log_variance(bars, special)[:, 0]
    assert calendar.min() == pytest.approx(np.log(1e-12)), "the flat first bar after the holiday"
    assert (calendar < calendar_log_variance(bars, ordinary)[:, 0].min()).mean() > 0.5


def test_a_flat_window_takes_the_next_longer_windows_value_and_all_flat_is_dropped() -> None:
    bars = _minute_bars(minutes=3000)
    log_close, log_open = bars.log_close.copy(), bars.log_open.copy()
    log_close[-60:] = log_open[-60:] = log_close[-61]
    flat_hour = MinuteBars(bars.start, log_open, log_close)
    t = flat_hour.start[-1:] + 60
    values = trading_log_variance(flat_hour, t, (15, 60, 1440))
    assert values[0, 0] == values[0, 1] == values[0, 2] and np.isfinite(values).all()
    log_close[:] = log_open[:] = 0.0
    assert np.isnan(trading_log_variance(MinuteBars(bars.start, log_open, log_close), t, (15, 60))).all()


def test_periodicity_recovers_an_hour_of_fourfold_variance_and_deseasonalising_removes_it() -> None:
    rng = np.random.default_rng(3)
    monday = np.datetime64("2024-01-01T00:00", "s").astype(np.int64)
    start = monday + 60 * np.arange(6 * 7 * 1440)
    loud = hour_of_week(start) == 10  # Monday 10:00-10:59 UTC
    move = rng.normal(0, 1e-4, len(start)) * np.where(loud, 2.0, 1.0)
    log_close = np.cumsum(move)
    bars = MinuteBars(start, np.r_[0.0, log_close[:-1]], log_close)
    train = SplitRange(history_start=int(start[0]), anchor_start=int(start[0]), end=int(start[-1]))
    factor = periodicity(bars, train)
    assert factor[10] - np.median(factor) == pytest.approx(np.log(4.0), abs=0.1)
    flat = deseasonalised(bars, factor)
    hour_starts = start[(start % 3600 == 0) & (start >= start[0] + 3600)][:-1]
    hourly = flat.variance(flat.first_at_or_after(hour_starts), flat.first_at_or_after(hour_starts + 3600))
    in_loud = hour_of_week(hour_starts) == 10
    assert hourly[in_loud].mean() / hourly[~in_loud].mean() == pytest.approx(1.0, abs=0.1)
    level = seasonal_log_level(factor, np.array([start[0] + 10 * 3600, start[0] + 30 * 3600]), 60)
    assert level[0] - level[1] == pytest.approx(factor[10] - factor[30])


def test_the_variants_report_chooses_one_variant_on_val(synthetic_small: Path, tmp_path: Path) -> None:
    """Two variants at the tiny size: both trained the same steps, one chosen by its val MSE, its verdicts
    and every variant's tables written."""
    from stage1_ds.experiments.variants import CHOICE_METHOD, CHOICE_TARGET, measure_variants, render_variants

    options = Options(
        synthetic_small,
        tmp_path,
        steps=(12,),
        max_anchors=80,
        batches=1,
        overrides=["model.encoder.preset=tiny"],
    )
    variants = {"index": ["model.position_bias=index"], "time": ["model.position_bias=time"]}
    results = measure_variants(options, variants)
    val = {n: v["probe"]["val_mse"][CHOICE_TARGET][CHOICE_METHOD] for n, v in results["variants"].items()}
    assert results["chosen"] == min(val, key=lambda n: val[n])
    page = render_variants(results, "Variants")
    assert page.startswith("# Variants") and page.count("(chosen)") == 1
    assert f"| {results['chosen']} (chosen) |" in page
    assert "## Variant index: the probe" in page and "## Variant time: reconstruction" in page
    assert "beats `best_rule`" in page
