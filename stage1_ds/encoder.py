"""`Encoder`: the trained Stage-1 encoder in a Stage-2 model's hands, from raw 1-minute bars at any time.

    encoder = Encoder.from_pretrained("exports/eurusd")           # an export folder, or a hub id
    vectors = encoder.embed(bars, instrument="EURUSD")             # now: {tf: (1, d_model)}
    history = encoder.embed(bars, at=decision_times)               # {tf: (N, d_model)}, no look-ahead

The contract, each part tested against ``stage1 encode`` of a prepared folder:

- **Bars**: a pandas DataFrame (the times as its DatetimeIndex or a ``time``/``timestamp``/``datetime``/
  ``date`` column) or a dict of arrays (``time`` as datetime64 or epoch seconds), with ``open``, ``high``,
  ``low``, ``close`` and, for a model with volume, ``volume``. A time is the START of its 1-minute bar, on
  the clock the model's data was prepared on: UTC when it was prepared with ``--timezone`` or from UTC
  sources (naive times are taken as that clock; aware ones are converted to UTC). Rows are cleaned as
  ``stage1 prepare`` cleans them: a bad row (a price missing, not positive or out of OHLC order, a time off
  the minute, a negative volume) is an error naming it; rows are sorted and duplicate times dropped (the
  first kept).
- **Timeframes** are derived as ``prepare`` derives them (`stage1_ds.data.timeframes.aggregate`): the same
  buckets and bucket origin (the export's ``data.json``), volume in the same whole units.
- **The anchor** of a decision time ``at`` is the end of the last 1-minute bar that ends at or before
  ``at``; each timeframe's window is the last ``L_tf`` bars whose buckets END at or before the anchor, so no
  bar holds a minute after it. The current, unfinished h4 bar (and any unfinished coarser bar) is left out:
  the h4 window ends with the last h4 bar whose four hours are over, and the minutes since are in the finer
  windows. Bars after ``at`` change nothing (tested bit for bit); ``at`` defaults to the last bar's end.
- **Scaling** uses the model's statistics for an instrument it was trained on; for another one, call
  `Encoder.add_instrument` with its history first (fitted as ``prepare`` fits a train split), so nothing
  after that history enters the scale.
- **The market** (a model trained with ``data.context``): ``embed(..., context={name: bars})`` reads other
  instruments' bars at each anchor by the data pipeline's rules (`stage1_ds.data.context`; see `embed`),
  nothing after the anchor (tested bit for bit, and against ``stage1 encode`` of a corpus).
- **Output**: per timeframe, the encoder's states of the unmasked windows averaged over their tokens,
  ``(N, d_model)`` float32 for N decision times (or per token, ``(N, P, d_model)``, with
  ``pooled=False``). Computed without gradients, batched over ``at``, on the encoder's device, in bf16 on a
  GPU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from stage1_ds.data.batch import Batch, ContextWindows, TimeframeWindow
from stage1_ds.data.context import first_present, slot_windows
from stage1_ds.data.features import volume_reference, volume_scale, window_features
from stage1_ds.data.ingest import EARLIEST_UTC, LATEST_UTC, BarTime, M1Rows, bad_row_reasons, clean_m1
from stage1_ds.data.splits import fit_stats
from stage1_ds.data.store import SplitRange
from stage1_ds.data.timeframes import Bars, aggregate, volume_units
from stage1_ds.encoding import encode_batch
from stage1_ds.errors import CheckpointError, DataError
from stage1_ds.model import t5
from stage1_ds.model.stage1 import EXPORT_DATA, Stage1Model, load_export_stats
from stage1_ds.timeframes import Timeframe

log = logging.getLogger(__name__)

#: Column names read as the bar's start time, in this order, when the DataFrame's index holds no times.
TIME_COLUMNS = ("time", "timestamp", "datetime", "date")
PRICE_COLUMNS = ("open", "high", "low", "close")


@dataclass(frozen=True)
class DerivedBars:
    """One instrument's cleaned 1-minute bars and the timeframes derived from them.

    Attributes:
        bars: per timeframe, as `stage1_ds.data.timeframes.aggregate` derives it.
        log_ohlc: per timeframe, ``log`` of its prices (what a prepared folder stores).
        ends: per timeframe, each bar's bucket end (seconds).
    """

    bars: dict[Timeframe, Bars]
    log_ohlc: dict[Timeframe, np.ndarray]
    ends: dict[Timeframe, np.ndarray]


class Encoder:
    """A trained Stage-1 model with what it needs to read raw bars: its statistics and its data's clock.

    Build it with `from_pretrained` (an export folder of ``stage1 convert``, or a hub id in the local
    cache), or from a `Stage1Model` and its statistics. See the module docstring for the contract.
    """

    def __init__(
        self,
        model: Stage1Model,
        stats: dict[str, Any],
        data: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        bar_time: BarTime | str = BarTime.START,
    ):
        """
        Args:
            model: the model (its weights are used as they are; it is put in eval mode).
            stats: the feature statistics it was trained with (an export's ``stats.json``).
            data: the record of its data (an export's ``data.json``): the bucket origin and each instrument's
                volume unit. None (an export written before data.json): buckets from 00:00, and volume units
                from `add_instrument`.
            device: where to compute (default: the first GPU if there is one, else the CPU).
            bar_time: what the times of the bars given to it mark, as `stage1 prepare --bar-time` says:
                ``start`` (default) or ``end`` of each minute (end stamps are moved back a minute).
        """
        self.bar_time = BarTime(bar_time)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            self.model = self.model.to(torch.bfloat16)
        if data is None:
            log.warning(
                "no data record (data.json, written by exports since issue 24): buckets are taken to start at "
                "00:00 of the bars' clock, and volume units come from add_instrument"
            )
        self.data = data or {}
        self.clock = model_clock(self.data)
        self.bucket_origin = int(self.data.get("bucket_origin_seconds") or 0)
        self.timeframes = [Timeframe(tf) for tf in model.timeframes]
        self.window_bars = {tf: model.window_bars[tf.value] for tf in self.timeframes}
        self.volume = "volume" in model.channels
        self._stats = {name: dict(record) for name, record in stats["instruments"].items()}
        # The lag of the scale statistics: half the window the data was prepared for (`stage1 prepare`).
        self._lag = int(stats.get("lag_bars", max(self.window_bars.values()) // 2))
        self._units = {
            name: float(record["volume_unit"])
            for name, record in self.data.get("instruments", {}).items()
            if record.get("volume_unit") is not None
        }

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: torch.device | str | None = None,
        cache_dir: str | Path | None = None,
        bar_time: BarTime | str = BarTime.START,
    ) -> Encoder:
        """Load an export folder, or a model id from the Hugging Face cache (``cache_dir``, default the
        cache of ``HF_HOME``; nothing is downloaded). ``bar_time``: as for the constructor.

        Raises:
            CheckpointError: neither a folder nor a cached model id, or the folder is incomplete.
        """
        root = Path(name_or_path).expanduser()
        if not root.is_dir():
            root = _cached_snapshot(str(name_or_path), cache_dir)
        model = Stage1Model.from_pretrained(root)
        data_file = root / EXPORT_DATA
        data = json.loads(data_file.read_text()) if data_file.is_file() else None
        return cls(model, load_export_stats(root), data, device, bar_time)

    @property
    def instruments(self) -> list[str]:
        """The instruments the encoder can scale: those it was trained on and those added."""
        return list(self._stats)

    @property
    def d_model(self) -> int:
        return t5.d_model(self.model.encoder)

    def add_instrument(self, name: str, history: Any, timezone: str | None = None) -> None:
        """Fit the feature statistics (and volume unit) of an instrument the model was never trained on from
        its ``history`` (bars as `embed` takes them; ``timezone`` as for `embed`), as ``prepare`` fits them
        on a train split.

        Raises:
            DataError: the history is too short to fit a scale for every timeframe, has bad rows, or has
                naive times for a model of UTC bars without ``timezone``.
        """
        m1, unit = self._clean(history, name, None, timezone)
        derived = self.derive(m1)
        for tf in self.timeframes:
            if len(derived.bars[tf]) < 2:
                raise DataError(
                    f"add_instrument({name!r}): {len(derived.bars[tf])} {tf.value} bars in the history; at "
                    "least two of every timeframe are needed to fit its scale (give weeks of 1-minute bars)"
                )
        span = SplitRange(int(m1.start[0]), int(m1.start[0]), int(m1.start[-1]) + 60)
        fitted = fit_stats(derived.bars, span, self._lag)
        self._stats[name] = {**fitted, "fitted_on": "add_instrument"}
        self._units[name] = unit

    def derive(self, m1: Bars) -> DerivedBars:
        """Every timeframe from cleaned 1-minute bars, in the model's buckets."""
        bars = {tf: aggregate(m1, tf, self.bucket_origin) for tf in Timeframe}
        return DerivedBars(
            bars=bars,
            log_ohlc={tf: np.log(b.ohlc) for tf, b in bars.items()},
            ends={tf: b.start + tf.seconds for tf, b in bars.items()},
        )

    def minute_bars(self, bars: Any, instrument: str | None = None, timezone: str | None = None) -> Bars:
        """``bars`` cleaned as ``prepare`` cleans them, volume in the instrument's units."""
        name = self._instrument(instrument)
        return self._clean(bars, name, self._units.get(name), timezone)[0]

    @torch.no_grad()
    def embed(
        self,
        bars: Any,
        at: Any = None,
        instrument: str | None = None,
        timeframes: Sequence[str] | None = None,
        pooled: bool = True,
        batch_size: int = 256,
        context: Mapping[str, Any] | None = None,
        timezone: str | None = None,
    ) -> dict[str, np.ndarray]:
        """The embeddings of the windows ending at each decision time (see the module docstring).

        Args:
            bars: 1-minute bars of one instrument (a DataFrame or a dict of arrays).
            at: one decision time or many (datetime-likes, or epoch seconds); None: the last bar's end.
            instrument: its name (may be left out when the model knows only one instrument).
            timeframes: the timeframes to return (default: every one of the model).
            pooled: per timeframe ``(N, d_model)`` averages over tokens; False: ``(N, P, d_model)`` tokens.
            batch_size: decision times per forward pass.
            context: for a model trained with ``data.context``, the market around the target: other
                instruments' 1-minute bars by name (as ``bars``; each scaled with its own statistics, so
                each must be known or added). At each anchor ``t`` an instrument stands at its last bar
                that ends at or before ``t`` and is absent where that bar started more than the model's
                ``data.context_stale_minutes`` before ``t`` or its windows there would not be full; the
                first ``data.context_max`` present ones, in the order given (give them in the order of the
                training corpus to match ``stage1 encode``), fill the slots; the target itself and
                instruments outside the model's ``data.context_instruments`` are left out. None or an
                empty mapping: no market (every slot absent). The output is the target's states.
            timezone: the IANA zone of naive times (of ``bars``, ``context`` and ``at``), converted to UTC.
                A model of UTC bars (`clock`) refuses naive times without it: read as UTC they would be
                hours off.

        Raises:
            DataError: bad rows, an unknown instrument, a time before the first bar, or too little history
                before it for a full window of every timeframe (naming each short timeframe and the first
                time with full windows); ``context`` given to a model that does not read it; naive times
                for a model of UTC bars without ``timezone``.
        """
        name = self._instrument(instrument)
        m1, _ = self._clean(bars, name, self._units.get(name), timezone)
        derived = self.derive(m1)
        market = self._market(context or {}, name, timezone)
        times = self._times(at, timezone, "at") if at is not None else derived.ends[Timeframe.M1][-1:]
        wanted = [Timeframe(tf) for tf in (timeframes or [t.value for t in self.timeframes])]
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(times), batch_size):
            batch = self.batch(derived, times[i : i + batch_size], name, market)
            for tf, values in encode_batch(self.model, batch).items():
                if Timeframe(tf) in wanted:
                    parts.setdefault(tf, []).append(values["pooled" if pooled else "tokens"].numpy())
        return {tf: np.concatenate(values) for tf, values in parts.items()}

    def batch(
        self,
        derived: DerivedBars,
        at: np.ndarray,
        instrument: str,
        market: Mapping[str, DerivedBars] | None = None,
    ) -> Batch:
        """The unmasked batch of the windows ending at the anchors of ``at`` (epoch seconds), as
        `stage1_ds.data.windows.WindowDataset.batch` builds it for a prepared folder; with ``market`` (the
        context instruments' derived bars, `_market`) its context as `stage1_ds.data.context` serves it."""
        m1_ends = derived.ends[Timeframe.M1]
        anchor_row = np.searchsorted(m1_ends, at, side="right") - 1
        if (anchor_row < 0).any():
            first = _utc(at[anchor_row < 0][0])
            raise DataError(f"at {first}: before the end of the first 1-minute bar ({_utc(m1_ends[0])})")
        anchor_time = m1_ends[anchor_row]
        windows, log_reference, full = self._windows(derived, anchor_time, instrument)
        if not full.all():
            self._refuse_short(derived, anchor_time[~full][0])
        n = len(at)
        return Batch(
            windows=windows,
            reference_price=torch.from_numpy(np.exp(log_reference)),
            anchor_time=torch.from_numpy(anchor_time),
            instrument=torch.zeros(n, dtype=torch.int64),
            sample_id=torch.arange(n),
            context=None if market is None else self._context(market, anchor_time),
        )

    def _last_rows(self, derived: DerivedBars, anchor_time: np.ndarray) -> dict[Timeframe, np.ndarray]:
        """Per timeframe, (N, L_tf) the rows of the last ``L_tf`` bars whose buckets end at or before each
        anchor (negative where there are fewer)."""
        rows = {}
        for tf in self.timeframes:
            last = np.searchsorted(derived.ends[tf], anchor_time, side="right") - 1
            rows[tf] = last[:, None] + np.arange(1 - self.window_bars[tf], 1)
        return rows

    @property
    def min_history_minutes(self) -> int:
        """Minutes of trading the model needs before its first decision: the longest window of any
        timeframe (its bars times its minutes) and one bar of it more (the unfinished bar is left out).
        Weekends and breaks come on top: a 32-bar model's h4 window is 7,920 minutes, a week and a day of FX
        trading; a 128-bar one's 30,960, more than four weeks of FX."""
        return max((self.window_bars[tf] + 1) * tf.minutes for tf in self.timeframes)

    def _refuse_short(self, derived: DerivedBars, anchor: int) -> None:
        """Raise the error of an anchor without a full window of every timeframe, naming each short one and
        the first time the bars given have full windows of all (if they do)."""
        rows = self._last_rows(derived, np.array([anchor]))
        short = [tf for tf, r in rows.items() if r[0, 0] < 0]
        counts = ", ".join(
            f"{int(rows[tf][0, -1]) + 1} {tf.value} bars of the {self.window_bars[tf]} its window needs"
            for tf in short
        )
        full = [
            derived.ends[tf][self.window_bars[tf] - 1]
            if len(derived.ends[tf]) >= self.window_bars[tf]
            else None
            for tf in self.timeframes
        ]
        first = max(full) if all(t is not None for t in full) else None  # type: ignore[type-var]
        raise DataError(
            f"at {_utc(anchor)}: too little history before it: {counts}. The model needs about "
            f"{self.min_history_minutes:,} minutes of trading before its first decision (weekends and breaks on "
            "top); "
            + (
                f"the first time with full windows of every timeframe in the bars given: {_utc(first)}"
                if first is not None
                else "the bars given never hold full windows of every timeframe: give more history"
            )
        )

    def _windows(
        self, derived: DerivedBars, anchor_time: np.ndarray, instrument: str
    ) -> tuple[dict[str, TimeframeWindow], np.ndarray, np.ndarray]:
        """Every timeframe's unmasked window ending at each anchor (the end of a 1-minute bar of
        ``derived``), scaled with ``instrument``'s statistics; the log reference price (the last 1-minute
        bar's close) and (N,) whether every window is full (where not, its features are meaningless)."""
        rows = self._last_rows(derived, anchor_time)
        full = np.all([r[:, 0] >= 0 for r in rows.values()], axis=0)
        rows = {tf: np.maximum(r, 0) for tf, r in rows.items()}
        finest = self.timeframes[0]
        log_reference = derived.log_ohlc[finest][rows[finest][:, -1], 3]  # unmasked: the last bar's close
        if self.volume:
            units = derived.bars[finest].units[rows[finest]]
            volume_ref = volume_reference(units.sum(axis=1) / units.shape[1] / finest.minutes)
        else:
            volume_ref = None
        stats = self._stats[instrument]
        windows = {}
        n = len(anchor_time)
        for tf in self.timeframes:
            scale = np.full(n, stats["scale"][tf.value], dtype=np.float32)
            units = derived.bars[tf].units[rows[tf]] if self.volume else None
            features = window_features(
                derived.log_ohlc[tf][rows[tf]], log_reference, scale, tf.minutes, units, volume_ref
            )
            windows[tf.value] = TimeframeWindow(
                features=torch.from_numpy(features),
                valid=torch.ones(rows[tf].shape, dtype=torch.bool),
                start_time=torch.from_numpy(derived.bars[tf].start[rows[tf]]),
                parent_index=None,  # only the losses read it
                scale=torch.from_numpy(scale),
                volume_scale=torch.full((n,), volume_scale(tf.minutes)) if self.volume else None,
            )
        return windows, log_reference, full

    def _market(
        self, context: Mapping[str, Any], target: str, timezone: str | None = None
    ) -> dict[str, DerivedBars] | None:
        """The context instruments' derived bars, in the order given (see `embed`); None for a model that
        does not read context.

        Raises:
            DataError: context given to a model without it; an instrument the encoder cannot scale.
        """
        settings = self.model.context_data
        if not self.model.reads_context:
            if context:
                raise DataError(
                    f"context={sorted(context)}: this model was trained without data.context and reads no "
                    "other instruments; leave context out"
                )
            return None
        allowed = settings["context_instruments"]
        market = {}
        for name, bars in context.items():
            if name == target or (allowed and name not in allowed):
                continue
            known = self._instrument(name)
            market[known] = self.derive(self._clean(bars, known, self._units.get(known), timezone)[0])
        return market

    def _context(self, market: Mapping[str, DerivedBars], anchor_time: np.ndarray) -> ContextWindows:
        """The context of samples anchored at ``anchor_time`` (`stage1_ds.data.context`'s rules): B x K rows,
        slot k of sample b at ``b * K + k``."""
        settings = self.model.context_data
        b, slots = len(anchor_time), int(settings["context_max"])
        stale = 60 * int(settings["context_stale_minutes"])
        present = np.zeros((b, len(market)), dtype=bool)
        served: list[dict[str, TimeframeWindow]] = []
        for j, (name, derived) in enumerate(market.items()):
            m1_ends = derived.ends[Timeframe.M1]
            row = np.searchsorted(m1_ends, anchor_time, side="right") - 1  # its last bar ending by t
            own_anchor = m1_ends[np.maximum(row, 0)]
            windows, _, full = self._windows(derived, own_anchor, name)
            started = derived.bars[Timeframe.M1].start[np.maximum(row, 0)]
            present[:, j] = (row >= 0) & full & (started >= anchor_time - stale)
            served.append(windows)
        member = first_present(present, slots)
        pieces = []
        for j, windows in enumerate(served):
            sample, slot = np.nonzero(member == j)
            pieces.append((sample * slots + slot, {tf: w.take(sample) for tf, w in windows.items()}))
        return ContextWindows(
            windows=slot_windows(b * slots, pieces, self.timeframes, self.window_bars, self.volume),
            present=torch.from_numpy(member >= 0),
            instrument=torch.from_numpy(member),
        )

    # -- helpers -----------------------------------------------------------------------------------------

    def _instrument(self, instrument: str | None) -> str:
        if instrument is None:
            if len(self._stats) == 1:
                return next(iter(self._stats))
            raise DataError(
                f"embed: name the instrument (instrument=...); the model knows {self.instruments}"
            )
        if instrument not in self._stats:
            raise DataError(
                f"instrument {instrument!r}: the model was not trained on it (it knows {self.instruments}); "
                f"call encoder.add_instrument({instrument!r}, history_bars) first, with its past bars"
            )
        return instrument

    def _times(self, times: Any, timezone: str | None, what: str) -> np.ndarray:
        """Epoch seconds (UTC) of datetime-likes or numbers; naive datetimes are converted from ``timezone``,
        or taken as the model's clock where that clock is naive.

        Raises:
            DataError: naive datetimes, no ``timezone``, and a model of UTC bars: the error names its clock.
        """
        seconds, naive = _seconds(times, timezone)
        if naive and self.clock.startswith("UTC"):
            raise DataError(
                f"{what}: naive times (no zone), and this model was trained on bars in {self.clock}: read as "
                "UTC they could be hours off. Give the times their zone (for a DataFrame: "
                "bars.tz_localize('America/New_York'), HistData's clock) or pass timezone='America/New_York' "
                "(any IANA zone); UTC times: timezone='UTC'"
            )
        return seconds

    def _clean(
        self, bars: Any, name: str, unit: float | None, timezone: str | None = None
    ) -> tuple[Bars, float]:
        """Cleaned 1-minute bars and the volume unit (``unit``, or fitted from them when None)."""
        rows = _rows_of(bars, self.volume, name, lambda times: self._times(times, timezone, name))
        if self.bar_time == BarTime.END:  # the minute an end stamp closes began a minute earlier
            rows = replace(rows, start=rows.start - 60)
        cleaned, report = clean_m1([rows])
        if len(cleaned) == 0:
            raise DataError(f"{name}: no 1-minute bars given")
        unit = report.volume_unit if unit is None else unit
        if self.volume and not np.any(cleaned.volume > 0):
            raise DataError(f"{name}: the model reads volume, and every volume given is 0")
        units = volume_units(cleaned.volume, unit) if unit != report.volume_unit else cleaned.units
        return Bars(cleaned.start, cleaned.ohlc, cleaned.volume, cleaned.count, units), unit


def model_clock(data: Mapping[str, Any]) -> str:
    """The clock of the bars a model was trained on, from its data record (``data.json``): ``UTC`` (with
    the zone it was converted from), ``naive`` (the files' own clock, or the synthetic market's), or
    ``unknown`` (a record written before clocks were kept)."""
    clocks = {s.get("clock") for r in data.get("instruments", {}).values() for s in r.get("sources", [])}
    if data.get("timezone"):
        return f"UTC (converted from {data['timezone']})"
    if data.get("synthetic"):
        return "naive (the synthetic market's clock)"
    if clocks and all(c and c.startswith("UTC") for c in clocks):
        return "UTC"
    if clocks and any(c and c.startswith("as given") for c in clocks):
        return "naive (the files' own clock)"
    return "unknown"


def _rows_of(bars: Any, needs_volume: bool, name: str, to_seconds: Callable[[Any], np.ndarray]) -> M1Rows:
    """A DataFrame or dict of arrays as 1-minute rows (times to epoch seconds by ``to_seconds``), every bad
    row an error naming it."""
    if isinstance(bars, pd.DataFrame):
        columns = {str(c).lower(): c for c in bars.columns}
        if isinstance(bars.index, pd.DatetimeIndex):
            times: Any = bars.index
        else:
            key = next((columns[c] for c in TIME_COLUMNS if c in columns), None)
            if key is None:
                raise DataError(
                    f"{name}: bars need their times as a DatetimeIndex or a column named one of {TIME_COLUMNS}"
                )
            times = bars[key]
        values = {
            c: bars[columns[c]].to_numpy(dtype=np.float64) for c in (*PRICE_COLUMNS, "volume") if c in columns
        }
    elif isinstance(bars, Mapping):
        lower = {str(k).lower(): v for k, v in bars.items()}
        times = lower.get("time")
        if times is None:
            raise DataError(f"{name}: a dict of bars needs a 'time' array (datetime64 or epoch seconds)")
        values = {c: np.asarray(lower[c], dtype=np.float64) for c in (*PRICE_COLUMNS, "volume") if c in lower}
    else:
        raise DataError(
            f"{name}: bars must be a pandas DataFrame or a dict of arrays, not {type(bars).__name__}"
        )
    missing = [c for c in PRICE_COLUMNS if c not in values] + (
        ["volume"] if needs_volume and "volume" not in values else []
    )
    if missing:
        raise DataError(
            f"{name}: bars lack {missing} (columns: open, high, low, close, and volume for this model)"
        )
    start = to_seconds(times)
    ohlc = np.stack([values[c] for c in PRICE_COLUMNS], axis=1)
    volume = values.get("volume", np.zeros(len(start)))
    outside = (start < EARLIEST_UTC) | (start >= LATEST_UTC)
    reasons = bad_row_reasons(start, ohlc, volume, None, outside, np.zeros(len(start), dtype=bool), None)
    for reason, bad in reasons.items():
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(
                f"{name}: bar {k} ({_utc(start[k])}): {reason}: {ohlc[k].tolist()} volume {volume[k]}"
            )
    return M1Rows(start=start, ohlc=ohlc, volume=volume)


def _seconds(times: Any, timezone: str | None = None) -> tuple[np.ndarray, bool]:
    """Epoch seconds (int64, at least 1-d) of datetime-likes (aware ones converted to UTC; naive ones from
    ``timezone`` where given) or numbers (epoch seconds, UTC); and whether they were naive datetimes taken
    as they are."""
    if isinstance(times, (pd.Series, pd.Index)) and isinstance(times.dtype, pd.DatetimeTZDtype):
        stamps = pd.DatetimeIndex(times)
    else:
        array = np.atleast_1d(np.asarray(times.values if isinstance(times, (pd.Series, pd.Index)) else times))
        if array.dtype.kind in "iuf":
            return array.astype(np.int64), False
        stamps = pd.DatetimeIndex(array if array.dtype.kind == "M" else pd.to_datetime(list(array)))
    naive = stamps.tz is None
    if naive and timezone is not None:
        stamps = stamps.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        naive = False
    if stamps.tz is not None:
        stamps = stamps.tz_convert("UTC").tz_localize(None)
    return np.asarray((stamps - pd.Timestamp(0)) // pd.Timedelta(seconds=1), dtype=np.int64), naive


def _utc(seconds: Any) -> str:
    return str(np.datetime64(int(seconds), "s")).replace("T", " ")


def _cached_snapshot(model_id: str, cache_dir: str | Path | None) -> Path:
    """The local snapshot of a hub model id (never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as error:
        raise CheckpointError(
            f"{model_id!r} is neither an export folder nor a model in the Hugging Face cache "
            f"({str(error).splitlines()[0]}); download it once (huggingface-cli download {model_id}) or pass "
            "cache_dir="
        ) from None
