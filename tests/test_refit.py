"""Rules and readouts refitted as time rolls: each week's forecasts come from a fit on the anchors whose
targets were known at that week's start, and from nothing later."""

from __future__ import annotations

import numpy as np
import pytest

from stage1_ds.evaluation.probe.fitting import (
    ALPHAS,
    WEEK_ORIGIN,
    WEEK_SECONDS,
    Design,
    fit,
    refit,
    refit_correction,
    refit_schedule,
)
from stage1_ds.evaluation.statistics import Ridge

HORIZON = 240  # minutes
SPLIT_WEEKS = {"train": (0, 30), "val": (31, 39), "test": (40, 48)}  # a week's gap between splits


def _problem(
    seed: int = 0,
) -> tuple[Design, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Hourly anchors on weekdays over 48 weeks, split by time; a rule of three columns whose weights drift,
    so refits matter; ten more columns that carry a little of the target (a correction's columns)."""
    rng = np.random.default_rng(seed)
    time, x, extra, y = {}, {}, {}, {}
    for split, (first, last) in SPLIT_WEEKS.items():
        hours = np.arange(first * 168, last * 168)
        hours = hours[(hours % 168) < 120]  # Saturday 00:00 UTC + 0..119 h: five trading days
        t = WEEK_ORIGIN + 3600 * hours
        n = len(t)
        x[split] = rng.normal(size=(n, 3))
        extra[split] = rng.normal(size=(n, 10))
        drift = 1.0 + hours / hours.max() if split == "train" else 1.0 + hours / (48 * 168)
        y[split] = (
            x[split] @ np.array([1.0, -0.5, 0.2]) * drift + 0.3 * extra[split][:, 0] + rng.normal(size=n)
        )
        time[split] = t
    offset = {s: np.zeros(len(v)) for s, v in y.items()}
    return Design(x, offset), extra, y, time


def test_a_weeks_forecasts_use_only_anchors_whose_targets_were_known_by_its_start() -> None:
    design, _, y, time = _problem()
    schedule = refit_schedule(time, HORIZON)
    fixed = fit(design, y)
    first = refit(design, y, schedule, fixed)
    week = 44  # a test week
    rows = schedule.week["test"] == week
    later = {s: schedule.known[s] > week for s in y}  # targets not known at the start of the week
    assert later["test"].any() and not later["train"].any()
    changed = {s: np.where(later[s], y[s] + 100.0, y[s]) for s in y}
    second = refit(design, changed, schedule, fixed)
    earlier_weeks = schedule.week["test"] <= week
    assert np.array_equal(first.by_split["test"][earlier_weeks], second.by_split["test"][earlier_weeks])
    assert not np.allclose(first.by_split["test"][~earlier_weeks], second.by_split["test"][~earlier_weeks])
    # An anchor whose target ended by the week's start does enter that week's fit.
    known = np.flatnonzero(schedule.known["test"] == week)
    assert len(known)
    moved = {**y, "test": y["test"].copy()}
    moved["test"][known] += 100.0
    third = refit(design, moved, schedule, fixed)
    assert not np.allclose(first.by_split["test"][rows], third.by_split["test"][rows])


def test_the_last_hours_of_a_week_are_known_only_a_week_later() -> None:
    """An anchor four hours or less before a week's start has a target that ends after it."""
    start = WEEK_ORIGIN + 10 * WEEK_SECONDS
    time = {"test": np.array([start - HORIZON * 60, start - HORIZON * 60 + 60, start])}
    schedule = refit_schedule(time, HORIZON)
    assert schedule.week["test"].tolist() == [9, 9, 10]
    assert schedule.known["test"].tolist() == [10, 11, 11]


def test_before_any_val_target_is_known_the_refit_is_the_fixed_fit() -> None:
    design, _, y, time = _problem()
    schedule = refit_schedule(time, HORIZON)
    fixed = fit(design, y)
    refitted = refit(design, y, schedule, fixed)
    first_week = schedule.week["val"] == schedule.week["val"].min()
    ridge = Ridge(refitted.alpha or 0.0).fit(design.x["train"], y["train"])
    expected = ridge.predict(design.x["val"][first_week])
    assert refitted.by_split["val"][first_week] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert np.array_equal(refitted.by_split["train"], fixed.by_split["train"])
    assert refitted.alpha in ALPHAS


def test_a_rolling_window_forgets_what_is_older_than_its_weeks() -> None:
    design, _, y, time = _problem()
    expanding, rolling = refit_schedule(time, HORIZON), refit_schedule(time, HORIZON, window_weeks=26)
    fixed = fit(design, y)
    old = {s: rolling.week[s] < 31 - 26 for s in y}  # out of every val and test week's rolling window
    changed = {s: np.where(old[s], y[s] + 100.0, y[s]) for s in y}
    test_weeks = rolling.week["test"] >= 40
    for schedule, forgets in ((rolling, True), (expanding, False)):
        a = refit(design, y, schedule, fixed)
        b = refit(design, changed, schedule, fixed)
        same = np.allclose(a.by_split["test"][test_weeks], b.by_split["test"][test_weeks])
        assert same == forgets


def test_a_refitted_correction_refits_with_its_rule_and_never_loses_on_val() -> None:
    design, extra, y, time = _problem()
    schedule = refit_schedule(time, HORIZON)
    rule = refit(design, y, schedule, fit(design, y))
    assert rule.alpha is not None
    nested = refit_correction(design, rule.alpha, rule, extra, y, schedule)
    assert nested.val_mse <= rule.val_mse
    assert nested.alpha is not None, "the extra columns carry part of the target: a correction is taken"
    assert np.mean((nested.test - y["test"]) ** 2) < np.mean((rule.test - y["test"]) ** 2)
    # Before any val target is known, the refit is the rule fitted on train plus a ridge of the extra columns
    # on that rule's train residual.
    first_week = schedule.week["val"] == schedule.week["val"].min()
    on_train = Ridge(rule.alpha).fit(design.x["train"], y["train"])
    residual = y["train"] - on_train.predict(design.x["train"])
    correction = Ridge(nested.alpha).fit(extra["train"], residual)
    expected = on_train.predict(design.x["val"][first_week]) + correction.predict(extra["val"][first_week])
    assert nested.by_split["val"][first_week] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    noise = {s: np.random.default_rng(1).normal(size=v.shape) for s, v in extra.items()}
    assert refit_correction(design, rule.alpha, rule, noise, y, schedule).val_mse <= rule.val_mse
    # No look-ahead: targets known after a week's start change nothing of that week's forecasts (nor of val,
    # so the same penalty is chosen).
    week = 44
    later = {s: schedule.known[s] > week for s in y}
    changed = {s: np.where(later[s], y[s] + 100.0, y[s]) for s in y}
    moved = refit_correction(design, rule.alpha, rule, extra, changed, schedule)
    assert moved.alpha == nested.alpha
    rows = schedule.week["test"] <= week
    assert np.array_equal(moved.by_split["test"][rows], nested.by_split["test"][rows])
    assert not np.allclose(moved.by_split["test"][~rows], nested.by_split["test"][~rows])
