"""`stage1 probe`: what the embeddings know about the future, against HAR and an untrained encoder.

For anchors of the train, val and test splits, targets come from the 1-minute bars strictly after the
anchor time ``t`` (never inside any window):

- ``rv_60m``, ``rv_240m``: log realised variance, ``log`` of the sum of squared 1-minute log returns over
  the next 60 / 240 minutes (an anchor qualifies when at least 75% of those minutes have a bar);
- ``ret_sign_60m``: the sign of ``log(close at t + 60 min / close at t)`` (anchors with no move left out).

Anchors whose 240-minute horizon would leave their split, or whose one-week look-back would reach before
its history, are not used; anchors are at least an hour apart, then a seeded subsample. Methods, on the
same anchors, fitted on train (ridge regression; for the sign a ridge classifier on +-1), their
regularisation picked on val from a grid, scored on test:

- ``embeddings``: the pooled encoder states of every timeframe of the unmasked windows, concatenated;
- ``embeddings_random_init``: the same architecture and config with freshly initialised weights;
- ``har``: log realised variance of the last 60 minutes, day and week before ``t`` from the raw 1-minute
  bars (for the sign: the sign of the last 60-minute return, with a constant);
- ``har_seasonal``: ``har`` plus the time-of-week profile of volatility: the train split's mean log
  realised variance over the next 60 and 240 minutes of the bars that start in the same hour of the week
  (UTC) as ``t``. Intraday and weekly seasonality is the largest predictable part of FX volatility; the
  encoder can read it from its h1 and h4 windows, so the strongest simple rule must have it too;
- ``har_plus_embeddings``, ``har_seasonal_plus_embeddings``; ``constant``: the train mean (or the majority
  class).

Metrics: out-of-sample R^2 (1 - MSE / MSE of the train mean), MSE and QLIKE (on variances ``exp(log
RV)``), with Diebold-Mariano tests of each method's squared error against ``har`` and against
``har_seasonal`` (Newey-West lag for overlapping horizons); accuracy and AUC with 95% intervals for the
sign; ``n`` everywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.data.store import PreparedData, SplitRange
from stage1_ds.data.timeframes import Timeframe
from stage1_ds.data.windows import WindowDataset
from stage1_ds.encoding import encode_batch, model_data_config
from stage1_ds.errors import DataError
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.statistics import Ridge, auc, auc_interval, diebold_mariano, wilson_interval

log = logging.getLogger(__name__)

VARIANCE_TARGETS = {"rv_60m": 60, "rv_240m": 240}
SIGN_TARGET, SIGN_MINUTES = "ret_sign_60m", 60
TARGETS = (*VARIANCE_TARGETS, SIGN_TARGET)
METHODS = (
    "embeddings",
    "embeddings_random_init",
    "har",
    "har_seasonal",
    "har_plus_embeddings",
    "har_seasonal_plus_embeddings",
    "constant",
)
#: The simple rules every method is tested against (Diebold-Mariano).
REFERENCES = ("har", "har_seasonal")
#: Look-back windows of the HAR features, in minutes: an hour, a day, a week.
HAR_MINUTES = (60, 1440, 10080)
COVERAGE = 0.75
SPACING_MINUTES = 60
HOURS_PER_WEEK = 168
_MONDAY = 3 * 24  # the Unix epoch began on a Thursday: hours from a Monday 00:00 UTC to it
LONGEST_MINUTES = max(VARIANCE_TARGETS.values())
ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
_FLOOR = 1e-12  # log of a realised variance of exactly 0 (flat minutes)


@dataclass
class MinuteBars:
    """One instrument's 1-minute bars: start times (seconds), log opens and log closes, with the running sum
    of squared close-to-close log returns (``cumulative[k]`` sums the returns into bars 1..k)."""

    start: np.ndarray
    log_open: np.ndarray
    log_close: np.ndarray

    def __post_init__(self) -> None:
        returns = np.diff(self.log_close, prepend=self.log_close[:1])
        self.cumulative = np.cumsum(returns**2)

    def first_at_or_after(self, time: np.ndarray) -> np.ndarray:
        """Index of the first bar that starts at or after each time."""
        return np.searchsorted(self.start, time)

    def variance(self, first: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Realised variance of the bars ``first .. end - 1``: the first bar's open-to-close return, then
        close-to-close returns, squared and summed (0 where there is no bar)."""
        n = len(self.start)
        head, tail = np.minimum(first, n - 1), np.clip(end - 1, 0, n - 1)
        opening = self.log_close[head] - self.log_open[head]
        inner = self.cumulative[np.maximum(tail, head)] - self.cumulative[head]
        return np.where(end > first, opening**2 + inner, 0.0)


