"""The statistics behind every quality claim: the Diebold-Mariano test keeps its size in small samples with
overlapping horizons, Student's t from first principles, intervals that stay in [0, 1], robust ridge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stage1_ds.evaluation.statistics import (
    Ridge,
    diebold_mariano,
    regularized_beta,
    student_t_p_value,
    wilson_interval,
)


def test_diebold_mariano_rejects_a_true_null_at_its_nominal_rate_with_overlapping_horizons() -> None:
    """Loss differentials of 4-step forecasts made every step are MA(3) (each error sums 4 shocks); with
    n = 301 and no difference in expected loss, a 5% test must reject about 5% of the time. Newey-West
    (Bartlett) weights with the normal rejected 10.8% here; HLN's test 4.8%. The band [3%, 7%] is 4 standard
    errors of 2,000 replications around 5%, and 9% lies 8 beyond it."""
    rng = np.random.default_rng(2024)
    n, horizon, replications = 301, 4, 2000
    shocks = rng.normal(size=(replications, n + horizon - 1))
    differentials = np.stack([np.convolve(row, np.ones(horizon), "valid") for row in shocks])
    rejected = sum(diebold_mariano(d, np.zeros(n), horizon)[1] < 0.05 for d in differentials)
    assert 0.03 <= rejected / replications <= 0.07


def test_diebold_mariano_by_hand() -> None:
    # d = [1, -1, 2, 0]: mean 0.5, variance 1.25 (horizon 1: no autocovariances), statistic 0.5 / sqrt(1.25 / 4)
    # times HLN's sqrt((n + 1 - 2h + h(h - 1) / n) / n) = sqrt(3 / 4), against t with 3 degrees of freedom.
    statistic, p = diebold_mariano(np.array([2.0, 0.0, 3.0, 1.0]), np.ones(4))
    assert statistic == pytest.approx(0.5 / math.sqrt(1.25 / 4) * math.sqrt(3 / 4))
    assert p == pytest.approx(student_t_p_value(statistic, 3))
    # horizon 2: the lag-1 autocovariance enters with weight 1 (HLN's uniform kernel) and the factor is
    # sqrt((4 + 1 - 4 + 2 / 4) / 4). d = [1, 2, 3, 4]: g0 = 1.25, g1 = 0.3125.
    statistic = diebold_mariano(np.array([2.0, 3.0, 4.0, 5.0]), np.ones(4), horizon=2)[0]
    assert statistic == pytest.approx(2.5 / math.sqrt((1.25 + 2 * 0.3125) / 4) * math.sqrt(1.5 / 4))
    # d = [1, -1, 2, 0] has g1 = -0.9375: the uniform estimate 1.25 - 1.875 is negative, Bartlett's
    # 1.25 - 0.9375 is used instead.
    statistic = diebold_mariano(np.array([2.0, 0.0, 3.0, 1.0]), np.ones(4), horizon=2)[0]
    assert statistic == pytest.approx(0.5 / math.sqrt(0.3125 / 4) * math.sqrt(1.5 / 4))
    assert math.isnan(diebold_mariano(np.ones(5), np.ones(5))[1]), "no difference at all: no test"


@pytest.mark.parametrize("t", [0.1, 0.7, 1.0, 2.5, 12.706, 80.0])
def test_student_t_p_values_match_the_closed_forms(t: float) -> None:
    assert student_t_p_value(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10)  # Cauchy
    assert student_t_p_value(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    assert student_t_p_value(-t, 2) == student_t_p_value(t, 2)
    # a large sample is the normal
    assert student_t_p_value(t, 1e7) == pytest.approx(math.erfc(t / math.sqrt(2)), rel=1e-3, abs=1e-300)


def test_the_regularized_beta_is_symmetric_and_exact_at_simple_points() -> None:
    assert regularized_beta(1.0, 1.0, 0.3) == pytest.approx(0.3)  # the uniform distribution
    assert regularized_beta(2.0, 3.0, 0.4) == pytest.approx(1 - regularized_beta(3.0, 2.0, 0.6))
    assert regularized_beta(2.0, 1.0, 0.5) == pytest.approx(0.25)  # x^2
    assert (regularized_beta(3.0, 4.0, 0.0), regularized_beta(3.0, 4.0, 1.0)) == (0.0, 1.0)


def test_wilson_intervals_stay_in_the_unit_interval_without_negative_zero() -> None:
    for n in range(1, 200):
        low, high = wilson_interval(0, n)
        assert low == 0.0 and math.copysign(1.0, low) == 1.0, n
        low, high = wilson_interval(n, n)
        assert high == 1.0 and low < 1.0, n
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_huber_ridge_ignores_outlying_targets_that_pull_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = x @ np.array([1.0, -2.0]) + rng.normal(0, 0.1, 400)
    y[:20] += 30.0  # 5% of the targets far off
    slopes = {huber: Ridge(1e-6, huber=huber).fit(x, y) for huber in (False, True)}
    coefficients = {huber: m.weights / m.scale for huber, m in slopes.items()}
    np.testing.assert_allclose(coefficients[True], [1.0, -2.0], atol=0.05)
    assert abs(slopes[True].intercept) < 0.2 and abs(slopes[False].intercept) > 1.0
    clean = x @ np.array([1.0, -2.0]) + rng.normal(0, 0.1, 400)
    np.testing.assert_allclose(
        Ridge(1.0, huber=True).fit(x, clean).predict(x), Ridge(1.0).fit(x, clean).predict(x), atol=0.02
    )
