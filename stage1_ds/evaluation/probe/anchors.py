"""The probe's anchors: which times of each split are probed, their targets strictly after the anchor and
the blocks of rule features strictly before it (`stage1_ds.evaluation.volatility`).

An anchor qualifies when its 240-minute horizon stays inside its split and its split's history holds a
calendar week and `LONGEST_WINDOW_BARS` bars before it; anchors are at least `SPACING_MINUTES` apart, all of
them used unless a cap asks for a seeded subsample. Anchors whose bars are all flat over the longest
look-back, or whose targets are unknown (too few bars, or all flat), are dropped and counted per split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stage1_ds.config import DataConfig
from stage1_ds.data.corpus import DataSource, Windows, data_folders, load_corpus, open_windows
from stage1_ds.data.store import PreparedData
from stage1_ds.encoding import model_data_config
from stage1_ds.errors import DataError
from stage1_ds.evaluation.volatility import (
    CALENDAR_MINUTES,
    LONGEST_WINDOW_BARS,
    MARKET_WINDOWS,
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
from stage1_ds.timeframes import Timeframe

log = logging.getLogger(__name__)

#: Blocks whose anchors are dropped when every bar of the longest look-back is flat (their log is NaN).
FLAT_CHECKED = ("trading/", "harp/", "range/", "bipower/")
SPACING_MINUTES = 60
LONGEST_MINUTES = max(VARIANCE_TARGETS.values())
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