def future_targets(bars: MinuteBars, anchor_time: np.ndarray) -> dict[str, np.ndarray]:
    """Per anchor, from the bars that start at or after ``t`` only (the price at ``t`` is the first such
    bar's open): ``rv_60m``, ``rv_240m`` (log realised variance, NaN under 75% coverage) and
    ``ret_sign_60m`` (+1, -1, or 0 with no move or no bar)."""
    first = bars.first_at_or_after(anchor_time)
    out: dict[str, np.ndarray] = {}
    for name, minutes in VARIANCE_TARGETS.items():
        end = bars.first_at_or_after(anchor_time + 60 * minutes)
        log_variance = np.log(np.maximum(bars.variance(first, end), _FLOOR))
        out[name] = np.where(end - first >= COVERAGE * minutes, log_variance, np.nan)
    end = bars.first_at_or_after(anchor_time + 60 * SIGN_MINUTES)
    inside = np.minimum(first, len(bars.start) - 1)
    move = bars.log_close[np.maximum(end - 1, inside)] - bars.log_open[inside]
    out[SIGN_TARGET] = np.where(end > first, np.sign(move), 0.0)
    return out


def har_features(bars: MinuteBars, anchor_time: np.ndarray) -> np.ndarray:
    """(N, 4) from the bars that start before ``t`` only: log realised variance over the last hour, day and
    week, and the last hour's log return (open of its first bar to the close of the anchor bar)."""
    end = bars.first_at_or_after(anchor_time)  # the bars before t: ..., end - 1 (the anchor bar)
    columns = []
    for minutes in HAR_MINUTES:
        first = bars.first_at_or_after(anchor_time - 60 * minutes)
        columns.append(np.log(np.maximum(bars.variance(first, end), _FLOOR)))
    first = np.minimum(bars.first_at_or_after(anchor_time - 60 * SIGN_MINUTES), end - 1)
    columns.append(bars.log_close[end - 1] - bars.log_open[first])
    return np.stack(columns, axis=1)


