"""How the probe's methods are fitted: ridge on train with the penalty chosen on val (`fit`), the nested
readouts that correct a fitted rule and may decline to (`fit_correction`, `fit_components`), and the same
refitted as time rolls (`refit`, `refit_correction`): once a week, on every anchor whose target is known
by then.

A refitted forecast of a val or test anchor comes from the fit made at the start of its week (Saturday
00:00 UTC, when every market of the corpus is closed, so a trading week is never cut) on the anchors of
every split whose whole target horizon ended by then: the train anchors, then val's as val goes by, then
test's (an expanding window), or only those of the last `ROLLING_WEEKS` weeks (a rolling window). Nothing
after the week's start enters its fit. Features are standardised with the train split's mean and
deviation in every refit (as `Ridge` does for the fixed fit), so a refit on the train anchors alone is the
fixed fit; on train the refitted forecast is the fixed fit's. The sufficient statistics of each week are
summed once, so a refit costs one solve per penalty.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from stage1_ds.config import SPLITS
from stage1_ds.evaluation.statistics import Ridge

ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
#: How many of the train embeddings' principal components the PCA readout may use (0: no correction).
COMPONENTS = (0, 1, 2, 4, 8, 16, 32, 64)
WEEK_SECONDS = 7 * 86400
#: Refits happen at the start of each week: Saturday 00:00 UTC (1970-01-03, the epoch's first Saturday).
WEEK_ORIGIN = 2 * 86400
#: A rolling window holds the anchors of the last 26 weeks (half a year; the "HARd to beat" refit).
ROLLING_WEEKS = 26


@dataclass
class Design:
    """What one method is fitted on, per split: features ``x`` (N, k), an ``offset`` (N,) added to its
    predictions and taken from the target before fitting (HARP's known periodicity; zeros for none), and
    whether the fit uses Huber's loss."""

    x: dict[str, np.ndarray]
    offset: dict[str, np.ndarray]
    huber: bool = False

    def plus(self, extra: dict[str, np.ndarray]) -> Design:
        """The same design with more feature columns."""
        return Design(
            {s: np.concatenate([self.x[s], extra[s]], axis=1) for s in self.x}, self.offset, self.huber
        )


@dataclass
class Fitted:
    """A method fitted on train with the setting of lowest val MSE: its test predictions, that val MSE, the
    ridge penalty (None: a nested readout that chose no correction), the principal components a PCA
    readout kept, and its predictions on every split (``by_split``)."""

    test: np.ndarray
    val_mse: float
    alpha: float | None
    by_split: dict[str, np.ndarray] = field(default_factory=dict)
    components: int | None = None


def _mse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((pred - truth) ** 2))


def fit(design: Design, y: dict[str, np.ndarray]) -> Fitted:
    """Fit on train for every penalty of `ALPHAS`, keep the one of lowest val MSE, predict test."""
    scored = []
    for alpha in ALPHAS:
        model = Ridge(alpha, huber=design.huber).fit(design.x["train"], y["train"] - design.offset["train"])
        val = model.predict(design.x["val"]) + design.offset["val"]
        scored.append((_mse(val, y["val"]), alpha, model))
    val_mse, alpha, model = min(scored, key=lambda s: s[0])
    by_split = {s: model.predict(design.x[s]) + design.offset[s] for s in design.x}
    return Fitted(by_split["test"], val_mse, alpha, by_split)


