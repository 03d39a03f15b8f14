"""`stage1 probe`: what the embeddings know about the future, against the strongest simple rule.

For anchors of the train, val and test splits, targets come from the 1-minute bars strictly after the
anchor time ``t`` (never inside any window; `stage1_ds.evaluation.volatility`): ``rv_60m`` and ``rv_240m``,
the log realised variance over the next 60 / 240 minutes, and ``ret_sign_60m``, the sign of the next hour's
return. An anchor qualifies when its 240-minute horizon stays inside its split and its split's history
holds a calendar week and `LONGEST_WINDOW_BARS` bars before it; anchors are at least an hour apart, all of
them used unless a cap asks for a seeded subsample. Anchors whose bars are all flat over the longest
look-back, or whose targets are unknown (too few bars, or all flat), are dropped and counted per split.

Methods, on the same anchors, fitted on train (closed-form ridge; for the sign a ridge classifier on +-1),
the regularisation picked on val from a grid, scored on test. The simple rules, from the raw bars before
``t`` (the windows of the trading-time rules, `TRADING_WINDOWS`, are chosen on val per target with
``har``):

- ``har_calendar``: log realised variance over the last 60 minutes, day and week of the calendar (the
  first version of this probe; an empty window enters as ``log(1e-12)``);
- ``har_calendar_seasonal``: ``har_calendar`` plus the time-of-week profile (below);
- ``har``: log realised variance per bar over the last N bars (trading time);
- ``har_seasonal``: ``har`` plus the time-of-week profile: the train split's mean log realised variance over
  the next 60 and 240 minutes of the bars that start in the same hour of the week (UTC) as ``t``;
- ``harp``: HAR on realised variances divided by their hour-of-week periodicity, fitted to the target less
  the periodicity of its horizon, which is multiplied back (added in logs) to forecast;
- ``har_seasonal_extended``: ``har_seasonal`` plus the horizon's periodicity, one-hot hour of the day and day
  of the week, the last hour's return and its absolute value;
- ``har_seasonal_huber``: ``har_seasonal`` fitted with Huber's loss;
- ``har_range``: ``har`` plus log realised range per bar (Parkinson) over the same look-backs;
- ``har_seasonal_extended_range``: ``har_seasonal_extended`` plus those ranges;
- ``har_seasonal_extended_range_bipower``: that plus log bipower variation per bar (jump-robust variance);
- ``har_range_market`` and ``har_seasonal_extended_range_market`` (the market rule): ``har_range`` and
  ``har_seasonal_extended_range`` plus, for every OTHER instrument of the market (``probe(market=...)``,
  by default the instruments of the probed folders), its log realised variance per bar over its last 60
  and 1,440 bars before ``t`` (`market_log_variance`) and whether it is absent at ``t`` (no bar in the last
  `MARKET_STALE_MINUTES`: closed, a holiday, before its data; its two columns then take their train mean,
  never a stale or zero value). Scored only when some other market is present on a train anchor.

For the sign the rules are the sign of the last 60 minutes' (``har_calendar``) or 60 bars' (``har``)
return, and ``har_seasonal`` adds the profile. ``best_rule`` is the rule of lowest val MSE, per target.
Beside the rules: ``embeddings`` (every timeframe's pooled encoder states of the unmasked windows,
concatenated), ``embeddings_random_init`` (the same architecture and config, freshly initialised), and
``constant`` (the train mean or the majority class). The readouts of the embeddings beside the rule NEST
it: ``best_rule_plus_embeddings`` (and ``..._random_init``) is ``best_rule``'s forecast plus a ridge
correction from the embeddings fitted to the rule's train residual, its penalty chosen on val from a grid
that includes no correction (`fit_correction`); ``best_rule_plus_embeddings_pca`` (and ``..._random_init``)
corrects with the first k principal components of the train embeddings, k chosen on val, 0 allowed
(`fit_components`). On val neither can be worse than the rule. (A single ridge over the rule's columns and
the embeddings, the earlier readout, shrinks the rule's few columns with the many embedding columns and
could score worse than the rule alone.)

Metrics on test: out-of-sample R^2 (1 - MSE / MSE of the train mean), MSE and QLIKE (on variances
``exp(log RV)``), with Diebold-Mariano tests (HLN-corrected, Student t) of each method's squared error
against ``best_rule``; accuracy and AUC with 95% intervals for the sign; ``n`` everywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.config import DataConfig
from stage1_ds.data.corpus import DataSource, Windows, data_folders, load_corpus, open_windows, serve_market
from stage1_ds.data.store import PreparedData
from stage1_ds.data.timeframes import Timeframe
from stage1_ds.encoding import encode_batch, model_data_config
from stage1_ds.errors import DataError
from stage1_ds.evaluation.statistics import Ridge, auc, auc_interval, diebold_mariano, wilson_interval
from stage1_ds.evaluation.volatility import (
    CALENDAR_MINUTES,
    LONGEST_WINDOW_BARS,
    MARKET_STALE_MINUTES,
    MARKET_WINDOWS,
    SIGN_TARGET,
    TARGETS,
    TRADING_WINDOWS,
    VARIANCE_TARGETS,
    MinuteBars,
    calendar_log_variance,
    clock_dummies,
    deseasonalised,
    future_targets,
    hour_of_week,
    market_log_variance,
    periodicity,
    seasonal_log_level,
    seasonal_profile,
    trading_last_return,
    trading_log_variance,
)
from stage1_ds.model.stage1 import Stage1Model

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VARIANCE_RULES = (
    "har_calendar",
    "har_calendar_seasonal",
    "har",
    "har_seasonal",
    "harp",
    "har_seasonal_extended",
    "har_seasonal_huber",
    "har_range",
    "har_seasonal_extended_range",
    "har_seasonal_extended_range_bipower",
)
#: The rules that see other markets (see the module docstring): scored where the market has another
#: instrument present on some train anchor.
MARKET_RULES = ("har_range_market", "har_seasonal_extended_range_market")
SIGN_RULES = ("har_calendar", "har", "har_seasonal")
EMBEDDING_METHODS = (
    "embeddings",
    "embeddings_random_init",
    "best_rule_plus_embeddings",
    "best_rule_plus_embeddings_random_init",
    "best_rule_plus_embeddings_pca",
    "best_rule_plus_embeddings_pca_random_init",
)
#: Blocks whose anchors are dropped when every bar of the longest look-back is flat (their log is NaN).
FLAT_CHECKED = ("trading/", "harp/", "range/", "bipower/")
SPACING_MINUTES = 60
LONGEST_MINUTES = max(VARIANCE_TARGETS.values())
ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
#: How many of the train embeddings' principal components the PCA readout may use (0: no correction).
COMPONENTS = (0, 1, 2, 4, 8, 16, 32, 64)
#: Fewer anchors than this in any split and the probe refuses: a ridge penalty chosen on a handful of val
#: anchors and a test of a handful of forecasts mean nothing.
MIN_ANCHORS = 30
#: Below this many anchors in the val or test split the probe warns: a 95% interval of R^2 or accuracy is
#: then wider than about +-0.1.
RECOMMENDED_ANCHORS = 200


def horizon_steps(target: str) -> int:
    """How many anchors (`SPACING_MINUTES` apart) a variance target's horizon spans: the forecasts of
    consecutive anchors overlap by this many steps less one (the Diebold-Mariano test's ``horizon``)."""
    return -(-VARIANCE_TARGETS[target] // SPACING_MINUTES)


def methods_of(target: str, market: bool = False) -> tuple[str, ...]:
    """Every method scored on ``target``, in report order: the rules (with `MARKET_RULES` for ``market``),
    the embeddings, the constant."""
    rules = SIGN_RULES if target == SIGN_TARGET else (*VARIANCE_RULES, *(MARKET_RULES if market else ()))
    return (*rules, *EMBEDDING_METHODS, "constant")


@dataclass
class ProbeSet:
    """The anchors of one split used by the probe: ids, times, targets, and the blocks of rule features
    (`rule_blocks`, and ``market/<instrument>``: `market_log_variance` of each market instrument, NaN where
    it is absent or is the anchor's own); ``dropped`` counts the anchors left out and why."""

    ids: np.ndarray
    time: np.ndarray
    targets: dict[str, np.ndarray]
    blocks: dict[str, np.ndarray]
    dropped: dict[str, int] = field(default_factory=dict)
    instruments: list[str] = field(default_factory=list)
    #: A model that reads context: the mean number of context instruments present per anchor.
    context_present: float | None = None


@dataclass
class InstrumentRules:
    """What the rules know of one instrument from its train split: the time-of-week profile of log realised
    variance (`seasonal_profile`) and the periodicity of variance (`periodicity`)."""

    profile: np.ndarray
    periodicity: np.ndarray


def rule_blocks(bars: MinuteBars, time: np.ndarray, known: InstrumentRules) -> dict[str, np.ndarray]:
    """The feature blocks the rules are made of, per anchor, from the bars before ``t`` (and the train
    split's profiles): ``calendar`` (3 log variances), ``calendar_return``, ``trading/<windows>`` and
    ``harp/<windows>`` (log variance per bar, raw and deseasonalised, for each `TRADING_WINDOWS` set),
    ``range/<windows>`` and ``bipower/<windows>`` (log realised range and log bipower variation per bar over
    the same look-backs), ``trading_return``, ``profile`` (2), ``periodicity/<target>`` (the horizon's,
    HARP's offset) and ``clock`` (31 one-hots)."""
    calendar = calendar_log_variance(bars, time)
    adjusted = deseasonalised(bars, known.periodicity)
    ranged, jumpless = bars.ranged(), bars.bipower()
    blocks = {"calendar": calendar[:, :3], "calendar_return": calendar[:, 3:]}
    for name, windows in TRADING_WINDOWS.items():
        blocks[f"trading/{name}"] = trading_log_variance(bars, time, windows)
        blocks[f"harp/{name}"] = trading_log_variance(adjusted, time, windows)
        blocks[f"range/{name}"] = trading_log_variance(ranged, time, windows)
        blocks[f"bipower/{name}"] = trading_log_variance(jumpless, time, windows)
    blocks["trading_return"] = trading_last_return(bars, time)[:, None]
    blocks["profile"] = known.profile[hour_of_week(time)]
    for target, minutes in VARIANCE_TARGETS.items():
        blocks[f"periodicity/{target}"] = seasonal_log_level(known.periodicity, time, minutes)[:, None]
    blocks["clock"] = clock_dummies(time)
    return blocks


def probe_set(
    windows: Windows,
    max_anchors: int | None,
    seed: int,
    known: dict[str, InstrumentRules],
    market: dict[str, MinuteBars] | None = None,
) -> ProbeSet:
    """Anchors of a split at least `SPACING_MINUTES` apart whose horizons stay inside the split and whose
    history (a calendar week, `LONGEST_WINDOW_BARS` bars) is in it, all of them or a seeded subsample of at
    most ``max_anchors``, with their targets and rule features (``known``: each instrument's train profiles;
    ``market``: the instruments whose recent variance the market rule reads, by name)."""
    ids_all = np.arange(len(windows))
    anchor_instrument, anchor_time = windows.anchor_instrument, windows.anchor_time
    chosen: list[np.ndarray] = []
    times: list[np.ndarray] = []
    targets: list[dict[str, np.ndarray]] = []
    blocks: list[dict[str, np.ndarray]] = []
    dropped = {"flat_history": 0, "unknown_target": 0}
    for k, name in enumerate(windows.instruments):
        data = windows.data_of(name)
        region = data.split(name, windows.split)
        bars = minute_bars(data, name)
        ids = ids_all[anchor_instrument == k]
        time = anchor_time[ids]
        history_bars = bars.first_at_or_after(time) - bars.first_at_or_after(np.array([region.history_start]))
        inside = (
            (time + 60 * LONGEST_MINUTES <= region.end)
            & (time - 60 * max(CALENDAR_MINUTES) >= region.history_start)
            & (history_bars >= LONGEST_WINDOW_BARS)
        )
        ids, time = ids[inside], time[inside]
        keep, last = [], -np.inf
        for i, t in enumerate(time):  # anchors are in time order within an instrument
            if t >= last + 60 * SPACING_MINUTES:
                keep.append(i)
                last = t
        ids, time = ids[keep], time[keep]
        found = future_targets(bars, time)
        features = rule_blocks(bars, time, known[name])
        for other, other_bars in (market or {}).items():
            # the market rule reads the OTHER markets; an instrument's own columns are absent on its anchors
            own = other == name
            features[f"market/{other}"] = (
                np.full((len(time), len(MARKET_WINDOWS)), np.nan)
                if own
                else market_log_variance(other_bars, time)
            )
        flat = np.zeros(len(time), dtype=bool)
        for key, block in features.items():
            if key.startswith(FLAT_CHECKED):
                flat |= np.isnan(block).any(axis=1)
        unknown = ~np.all([np.isfinite(v) for v in found.values()], axis=0) & ~flat
        dropped["flat_history"] += int(flat.sum())
        dropped["unknown_target"] += int(unknown.sum())
        complete = ~flat & ~unknown
        chosen.append(ids[complete])
        times.append(time[complete])
        targets.append({key: v[complete] for key, v in found.items()})
        blocks.append({key: v[complete] for key, v in features.items()})
    ids = np.concatenate(chosen)
    order = np.random.default_rng(seed).permutation(len(ids))[:max_anchors]
    order.sort()
    return ProbeSet(
        ids=ids[order],
        time=np.concatenate(times)[order],
        targets={key: np.concatenate([t[key] for t in targets])[order] for key in TARGETS},
        blocks={key: np.concatenate([b[key] for b in blocks])[order] for key in blocks[0]},
        dropped=dropped,
        instruments=list(windows.instruments),
    )


def market_bars(source: DataSource) -> dict[str, MinuteBars]:
    """Every instrument of ``source``'s folders as 1-minute bars, by name (an instrument in two folders: the
    first folder's bars): the market of the market rule."""
    market: dict[str, MinuteBars] = {}
    for data in load_corpus(source):
        for name in data.instruments:
            market.setdefault(name, minute_bars(data, name))
    return market


def market_columns(sets: dict[str, ProbeSet], rows: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The market rule's columns on the anchors ``rows`` of each split: for every market instrument present
    on some train anchor, its `MARKET_WINDOWS` log variances (where it is absent: their mean over the train
    anchors where it is present) and a 0/1 column "absent". None: no other market is present on any train
    anchor (a folder of one instrument, say), so there is no market rule."""
    columns: dict[str, list[np.ndarray]] = {s: [] for s in sets}
    for key in (k for k in sets["train"].blocks if k.startswith("market/")):
        train = sets["train"].blocks[key][rows["train"]]
        present = ~np.isnan(train[:, 0])  # a row is NaN as a whole (`market_log_variance`)
        if not present.any():
            continue
        fill = train[present].mean(axis=0)
        for s in sets:
            values = sets[s].blocks[key][rows[s]]
            absent = np.isnan(values[:, :1])
            columns[s] += [np.where(absent, fill, values), absent.astype(np.float64)]
    if not columns["train"]:
        return None
    return {s: np.concatenate(c, axis=1) for s, c in columns.items()}


def minute_bars(data: PreparedData, instrument: str) -> MinuteBars:
    """An instrument's 1-minute bars from a prepared folder."""
    begin, end = data.rows(instrument, Timeframe.M1)
    m1 = data.bars[Timeframe.M1]
    log_ohlc = np.asarray(m1.log_ohlc[begin:end])  # type: ignore[index]
    return MinuteBars(
        np.asarray(m1.start[begin:end]),
        log_ohlc[:, 0],
        log_ohlc[:, 3],
        log_high=log_ohlc[:, 1],
        log_low=log_ohlc[:, 2],
    )


@torch.no_grad()
def pooled_embeddings(
    model: Stage1Model, windows: Windows, ids: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """(N, timeframes x d_model): each timeframe's pooled encoder states of the unmasked windows, side by side."""
    parts = []
    for i in range(0, len(ids), batch_size):
        pooled = encode_batch(model, windows.batch(ids[i : i + batch_size]))
        parts.append(np.concatenate([pooled[tf]["pooled"].numpy() for tf in pooled], axis=1))
    return np.concatenate(parts).astype(np.float64)


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


@dataclass
class RuleChoice:
    """The rules of one target fitted on train and chosen on val: the trading-time look-backs (``windows``,
    chosen with ``har``; ``by_windows`` their val MSEs), every rule's design and fit, and ``best``, the rule
    of lowest val MSE (``best_rule``)."""

    by_windows: dict[str, float]
    windows: str
    designs: dict[str, Design]
    fitted: dict[str, Fitted]
    best: str


def choose_rule(
    sets: dict[str, ProbeSet], target: str, rows: dict[str, np.ndarray], y: dict[str, np.ndarray]
) -> RuleChoice:
    """Fit every rule of ``target`` on train and choose the look-backs and ``best_rule`` on val."""
    by_windows = {w: fit(rule_designs(sets, target, rows, w)["har"], y).val_mse for w in TRADING_WINDOWS}
    windows = min(by_windows, key=lambda w: by_windows[w])
    designs = rule_designs(sets, target, rows, windows)
    fitted = {name: fit(design, y) for name, design in designs.items()}
    best = min(designs, key=lambda name: fitted[name].val_mse)
    return RuleChoice(by_windows, windows, designs, fitted, best)


def rule_designs(
    sets: dict[str, ProbeSet], target: str, rows: dict[str, np.ndarray], windows: str
) -> dict[str, Design]:
    """The simple rules of ``target`` (see the module docstring) on the anchors ``rows`` of each split, with
    the trading-time look-backs ``windows`` (a key of `TRADING_WINDOWS`)."""

    def block(*names: str) -> dict[str, np.ndarray]:
        return {s: np.concatenate([sets[s].blocks[n][rows[s]] for n in names], axis=1) for s in sets}

    zero = {s: np.zeros(int(rows[s].sum())) for s in sets}

    def design(*names: str, offset: str | None = None, huber: bool = False) -> Design:
        shift = zero if offset is None else {s: v[:, 0] for s, v in block(offset).items()}
        return Design(block(*names), shift, huber)

    if target == SIGN_TARGET:
        last_hour = Design({s: np.sign(v) for s, v in block("trading_return").items()}, zero)
        return {
            "har_calendar": Design({s: np.sign(v) for s, v in block("calendar_return").items()}, zero),
            "har": last_hour,
            "har_seasonal": last_hour.plus(block("profile")),
        }
    trading, harp, level = f"trading/{windows}", f"harp/{windows}", f"periodicity/{target}"
    ranges, jumpless = f"range/{windows}", f"bipower/{windows}"
    absolute_return = {s: np.abs(v) for s, v in block("trading_return").items()}
    extended = (trading, "profile", level, "clock", "trading_return")
    rules = {
        "har_calendar": design("calendar"),
        "har_calendar_seasonal": design("calendar", "profile"),
        "har": design(trading),
        "har_seasonal": design(trading, "profile"),
        "harp": design(harp, offset=level),
        "har_seasonal_extended": design(*extended).plus(absolute_return),
        "har_seasonal_huber": design(trading, "profile", huber=True),
        "har_range": design(trading, ranges),
        "har_seasonal_extended_range": design(*extended, ranges).plus(absolute_return),
        "har_seasonal_extended_range_bipower": design(*extended, ranges, jumpless).plus(absolute_return),
    }
    market = market_columns(sets, rows)
    if market is not None:
        rules["har_range_market"] = rules["har_range"].plus(market)
        rules["har_seasonal_extended_range_market"] = rules["har_seasonal_extended_range"].plus(market)
    return rules


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


#: Methods fitted on another folder's instruments (``probe(readout_from=...)``) and scored on this one.
ZERO_SHOT_METHODS = ("best_rule_zero_shot", "embeddings_zero_shot", "best_rule_plus_embeddings_zero_shot")


def _probe_sets(
    model: Stage1Model,
    untrained: Stage1Model | None,
    data_dir: DataSource,
    splits: tuple[str, ...],
    max_anchors: int | None,
    seed: int,
    stats: dict[str, Any] | None,
    market: dict[str, MinuteBars] | None = None,
    context: DataSource | None = None,
) -> tuple[dict[str, ProbeSet], dict[str, dict[str, np.ndarray]]]:
    """The probe's anchors of each split of ``data_dir`` (`anchor_sets`) and the encoders' embeddings of
    them, by method name then split (no untrained control's for ``untrained=None``: the zero-shot readout
    does not use them); a model that reads context sees the instruments of ``context`` (None: of
    ``data_dir``)."""
    windows, sets = anchor_sets(model, data_dir, splits, max_anchors, seed, stats, market)
    if context is not None and model.reads_context:
        for split, served in windows.items():
            around = serve_market(served, context, model_data_config(model), seed, stats).context
            assert around is not None
            names = np.asarray(served.instruments)[served.anchor_instrument[sets[split].ids]]
            present = around.present(names, served.anchor_time[sets[split].ids])
            sets[split].context_present = float(present.sum(axis=1).mean())
    embeddings: dict[str, dict[str, np.ndarray]] = {"embeddings": {}, "embeddings_random_init": {}}
    for split, chosen in sets.items():
        embeddings["embeddings"][split] = pooled_embeddings(model, windows[split], chosen.ids)
        if untrained is not None:
            embeddings["embeddings_random_init"][split] = pooled_embeddings(
                untrained, windows[split], chosen.ids
            )
    return sets, embeddings


def anchor_sets(
    model: Stage1Model | DataConfig,
    data_dir: DataSource,
    splits: tuple[str, ...],
    max_anchors: int | None,
    seed: int,
    stats: dict[str, Any] | None,
    market: dict[str, MinuteBars] | None = None,
) -> tuple[dict[str, Windows], dict[str, ProbeSet]]:
    """The model's windows (or those of a data config) of each split of ``data_dir`` and the probe's anchors
    in them (`probe_set`; the rules know each instrument's train split, the market rule the instruments of
    ``market``), each split checked (`check_anchors`).

    Raises:
        DataError: a split has too few anchors.
    """
    config = model if isinstance(model, DataConfig) else model_data_config(model)
    windows: dict[str, Windows] = {}
    sets: dict[str, ProbeSet] = {}
    known: dict[str, InstrumentRules] = {}
    where = ", ".join(str(folder) for folder in data_folders(data_dir))
    for split in splits:
        windows[split] = open_windows(data_dir, split, config, seed=seed, stats=stats)
        if not known:
            for name in windows[split].instruments:
                data = windows[split].data_of(name)
                bars, past = minute_bars(data, name), data.fitting_period(name)  # train, or the lead-in
                if past.empty:
                    raise DataError(
                        f"{data.root}: instrument {name} has no train split and no bars before its first "
                        "anchor to fit the rules' seasonal profile on (prepared before val and test splits "
                        "began with a lead-in): prepare it again"
                    )
                known[name] = InstrumentRules(seasonal_profile(bars, past), periodicity(bars, past))
        chosen = sets[split] = probe_set(windows[split], max_anchors, seed, known, market)
        log.info("probe: %d %s anchors of %s (dropped: %s)", len(chosen.ids), split, where, chosen.dropped)
        check_anchors(chosen, split, data_dir, max_anchors, max(config.bars(tf) for tf in config.timeframes))
    return windows, sets


def check_anchors(
    chosen: ProbeSet,
    split: str,
    data_dir: DataSource,
    max_anchors: int | None,
    window_bars: int | None = None,
) -> None:
    """Refuse a split with fewer than `MIN_ANCHORS` probe anchors; warn below `RECOMMENDED_ANCHORS` in val
    or test. ``window_bars``: the model's longest window, named in the advice for a short folder.

    Raises:
        DataError: naming the split, the folder, the count and what to do.
    """
    n = len(chosen.ids)
    where = ", ".join(str(folder) for folder in data_folders(data_dir))
    needs = (
        f"an anchor needs {max(CALENDAR_MINUTES) // 1440} calendar days and {LONGEST_WINDOW_BARS} bars of "
        f"history and {LONGEST_MINUTES} minutes of future inside its split, and anchors are "
        f"{SPACING_MINUTES} minutes apart"
    )
    if n < MIN_ANCHORS:
        raise DataError(
            f"probe: the {split} split of {where} has {n} usable anchors (dropped: {chosen.dropped}); the "
            f"probe needs at least {MIN_ANCHORS} in each split ({needs}). Prepare a longer history (several "
            f"months), or give the {split} split a larger share (stage1 prepare --split TRAIN VAL TEST). A "
            "folder too short for three splits (a month) can still be scored: prepare it as one test split "
            f"(stage1 prepare ... --split 0 0 1 --window-bars {window_bars or 'W'}) "
            "and fit the readout on a longer folder (stage1 probe ... --readout-from LONGER_FOLDER, e.g. the "
            "data the model was trained on)"
        )
    if split != "train" and n < min(RECOMMENDED_ANCHORS, max_anchors or RECOMMENDED_ANCHORS):
        log.warning(
            "probe: only %d %s anchors of %s (fewer than %d): intervals and tests on this split will be wide",
            n,
            split,
            where,
            RECOMMENDED_ANCHORS,
        )


def probe(
    model: Stage1Model,
    untrained: Stage1Model,
    data_dir: DataSource,
    max_anchors: int | None = None,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
    readout_from: DataSource | None = None,
    readout_stats: dict[str, Any] | None = None,
    market: DataSource | None = None,
    context: DataSource | None = None,
) -> dict[str, Any]:
    """Fit and score every method on every target (see the module docstring).

    Args:
        model: the trained encoder. untrained: the same architecture, freshly initialised (the control).
        max_anchors: at most this many anchors per split (a seeded subsample); None: every one.
        stats: feature statistics to scale with (the model's); None: the folder's own.
        readout_from: another folder (instruments the model was trained on, say): the zero-shot readout.
            `ZERO_SHOT_METHODS` are then fitted on its train split (penalty chosen on its val split) and
            scored on this folder's test split, beside every method fitted on this folder's own train split.
            A folder without a train split (``--split 0 0 1``: a month of new data, say) is scored this way
            only: every method (rules included, their windows and penalties chosen on the other folder's
            val) is fitted on ``readout_from`` and scored on this folder's test split, with the usual names;
            its instruments' seasonal profiles come from the bars before its first anchor.
        readout_stats: feature statistics for ``readout_from``.
        market: the folders whose instruments the market rule reads (`MARKET_RULES`); None: ``data_dir``'s
            own (no market rule for a folder of one instrument).
        context: for a model trained with ``data.context``: the folders whose instruments its windows see
            (each from its own split of the same name; ``stats`` must scale them all); None: ``market``, or
            ``data_dir`` without one. A model without context ignores it.

    Returns:
        ``targets.<target>.<method>.<metric>``; ``best_rule.<target>``: the rule chosen on val (``rule``,
        ``chosen_on``, every rule's ``val_mse``, the trading-time ``windows`` and their val MSEs with
        ``har``); the anchors used and dropped per split; the penalties chosen (``alphas``; null: a
        nested readout chose no correction), the PCA readouts' ``components``, and each method's val MSE
        there (``val_mse``: what choices between models may read); the test predictions; with
        ``readout_from``, ``readout_from`` and ``readout_anchors``; ``fitted_on``: ``this folder`` or
        ``readout_from`` (a folder without a train split); ``n.<target>.<split>``: the anchors each target
        was fitted, chosen and scored on (a direction needs a move); ``market``: its ``instruments``, the
        ``stale_minutes`` and ``windows`` it is read with, and per split the share of anchors on which each
        instrument is ``present``; ``context`` (a model that reads context): its folders and per split the
        mean number of context instruments present per anchor.

    Raises:
        DataError: a split has fewer than `MIN_ANCHORS` anchors (`check_anchors`); the folder has no train
            split and no ``readout_from`` is given.
    """
    datas = load_corpus(data_dir)
    test_only = all(data.split(name, "train").empty for data in datas for name in data.instruments)
    if test_only and readout_from is None:
        raise DataError(
            f"probe: {', '.join(str(d.root) for d in datas)} has no train split (prepared with --split "
            f"{' '.join(f'{f:g}' for f in datas[0].manifest['split_fractions'])}): the rules and readouts "
            "must be fitted on another folder's train and val splits: pass --readout-from FOLDER (e.g. the "
            "data the model was trained on; its folders are listed in the export's data.json)"
        )
    instruments = market_bars(data_dir if market is None else market)
    seen = context if context is not None else market if market is not None else data_dir
    sets, embeddings = _probe_sets(
        model,
        untrained,
        data_dir,
        ("test",) if test_only else SPLITS,
        max_anchors,
        seed,
        stats,
        instruments,
        seen,
    )
    other_sets: dict[str, ProbeSet] = {}
    other_embeddings: dict[str, dict[str, np.ndarray]] = {}
    if readout_from is not None:
        other_sets, other_embeddings = _probe_sets(
            model,
            untrained if test_only else None,
            readout_from,
            ("train", "val"),
            max_anchors,
            seed,
            readout_stats,
            instruments,
            seen,
        )
    if test_only:  # every method fitted on the other folder, as it is fitted on a folder's own train and val
        sets = {**other_sets, **sets}
        embeddings = {name: {**other_embeddings[name], **embeddings[name]} for name in embeddings}
    zero_shot = readout_from is not None and not test_only
    report: dict[str, Any] = {
        "anchors": {split: len(s.ids) for split, s in sets.items()},
        "anchors_dropped": {split: s.dropped for split, s in sets.items()},
        "n": {},
        "instruments": sets["test"].instruments,
        "spacing_minutes": SPACING_MINUTES,
        "targets": {},
        "best_rule": {},
        "alphas": {},
        "components": {},
        "val_mse": {},
        "predictions": {},
    }
    report["fitted_on"] = "readout_from" if test_only else "this folder"
    report["market"] = {
        "instruments": sorted(instruments),
        "stale_minutes": MARKET_STALE_MINUTES,
        "windows": list(MARKET_WINDOWS),
        "present": {
            split: {name: float(np.mean(~np.isnan(s.blocks[f"market/{name}"][:, 0]))) for name in instruments}
            for split, s in sets.items()
        },
    }
    if model.reads_context:
        report["context"] = {
            "folders": [str(folder) for folder in data_folders(seen)],
            "present_per_anchor": {split: s.context_present for split, s in sets.items()},
        }
    if readout_from is not None:
        report["readout_from"] = [str(folder) for folder in data_folders(readout_from)]
        report["readout_anchors"] = {split: len(s.ids) for split, s in other_sets.items()}
    for target in TARGETS:
        is_sign = target == SIGN_TARGET

        def used(chosen: ProbeSet, target: str = target, is_sign: bool = is_sign) -> np.ndarray:
            """The anchors of a set that score on the target (a direction needs a move)."""
            return (chosen.targets[target] != 0) if is_sign else np.ones(len(chosen.ids), bool)

        rows = {s: used(sets[s]) for s in sets}
        y = {s: sets[s].targets[target][rows[s]] for s in sets}
        report["n"][target] = {s: len(values) for s, values in y.items()}
        rules = choose_rule(sets, target, rows, y)
        by_windows, windows_name, designs, best = rules.by_windows, rules.windows, rules.designs, rules.best
        fitted = dict(rules.fitted)
        for name in ("embeddings", "embeddings_random_init"):
            values = {s: embeddings[name][s][rows[s]] for s in sets}
            zero = {s: np.zeros(int(rows[s].sum())) for s in sets}
            fitted[name] = fit(Design(values, zero), y)
            fitted[f"best_rule_plus_{name}"] = fit_correction(fitted[best], values, y)
            pca = f"best_rule_plus_{name.replace('embeddings', 'embeddings_pca')}"
            fitted[pca] = fit_components(fitted[best], values, y)
        if zero_shot:  # fitted on the other folder's train and val, scored on this test
            mixed = {**other_sets, "test": sets["test"]}
            other_rows = {s: used(mixed[s]) for s in mixed}
            other_y = {s: mixed[s].targets[target][other_rows[s]] for s in mixed}
            other_rules = rule_designs(mixed, target, other_rows, windows_name)
            # this folder's best rule, or where the other folder lacks the market it reads, the best without
            other_rule = other_rules[
                min((n for n in designs if n in other_rules), key=lambda n: fitted[n].val_mse)
            ]
            values = {
                **{s: other_embeddings["embeddings"][s][other_rows[s]] for s in other_sets},
                "test": embeddings["embeddings"]["test"][rows["test"]],
            }
            zero = {s: np.zeros(int(other_rows[s].sum())) for s in mixed}
            fitted["best_rule_zero_shot"] = fit(other_rule, other_y)
            fitted["embeddings_zero_shot"] = fit(Design(values, zero), other_y)
            fitted["best_rule_plus_embeddings_zero_shot"] = fit_correction(
                fitted["best_rule_zero_shot"], values, other_y
            )
        report["best_rule"][target] = {
            "rule": best,
            "chosen_on": "val",
            "val_mse": {name: fitted[name].val_mse for name in designs},
            "windows": windows_name,
            "windows_chosen_on": "val",
            "windows_val_mse_with_har": by_windows,
        }
        has_market = MARKET_RULES[0] in designs
        scored = [*methods_of(target, has_market)[:-1], *(ZERO_SHOT_METHODS if zero_shot else ())]
        predictions = {name: fitted[name].test for name in scored}
        train_mean = float(y["train"].mean())
        results: dict[str, dict[str, float]] = {}
        if is_sign:
            predictions["constant"] = np.full(len(y["test"]), 1.0 if train_mean >= 0 else -1.0)
            for method, pred in predictions.items():
                results[method] = _sign_scores(y["test"], pred)
        else:
            predictions["constant"] = np.full(len(y["test"]), train_mean)
            reference = (predictions[best] - y["test"]) ** 2
            for method, pred in predictions.items():
                stat, p = diebold_mariano((pred - y["test"]) ** 2, reference, horizon_steps(target))
                results[method] = {
                    **_variance_scores(y["test"], pred, train_mean),
                    "dm_stat_vs_best_rule": stat,
                    "dm_p_vs_best_rule": p,
                }
        report["targets"][target] = results
        report["alphas"][target] = {name: f.alpha for name, f in fitted.items()}
        report["components"][target] = {
            name: f.components for name, f in fitted.items() if f.components is not None
        }
        report["val_mse"][target] = {name: f.val_mse for name, f in fitted.items()}
        report["predictions"][target] = {"truth": y["test"], **predictions}
    return report


def format_p(p: float) -> str:
    """A p-value for a table; ``-`` where there is none (a method against itself)."""
    return f"{p:.2g}" if np.isfinite(p) else "-"


def method_label(report: dict[str, Any], target: str, method: str) -> str:
    """The method's name, marked when it is the target's ``best_rule``."""
    return f"{method} (best_rule)" if report["best_rule"][target]["rule"] == method else method


def format_probe(report: dict[str, Any]) -> str:
    lines = [f"probe anchors (train/val/test): {report['anchors']}; dropped: {report['anchors_dropped']}"]
    lines.append("test split scores; best_rule chosen per target on val")
    if report.get("fitted_on") == "readout_from":
        lines.append(
            f"train and val (every fit and choice) from --readout-from {' '.join(report['readout_from'])}: "
            "this folder has a test split only"
        )
    market = report.get("market", {})
    shares = market.get("present", {}).get("test", {})
    others = {name: share for name, share in shares.items() if share > 0}
    if others:
        present = ", ".join(f"{name} {share:.0%}" for name, share in others.items())
        lines.append(f"market (the market rules' other instruments, present on test anchors): {present}")
    for target, results in report["targets"].items():
        lines.append(f"{target}:")
        if target == SIGN_TARGET:
            lines.append(
                f"  {'method':<46}{'accuracy':>10}{'95% interval':>18}{'AUC':>8}{'95% interval':>18}{'n':>7}"
            )
            for method, r in results.items():
                accuracy = f"[{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]"
                area = f"[{r['auc_low']:.3f}, {r['auc_high']:.3f}]"
                lines.append(
                    f"  {method_label(report, target, method):<46}{r['accuracy']:>10.3f}{accuracy:>18}"
                    f"{r['auc']:>8.3f}{area:>18}{r['n']:>7}"
                )
        else:
            lines.append(
                f"  {'method':<46}{'R2':>8}{'MSE':>9}{'QLIKE':>9}{'DM vs best_rule':>17}{'p':>9}{'n':>7}"
            )
            for method, r in results.items():
                lines.append(
                    f"  {method_label(report, target, method):<46}{r['r2']:>8.3f}{r['mse']:>9.4f}"
                    f"{r['qlike']:>9.4f}{r['dm_stat_vs_best_rule']:>17.2f}{format_p(r['dm_p_vs_best_rule']):>9}"
                    f"{r['n']:>7}"
                )
    return "\n".join(lines)


def report_data(report: dict[str, Any]) -> dict[str, Any]:
    """The report as plain JSON data: everything but the test predictions."""
    return {key: value for key, value in report.items() if key != "predictions"}


def write_probe(report: dict[str, Any], json_path: Path, figure_path: Path | None) -> None:
    """The JSON report (`report_data`) and a PNG of predicted against realised log variance
    (``rv_60m``, test split) for ``best_rule`` and ``best_rule_plus_embeddings``."""
    json_path.write_text(json.dumps(report_data(report), indent=2) + "\n")
    if figure_path is None:
        return
    from matplotlib import pyplot as plt

    from stage1_ds.evaluation.plots import ScatterPanel, probe_scatter_figure

    values = report["predictions"]["rv_60m"]
    best = report["best_rule"]["rv_60m"]["rule"]
    panels = [
        ScatterPanel(
            method="best_rule" if method == best else method,
            label=method_label(report, "rv_60m", method),
            predicted=values[method],
            realised=values["truth"],
            r2=report["targets"]["rv_60m"][method]["r2"],
        )
        for method in (best, "best_rule_plus_embeddings")
    ]
    figure = probe_scatter_figure(
        panels, "test", report["instruments"], "rv_60m (log realised variance, next 60 min)"
    )
    figure.savefig(figure_path, dpi=110)
    plt.close(figure)
