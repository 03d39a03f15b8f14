"""Intervals, tests and the ridge fit behind the quality reports (`stage1 evaluate`, `stage1 probe`)."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96); (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


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


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, lag: int = 0) -> tuple[float, float]:
    """Diebold-Mariano test of equal expected loss of forecasts a and b.

    The loss differential ``d = loss_a - loss_b`` has mean ``d_bar``; its long-run variance is the Newey-West
    estimate ``g0 + 2 sum_{k=1..lag} (1 - k / (lag + 1)) g_k`` with ``g_k = mean((d_t - d_bar)(d_{t-k} -
    d_bar))`` (``lag`` > 0 for overlapping forecast horizons). Returns the statistic ``d_bar /
    sqrt(variance / n)`` (negative: a has the lower loss) and its two-sided p-value under the normal.
    """
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n = len(d)
    centred = d - d.mean()
    variance = float(centred @ centred / n)
    for k in range(1, min(lag, n - 1) + 1):
        variance += 2 * (1 - k / (lag + 1)) * float(centred[k:] @ centred[:-k] / n)
    if variance <= 0:
        return float("nan"), float("nan")
    statistic = float(d.mean() / math.sqrt(variance / n))
    return statistic, math.erfc(abs(statistic) / math.sqrt(2.0))  # 2 (1 - cdf), exact in the far tail


class Ridge:
    """Closed-form ridge regression on standardised features with an unpenalised intercept.

    ``fit`` standardises each column with the training mean and standard deviation (constant columns left
    at 0), centres the target, and solves ``(X'X + alpha I) w = X'y``.
    """

    def __init__(self, alpha: float):
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        self.mean = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        z = (x - self.mean) / self.scale
        self.intercept = float(y.mean())
        gram = z.T @ z + self.alpha * np.eye(z.shape[1])
        self.weights = np.linalg.solve(gram, z.T @ (y - self.intercept))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(((x - self.mean) / self.scale) @ self.weights + self.intercept)
