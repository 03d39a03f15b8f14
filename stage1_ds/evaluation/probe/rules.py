"""The probe's simple rules: what a volatility forecaster builds from the bars before the anchor, each
fitted once on train and refitted as time rolls, and ``best_rule``, the one of lowest val MSE.

Rules of a variance target (the windows of the trading-time rules, `TRADING_WINDOWS`, are chosen on val per
target with ``har``):

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
  ``har_seasonal_extended_range`` plus, for every OTHER instrument of the market, its log realised variance
  per bar over its last 60 and 1,440 bars before ``t`` and whether it is absent at ``t`` (its two columns
  then take their train mean, never a stale or zero value). Scored only when some other market is present
  on a train anchor.

Each squared-loss rule also has two refitted twins (`stage1_ds.evaluation.probe.fitting`): ``<rule>_refit``
(every week, on every anchor known by then) and ``<rule>_rolling`` (every week, on the last 26 weeks),
their penalties chosen on val like the fixed fit's. ``best_rule`` is chosen on val among all of them: a
gain over it is a gain over the better of a rule fitted once and one that keeps up with time.

For the sign the rules are the sign of the last 60 minutes' (``har_calendar``) or 60 bars' (``har``)
return, and ``har_seasonal`` adds the profile; they are fitted once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stage1_ds.evaluation.probe.anchors import ProbeSet
from stage1_ds.evaluation.probe.fitting import (
    ROLLING_WEEKS,
    Design,
    Fitted,
    RefitSchedule,
    fit,
    refit,
    refit_schedule,
)
from stage1_ds.evaluation.volatility import SIGN_TARGET, TRADING_WINDOWS, VARIANCE_TARGETS

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
#: The refitted twins of a rule: name suffix and window (None: expanding; else weeks).
REFITS: dict[str, int | None] = {"_refit": None, "_rolling": ROLLING_WEEKS}


def fixed_rule_of(name: str) -> str:
    """The rule a refitted twin refits (a fixed rule's own name)."""
    for suffix in REFITS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_refitted(name: str) -> bool:
    return fixed_rule_of(name) != name


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


@dataclass
class RuleChoice:
    """The rules of one target fitted on train (and refitted as time rolls) and chosen on val: the
    trading-time look-backs (``windows``, chosen with ``har``; ``by_windows`` their val MSEs), every rule's
    design (a refitted twin's is its rule's) and fit, the refit schedule of each twin, and ``best``, the
    rule of lowest val MSE (``best_rule``)."""

    by_windows: dict[str, float]
    windows: str
    designs: dict[str, Design]
    fitted: dict[str, Fitted]
    schedules: dict[str, RefitSchedule]
    best: str

    def best_of(self, refitted: bool) -> str:
        """The rule of lowest val MSE among the refitted twins (True) or the rules fitted once (False)."""
        return min(
            (n for n in self.fitted if is_refitted(n) == refitted), key=lambda n: self.fitted[n].val_mse
        )


def choose_rule(
    sets: dict[str, ProbeSet],
    target: str,
    rows: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    refits: bool = True,
) -> RuleChoice:
    """Fit every rule of ``target`` on train, refit its squared-loss rules as time rolls (``refits``: a
    variance target with val and test anchors), and choose the look-backs and ``best_rule`` on val."""
    by_windows = {w: fit(rule_designs(sets, target, rows, w)["har"], y).val_mse for w in TRADING_WINDOWS}
    windows = min(by_windows, key=lambda w: by_windows[w])
    designs = rule_designs(sets, target, rows, windows)
    fitted = {name: fit(design, y) for name, design in designs.items()}
    schedules: dict[str, RefitSchedule] = {}
    if refits and target != SIGN_TARGET and {"val", "test"} <= set(sets):
        time = {s: sets[s].time[rows[s]] for s in sets}
        for name, design in list(designs.items()):
            if design.huber:
                continue
            for suffix, weeks in REFITS.items():
                twin = name + suffix
                schedules[twin] = refit_schedule(time, VARIANCE_TARGETS[target], weeks)
                designs[twin] = design
                fitted[twin] = refit(design, y, schedules[twin], fitted[name])
    best = min(designs, key=lambda name: fitted[name].val_mse)
    return RuleChoice(by_windows, windows, designs, fitted, schedules, best)


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