def fit_correction(base: Fitted, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Fitted:
    """The readout that nests a rule: ``base``'s predictions plus a ridge of ``x`` fitted on train to
    ``base``'s train residual, with the penalty of lowest val MSE among `ALPHAS` and no correction at all
    (``alpha`` None; kept on a tie). On val it is never worse than ``base``: the rule's few columns are not
    shrunk with the many of ``x``, as they are when both enter one ridge.

    Args:
        base: a fitted rule with its predictions on every split of ``x`` (``by_split``).
        x: per split, (N, k) features; y: per split, (N,) targets.
    """
    residual = y["train"] - base.by_split["train"]
    scored: list[tuple[float, float | None, dict[str, np.ndarray]]] = [(base.val_mse, None, base.by_split)]
    for penalty in ALPHAS:
        model = Ridge(penalty).fit(x["train"], residual)
        by_split = {s: base.by_split[s] + model.predict(x[s]) for s in x}
        scored.append((_mse(by_split["val"], y["val"]), penalty, by_split))
    val_mse, chosen, by_split = min(scored, key=lambda entry: entry[0])  # the first of equals: none
    return Fitted(by_split["test"], val_mse, chosen, by_split)


def fit_components(base: Fitted, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Fitted:
    """The principal-components readout that nests a rule: ``base`` plus a least-squares fit of its train
    residual on the first ``k`` principal components of the standardised train ``x`` (with an intercept),
    ``k`` of `COMPONENTS` (at most the rank) chosen on val; ``k = 0`` is no correction (kept on a tie)."""
    mean, scale = x["train"].mean(axis=0), x["train"].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = {s: (v - mean) / scale for s, v in x.items()}
    _, _, axes = np.linalg.svd(z["train"], full_matrices=False)  # rows: components, largest first
    residual = y["train"] - base.by_split["train"]
    scored: list[tuple[float, int, dict[str, np.ndarray]]] = [(base.val_mse, 0, base.by_split)]
    for k in COMPONENTS[1:]:
        if k > len(axes):
            break
        scores = {s: np.c_[np.ones(len(v)), v @ axes[:k].T] for s, v in z.items()}  # (N, 1 + k)
        weights = np.linalg.lstsq(scores["train"], residual, rcond=None)[0]
        by_split = {s: base.by_split[s] + v @ weights for s, v in scores.items()}
        scored.append((_mse(by_split["val"], y["val"]), k, by_split))
    val_mse, k, by_split = min(scored, key=lambda chosen: chosen[0])
    return Fitted(by_split["test"], val_mse, None, by_split, components=k)


@dataclass(frozen=True)
class RefitSchedule:
    """When each anchor's forecast is refitted and which anchors each refit may use (module docstring).

    Attributes:
        week: per split, (N,) the week of each anchor: its forecast comes from the refit at that week's start.
        known: per split, (N,) the first week at whose start the anchor's target is known (its time plus the
            target's horizon).
        window_weeks: None: a refit uses every anchor known by then (expanding); else only those of the last
            ``window_weeks`` weeks (rolling).
    """

    week: dict[str, np.ndarray]
    known: dict[str, np.ndarray]
    window_weeks: int | None = None


def refit_schedule(
    time: dict[str, np.ndarray], horizon_minutes: int, window_weeks: int | None = None
) -> RefitSchedule:
    """The weekly schedule of anchors at ``time`` (per split, seconds) whose targets look ``horizon_minutes``
    ahead."""
    week = {s: (t - WEEK_ORIGIN) // WEEK_SECONDS for s, t in time.items()}
    known = {s: -((WEEK_ORIGIN - t - 60 * horizon_minutes) // WEEK_SECONDS) for s, t in time.items()}
    return RefitSchedule(week, known, window_weeks)


@dataclass
class _Sums:
    """Sufficient statistics of a pool of anchors: count, sums of standardised columns ``z``, of ``z z'``,
    of the target and of ``z y``."""

    n: float
    z: np.ndarray
    zz: np.ndarray
    y: float
    zy: np.ndarray

    def add(self, other: _Sums, sign: float = 1.0) -> None:
        self.n += sign * other.n
        self.z += sign * other.z
        self.zz += sign * other.zz
        self.y += sign * other.y
        self.zy += sign * other.zy


def _block_sums(z: np.ndarray, y: np.ndarray) -> _Sums:
    return _Sums(float(len(y)), z.sum(axis=0), z.T @ z, float(y.sum()), z.T @ y)


def _pooled(
    z: dict[str, np.ndarray], y: dict[str, np.ndarray], schedule: RefitSchedule
) -> Iterator[tuple[int, _Sums]]:
    """For each week holding a val or test anchor, in order: that week and the sums over the anchors its
    refit may use (`RefitSchedule`)."""
    splits = [s for s in SPLITS if s in z]
    z_all = np.concatenate([z[s] for s in splits])
    y_all = np.concatenate([y[s] for s in splits])
    known = np.concatenate([schedule.known[s] for s in splits])
    week = np.concatenate([schedule.week[s] for s in splits])
    refits = np.unique(np.concatenate([schedule.week[s] for s in splits if s != "train"]))
    m = z_all.shape[1]
    pool = _Sums(0.0, np.zeros(m), np.zeros((m, m)), 0.0, np.zeros(m))
    by_known, by_week = np.argsort(known, kind="stable"), np.argsort(week, kind="stable")
    added = removed = 0
    for w in refits:
        end = int(np.searchsorted(known[by_known], w, side="right"))  # known by the start of week w
        if end > added:
            rows = by_known[added:end]
            pool.add(_block_sums(z_all[rows], y_all[rows]))
            added = end
        if schedule.window_weeks is not None:  # anchors before the window leave it (all known long before)
            end = int(np.searchsorted(week[by_week], w - schedule.window_weeks, side="left"))
            if end > removed:
                rows = by_week[removed:end]
                pool.add(_block_sums(z_all[rows], y_all[rows]), -1.0)
                removed = end
        yield int(w), pool


def _solve(pool: _Sums, alpha: float, columns: slice = slice(None)) -> tuple[np.ndarray, float]:
    """Ridge weights and intercept of the pool on ``columns`` of its standardised features (centred sums)."""
    n = max(pool.n, 1.0)
    mean_z, mean_y = pool.z[columns] / n, pool.y / n
    gram = pool.zz[columns, columns] - n * np.outer(mean_z, mean_z)
    weights = np.linalg.solve(gram + alpha * np.eye(len(mean_z)), pool.zy[columns] - n * mean_z * mean_y)
    return weights, mean_y - float(mean_z @ weights)


def _standardised(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mean, scale = x["train"].mean(axis=0), x["train"].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return {s: (v - mean) / scale for s, v in x.items()}


def _scored_rows(schedule: RefitSchedule, split: str, w: int) -> np.ndarray:
    return np.flatnonzero(schedule.week[split] == w)


def refit(design: Design, y: dict[str, np.ndarray], schedule: RefitSchedule, fixed: Fitted) -> Fitted:
    """``design`` refitted as time rolls (`RefitSchedule`), the penalty of `ALPHAS` chosen on the val
    split's refitted forecasts; on train the forecast is ``fixed``'s (the same design fitted on train).
    Squared loss only (``design.huber`` is refused)."""
    assert not design.huber, "a Huber fit has no sufficient statistics to refit from"
    z = _standardised(design.x)
    target = {s: y[s] - design.offset[s] for s in y}
    scored = [s for s in z if s != "train"]
    predictions = {alpha: {s: np.zeros(len(y[s])) for s in scored} for alpha in ALPHAS}
    for w, pool in _pooled(z, target, schedule):
        for alpha in ALPHAS:
            weights, intercept = _solve(pool, alpha)
            for s in scored:
                rows = _scored_rows(schedule, s, w)
                predictions[alpha][s][rows] = z[s][rows] @ weights + intercept
    by_alpha = {a: {**{s: p + design.offset[s] for s, p in pred.items()}} for a, pred in predictions.items()}
    val = {a: _mse(pred["val"], y["val"]) for a, pred in by_alpha.items()}
    alpha = min(ALPHAS, key=lambda a: val[a])
    by_split = {"train": fixed.by_split["train"], **by_alpha[alpha]}
    return Fitted(by_split["test"], val[alpha], alpha, by_split)


def refit_correction(
    rule: Design,
    rule_alpha: float,
    base: Fitted,
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    schedule: RefitSchedule,
) -> Fitted:
    """The nested readout refitted with its rule: at each refit the rule (``rule`` at ``rule_alpha``) and
    then a ridge of ``x`` on the rule's residual over the same anchors are fitted; the correction's penalty
    is chosen on val from `ALPHAS` and no correction at all (``base``, the refitted rule; kept on a tie). On
    train the forecast is ``base``'s."""
    k = rule.x["train"].shape[1]
    z_rule, z_extra = _standardised(rule.x), _standardised(x)
    z = {s: np.concatenate([z_rule[s], z_extra[s]], axis=1) for s in z_rule}
    target = {s: y[s] - rule.offset[s] for s in y}
    scored = [s for s in z if s != "train"]
    predictions = {alpha: {s: np.zeros(len(y[s])) for s in scored} for alpha in ALPHAS}
    mine, theirs = slice(0, k), slice(k, None)
    for w, pool in _pooled(z, target, schedule):
        beta, c = _solve(pool, rule_alpha, mine)
        # The residual's sums over the pool: r = y - z_rule beta - c, so sum(z r) = sum(z y) - sum(z z_rule) beta
        # - c sum(z) and sum(r) = sum(y) - sum(z_rule) beta - n c.
        residual = _Sums(
            pool.n,
            pool.z,
            pool.zz,
            pool.y - float(pool.z[mine] @ beta) - pool.n * c,
            pool.zy - pool.zz[:, mine] @ beta - c * pool.z,
        )
        for alpha in ALPHAS:
            weights, intercept = _solve(residual, alpha, theirs)
            for s in scored:
                rows = _scored_rows(schedule, s, w)
                rule_part = z_rule[s][rows] @ beta + c + rule.offset[s][rows]
                predictions[alpha][s][rows] = rule_part + z_extra[s][rows] @ weights + intercept
    options: list[tuple[float, float | None, dict[str, np.ndarray]]] = [(base.val_mse, None, base.by_split)]
    for alpha, pred in predictions.items():
        options.append((_mse(pred["val"], y["val"]), alpha, {"train": base.by_split["train"], **pred}))
    val_mse, chosen, by_split = min(options, key=lambda entry: entry[0])  # the first of equals: none
    return Fitted(by_split["test"], val_mse, chosen, by_split)
