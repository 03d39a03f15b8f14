"""Intervals, tests and the ridge fit behind the quality reports (`stage1 evaluate`, `stage1 probe`)."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96), clipped to [0, 1] (never -0.0); (nan,
    nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n successes one end is 0 or 1 exactly, which rounding turns into -1e-17, -0.0 or 1 - 1e-16.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count half): the probability that
    a random positive outscores a random negative."""
    labels = labels.astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([positives, negatives]), kind="stable")
    ranks = np.empty(len(order))
    values = np.concatenate([positives, negatives])[order]
    # Average ranks over ties.
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or values[end] != values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    rank_sum = ranks[: len(positives)].sum()
    return float((rank_sum - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def auc_interval(area: float, positives: int, negatives: int, z: float = 1.96) -> tuple[float, float]:
    """Hanley and McNeil's (1982) normal interval of an AUC (95% for z = 1.96)."""
    if not positives or not negatives or math.isnan(area):
        return float("nan"), float("nan")
    q1, q2 = area / (2 - area), 2 * area * area / (1 + area)
    variance = (
        area * (1 - area) + (positives - 1) * (q1 - area * area) + (negatives - 1) * (q2 - area * area)
    ) / (positives * negatives)
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, area - half), min(1.0, area + half)


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1) -> tuple[float, float]:
    """Diebold-Mariano test of equal expected loss of forecasts a and b, with the Harvey, Leybourne and
    Newbold (1997) small-sample correction.

    The loss differential ``d = loss_a - loss_b`` of ``h``-step forecasts (``horizon``; overlapping
    horizons make ``d`` a moving average of order ``h - 1``) has mean ``d_bar`` and long-run variance
    ``g0 + 2 sum_{k=1..h-1} g_k``, ``g_k = mean((d_t - d_bar)(d_{t-k} - d_bar))``: the truncated uniform
    kernel of the original test, for which the correction is derived (Bartlett weights underestimate an
    MA(h-1) variance: at n = 301, h = 4 they reject a true null about 10% of the time at 5%, tested). Where
    the uniform estimate is not positive, the Bartlett estimate (always non-negative) is used. The statistic
    ``d_bar / sqrt(variance / n)`` is scaled by ``sqrt((n + 1 - 2h + h(h - 1) / n) / n)`` and compared with
    Student's t with ``n - 1`` degrees of freedom.

    Returns:
        The corrected statistic (negative: a has the lower loss) and its two-sided p-value; (nan, nan) when
        ``d`` is constant or there are fewer than 2 pairs.
    """
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    variance = long_run_variance(d, horizon)
    if variance <= 0:
        return float("nan"), float("nan")
    correction = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    statistic = float(d.mean() / math.sqrt(variance / n)) * correction
    return statistic, student_t_p_value(statistic, n - 1)


def long_run_variance(values: np.ndarray, horizon: int) -> float:
    """The long-run variance of a series whose terms overlap by ``horizon - 1`` steps (an MA(h - 1)): the
    autocovariances to lag ``h - 1`` with uniform weights, as the Diebold-Mariano test takes them, or with
    Bartlett weights (never negative) where that is not positive."""
    centred = np.asarray(values, dtype=np.float64) - float(np.mean(values))
    n = len(centred)
    gamma = [float(centred[k:] @ centred[: n - k] / n) for k in range(min(horizon, n))]
    variance = gamma[0] + 2 * sum(gamma[1:])
    if variance <= 0:
        variance = gamma[0] + 2 * sum((1 - k / horizon) * g for k, g in enumerate(gamma) if k)
    return max(variance, 0.0)


def mse_gain(loss: np.ndarray, reference: np.ndarray, horizon: int = 1) -> tuple[float, float]:
    """The MSE reduction of a forecast against a reference on the same targets, in percent of the
    reference's MSE (positive: smaller errors), and its standard error from the paired per-target losses:
    the delta method on the ratio ``R = mean(loss) / mean(reference)``, ``se = 100 sqrt(LRV(loss - R
    reference) / n) / mean(reference)``, the long-run variance over ``horizon`` overlapping steps."""
    loss, reference = np.asarray(loss, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    ratio = float(loss.mean() / reference.mean())
    spread = math.sqrt(long_run_variance(loss - ratio * reference, horizon) / len(loss))
    return 100 * (1 - ratio), 100 * spread / float(reference.mean())


def student_t_p_value(statistic: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: ``I_{df / (df + t^2)}(df / 2, 1/2)``."""
    return regularized_beta(df / 2, 0.5, df / (df + statistic * statistic))


def regularized_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``, from its
    continued fraction (evaluated by the modified Lentz method) on the side of ``x`` where it converges
    fast; exact to about 1e-14."""
    if x <= 0.0 or x >= 1.0:
        return min(max(x, 0.0), 1.0)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function: terms ``d_{2m}``, ``d_{2m+1}`` of its even and
    odd steps, multiplied in until a step changes the value by less than 1e-15."""
    tiny = 1e-300  # keeps a denominator away from 0 (Lentz)

    def guard(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    value = d
    for m in range(1, 500):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for term in (even, odd):
            d = 1.0 / guard(1.0 + term * d)
            c = guard(1.0 + term / c)
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return value


#: Huber's threshold in robust standard deviations of the residuals: 95% efficiency under normal errors.
HUBER_K = 1.345
HUBER_ITERATIONS = 50


class Ridge:
    """Closed-form ridge regression on standardised features with an unpenalised intercept, optionally with
    Huber's loss (``huber=True``: robust to outlying targets).

    ``fit`` standardises each column with the training mean and standard deviation (constant columns left
    at 0) and solves ``(Z'WZ + alpha I) w = Z'W(y - b)`` on weighted-centred ``Z`` and ``y`` (``W`` the
    identity for squared loss). With Huber's loss the weights are found by iteratively reweighted least
    squares: ``min(1, k s / |r|)`` for residuals ``r``, ``s`` their median absolute deviation scaled to a
    standard deviation, ``k`` = `HUBER_K`; until they change by less than 1e-9, at most `HUBER_ITERATIONS`.
    """

    def __init__(self, alpha: float, huber: bool = False):
        self.alpha = alpha
        self.huber = huber

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        z = (x - self.mean) / self.scale
        weights = np.ones(len(y))
        for _ in range(HUBER_ITERATIONS if self.huber else 1):
            self._solve(z, y, weights)
            residual = y - self.predict(x)
            spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
            if spread == 0:
                break
            new = np.minimum(1.0, HUBER_K * spread / np.maximum(np.abs(residual), 1e-300))
            if np.max(np.abs(new - weights)) < 1e-9:
                break
            weights = new
        return self

    def _solve(self, z: np.ndarray, y: np.ndarray, weights: np.ndarray) -> None:
        total = weights.sum()
        z_mean, y_mean = weights @ z / total, float(weights @ y / total)
        centred = z - z_mean
        weighted = centred * weights[:, None]
        gram = weighted.T @ centred + self.alpha * np.eye(z.shape[1])
        self.weights = np.linalg.solve(gram, weighted.T @ (y - y_mean))
        self.intercept = y_mean - float(z_mean @ self.weights)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(((x - self.mean) / self.scale) @ self.weights + self.intercept)