def hour_of_week(time: np.ndarray) -> np.ndarray:
    """0 for Monday 00:00-00:59 UTC ... 167 for Sunday 23:00-23:59."""
    return (np.asarray(time) // 3600 + _MONDAY) % HOURS_PER_WEEK


def seasonal_profile(bars: MinuteBars, train: SplitRange) -> np.ndarray:
    """(168, 2): per hour of the week (UTC), the mean log realised variance over the next 60 and 240 minutes
    (`VARIANCE_TARGETS`) of the train split's bars that start in that hour and whose horizon stays in the
    split; an hour without any takes the mean over all hours. Reads the train split only."""
    profile = np.empty((HOURS_PER_WEEK, len(VARIANCE_TARGETS)))
    start = bars.start[(bars.start >= train.anchor_start) & (bars.start < train.end)]
    for column, (name, minutes) in enumerate(VARIANCE_TARGETS.items()):
        time = start[start + 60 * minutes <= train.end]
        value = future_targets(bars, time)[name]
        known = np.isfinite(value)
        if not known.any():
            raise DataError(f"probe: no {minutes}-minute horizon fits in the train split")
        slot = hour_of_week(time[known])
        sums = np.bincount(slot, value[known], HOURS_PER_WEEK)
        counts = np.bincount(slot, None, HOURS_PER_WEEK)
        profile[:, column] = np.where(counts > 0, sums / np.maximum(counts, 1), value[known].mean())
    return profile


@dataclass
class ProbeSet:
    """The anchors of one split used by the probe, with their targets, HAR features and seasonal profile
    values (the train split's, at each anchor's hour of the week)."""

    ids: np.ndarray
    targets: dict[str, np.ndarray]
    har: np.ndarray
    seasonal: np.ndarray


def probe_set(
    windows: WindowDataset, max_anchors: int, seed: int, profiles: dict[str, np.ndarray]
) -> ProbeSet:
    """Anchors of a split at least `SPACING_MINUTES` apart whose horizons stay inside the split and whose
    week of history is in it, a seeded subsample of at most ``max_anchors``; their targets, HAR features and
    values of their instrument's seasonal profile (``profiles``, fitted on train by `seasonal_profile`)."""
    data = windows.data
    ids_all = np.arange(len(windows))
    chosen, targets, har, seasonal = [], [], [], []
    for k, name in enumerate(windows.instruments):
        region = data.split(name, windows.split)
        ids = ids_all[windows.anchor_instrument == k]
        time = windows.anchor_time[ids]
        inside = (time + 60 * LONGEST_MINUTES <= region.end) & (
            time - 60 * max(HAR_MINUTES) >= region.history_start
        )
        ids, time = ids[inside], time[inside]
        keep, last = [], -np.inf
        for i, t in enumerate(time):  # anchors are in time order within an instrument
            if t >= last + 60 * SPACING_MINUTES:
                keep.append(i)
                last = t
        ids, time = ids[keep], time[keep]
        bars = _minute_bars(data, name)
        found = future_targets(bars, time)
        complete = np.all([np.isfinite(v) for v in found.values()], axis=0)
        chosen.append(ids[complete])
        targets.append({key: v[complete] for key, v in found.items()})
        har.append(har_features(bars, time[complete]))
        seasonal.append(profiles[name][hour_of_week(time[complete])])
    ids = np.concatenate(chosen)
    order = np.random.default_rng(seed).permutation(len(ids))[:max_anchors]
    order.sort()
    return ProbeSet(
        ids=ids[order],
        targets={key: np.concatenate([t[key] for t in targets])[order] for key in TARGETS},
        har=np.concatenate(har)[order],
        seasonal=np.concatenate(seasonal)[order],
    )


def _minute_bars(data: PreparedData, instrument: str) -> MinuteBars:
    begin, end = data.rows(instrument, Timeframe.M1)
    m1 = data.bars[Timeframe.M1]
    log_ohlc = np.asarray(m1.log_ohlc[begin:end])  # type: ignore[index]
    return MinuteBars(np.asarray(m1.start[begin:end]), log_ohlc[:, 0], log_ohlc[:, 3])


@torch.no_grad()
def pooled_embeddings(
    model: Stage1Model, windows: WindowDataset, ids: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """(N, timeframes x d_model): each timeframe's pooled encoder states of the unmasked windows, side by side."""
    parts = []
    for i in range(0, len(ids), batch_size):
        pooled = encode_batch(model, windows.batch(ids[i : i + batch_size]))
        parts.append(np.concatenate([pooled[tf]["pooled"].numpy() for tf in pooled], axis=1))
    return np.concatenate(parts).astype(np.float64)


def _fit(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Ridge on train with alpha picked by val MSE; test predictions and the alpha."""
    best = min(
        ALPHAS,
        key=lambda a: float(
            np.mean((Ridge(a).fit(x["train"], y["train"]).predict(x["val"]) - y["val"]) ** 2)
        ),
    )
    return Ridge(best).fit(x["train"], y["train"]).predict(x["test"]), best


def _variance_scores(truth: np.ndarray, pred: np.ndarray, train_mean: float) -> dict[str, float]:
    mse = float(np.mean((pred - truth) ** 2))
    ratio = np.exp(truth - pred)  # realised over forecast variance
    return {
        "r2": 1.0 - mse / float(np.mean((train_mean - truth) ** 2)),
        "mse": mse,
        "qlike": float(np.mean(ratio - np.log(ratio) - 1.0)),
        "n": len(truth),
    }


def _sign_scores(truth: np.ndarray, score: np.ndarray) -> dict[str, float]:
    right = int(np.sum(np.sign(score) == truth))
    low, high = wilson_interval(right, len(truth))
    area = auc(truth > 0, score)
    area_low, area_high = auc_interval(area, int(np.sum(truth > 0)), int(np.sum(truth < 0)))
    return {
        "accuracy": right / len(truth),
        "accuracy_low": low,
        "accuracy_high": high,
        "auc": area,
        "auc_low": area_low,
        "auc_high": area_high,
        "n": len(truth),
    }


def probe(
    model: Stage1Model,
    untrained: Stage1Model,
    data_dir: Path | str,
    max_anchors: int = 3000,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit and score every method on every target (see the module docstring).

    Args:
        model: the trained encoder. untrained: the same architecture, freshly initialised (the control).
        max_anchors: at most this many anchors per split.
        stats: feature statistics to scale with (the model's); None: the folder's own.

    Returns:
        ``targets.<target>.<method>.<metric>``, plus the anchors per split and the chosen alphas.
    """
    config = model_data_config(model)
    sets, features = {}, {}
    profiles: dict[str, np.ndarray] = {}
    for split in ("train", "val", "test"):
        windows = WindowDataset(data_dir, split, config, seed=seed, stats=stats)
        if split == "train":
            data = windows.data
            profiles = {
                name: seasonal_profile(_minute_bars(data, name), data.split(name, "train"))
                for name in windows.instruments
            }
        chosen = sets[split] = probe_set(windows, max_anchors, seed, profiles)
        log.info("probe: %d %s anchors", len(chosen.ids), split)
        embeddings = pooled_embeddings(model, windows, chosen.ids)
        har, seasonal = chosen.har[:, :3], np.concatenate([chosen.har[:, :3], chosen.seasonal], axis=1)
        features[split] = {
            "embeddings": embeddings,
            "embeddings_random_init": pooled_embeddings(untrained, windows, chosen.ids),
            "har": har,
            "har_seasonal": seasonal,
            "har_plus_embeddings": np.concatenate([har, embeddings], axis=1),
            "har_seasonal_plus_embeddings": np.concatenate([seasonal, embeddings], axis=1),
        }
    report: dict[str, Any] = {
        "anchors": {split: len(s.ids) for split, s in sets.items()},
        "spacing_minutes": SPACING_MINUTES,
        "targets": {},
        "alphas": {},
        "predictions": {},
    }
    for target in TARGETS:
        is_sign = target == SIGN_TARGET
        rows = {
            s: (sets[s].targets[target] != 0) if is_sign else np.ones(len(sets[s].ids), bool) for s in sets
        }
        y = {s: sets[s].targets[target][rows[s]] for s in sets}
        results, alphas, predictions = {}, {}, {}
        for method in METHODS[:-1]:
            x = {s: features[s][method][rows[s]] for s in sets}
            if is_sign and method in REFERENCES:  # the sign of the last hour's return, with the constant
                sign = {s: np.sign(sets[s].har[rows[s], 3:4]) for s in sets}
                x = sign if method == "har" else {s: np.concatenate([sign[s], x[s][:, 3:]], 1) for s in sets}
            predictions[method], alphas[method] = _fit(x, y)
        train_mean = float(y["train"].mean())
        if is_sign:
            majority = 1.0 if train_mean >= 0 else -1.0
            predictions["constant"] = np.full(len(y["test"]), majority)
            for method, pred in predictions.items():
                results[method] = _sign_scores(y["test"], pred)
        else:
            predictions["constant"] = np.full(len(y["test"]), train_mean)
            lag = -(-VARIANCE_TARGETS[target] // SPACING_MINUTES) - 1  # overlapping horizons
            for method, pred in predictions.items():
                results[method] = _variance_scores(y["test"], pred, train_mean)
                for reference in REFERENCES:
                    stat, p = diebold_mariano(
                        (pred - y["test"]) ** 2, (predictions[reference] - y["test"]) ** 2, lag
                    )
                    results[method].update({f"dm_stat_vs_{reference}": stat, f"dm_p_vs_{reference}": p})
        report["targets"][target] = results
        report["alphas"][target] = alphas
        report["predictions"][target] = {"truth": y["test"], **predictions}
    return report


def format_p(p: float) -> str:
    """A p-value for a table; ``-`` where there is none (a method against itself)."""
    return f"{p:.2g}" if np.isfinite(p) else "-"


def format_probe(report: dict[str, Any]) -> str:
    lines = [f"probe anchors (train/val/test): {report['anchors']}; test split scores"]
    for target, results in report["targets"].items():
        lines.append(f"{target}:")
        if target == SIGN_TARGET:
            lines.append(
                f"  {'method':<30}{'accuracy':>10}{'95% interval':>18}{'AUC':>8}{'95% interval':>18}{'n':>7}"
            )
            for method, r in results.items():
                accuracy = f"[{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]"
                area = f"[{r['auc_low']:.3f}, {r['auc_high']:.3f}]"
                lines.append(
                    f"  {method:<30}{r['accuracy']:>10.3f}{accuracy:>18}{r['auc']:>8.3f}{area:>18}{r['n']:>7}"
                )
        else:
            lines.append(
                f"  {'method':<30}{'R2':>8}{'MSE':>9}{'QLIKE':>9}"
                + "".join(f"{'DM vs ' + ref:>22}{'p':>9}" for ref in REFERENCES)
                + f"{'n':>7}"
            )
            for method, r in results.items():
                lines.append(
                    f"  {method:<30}{r['r2']:>8.3f}{r['mse']:>9.4f}{r['qlike']:>9.4f}"
                    + "".join(
                        f"{r[f'dm_stat_vs_{ref}']:>22.2f}{format_p(r[f'dm_p_vs_{ref}']):>9}"
                        for ref in REFERENCES
                    )
                    + f"{r['n']:>7}"
                )
    return "\n".join(lines)


def write_probe(report: dict[str, Any], json_path: Path, figure_path: Path | None) -> None:
    """The JSON report (without the predictions) and a PNG of predicted against realised log variance
    (``rv_60m``, test split) for ``har_seasonal`` and ``har_seasonal_plus_embeddings``."""
    json_path.write_text(json.dumps({k: v for k, v in report.items() if k != "predictions"}, indent=2) + "\n")
    if figure_path is None:
        return
    from matplotlib import pyplot as plt

    values = report["predictions"]["rv_60m"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    for ax, method in zip(axes, ("har_seasonal", "har_seasonal_plus_embeddings"), strict=True):
        ax.scatter(values[method], values["truth"], s=4, alpha=0.4)
        low, high = float(np.min(values["truth"])), float(np.max(values["truth"]))
        ax.plot([low, high], [low, high], color="black", linewidth=0.8)
        r2 = report["targets"]["rv_60m"][method]["r2"]
        ax.set_title(f"{method} (R^2 {r2:.3f})", fontsize=9)
        ax.set_xlabel("predicted log realised variance, next 60 min")
    axes[0].set_ylabel("realised")
    figure.tight_layout()
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)
