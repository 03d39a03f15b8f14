"""`stage1 prepare`: raw 1-minute bars (or the synthetic market) to a prepared data folder."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stage1_ds.config import SPLIT_FRACTIONS, WINDOW_BARS
from stage1_ds.data.features import FEATURE_NAMES, power_of_two_scale
from stage1_ds.data.ingest import (
    CsvColumns,
    FileReport,
    InputFormat,
    M1Rows,
    OnBadRows,
    SourceFile,
    clean_m1,
    discover_inputs,
    read_source,
)
from stage1_ds.data.store import (
    FORMAT_VERSION,
    SPLITS,
    SplitRange,
    split_to_json,
    write_bars,
    write_json,
)
from stage1_ds.data.synthetic import SYNTHETIC_INSTRUMENT, generate_synthetic_m1
from stage1_ds.data.timeframes import BASE, TIMEFRAMES, Bars, Timeframe, aggregate
from stage1_ds.errors import DataError
from stage1_ds.version import code_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    """How raw bars become a prepared folder.

    Attributes:
        split_fractions: train, val, test shares of each instrument's 1-minute rows, in time order.
        window_bars: the longest window (bars per timeframe) the data will serve; it sets the gap between
            splits and the lag of the scale statistics.
        on_bad_rows: stop at the first bad row, or drop bad rows and count them.
        csv_columns: column names of generic CSV input.
        force: replace an existing prepared folder.
    """

    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS
    window_bars: int = WINDOW_BARS
    on_bad_rows: OnBadRows = OnBadRows.ERROR
    csv_columns: CsvColumns = field(default_factory=CsvColumns)
    force: bool = False

    def __post_init__(self) -> None:
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise DataError(
                f"split fractions {list(fractions)}: expected three positive numbers (train val test) "
                "that sum to 1"
            )
        if self.window_bars < 2:
            raise DataError(f"window bars {self.window_bars}: expected at least 2")


def prepare_files(
    inputs: list[Path],
    out: Path,
    fmt: InputFormat = InputFormat.HISTDATA,
    instrument: str | None = None,
    options: PrepareOptions | None = None,
) -> dict[str, Any]:
    """Read, clean and derive every timeframe of the given files; write the prepared folder.

    Returns:
        The manifest that was written.
    """
    options = options or PrepareOptions()
    _claim_output(out, options.force)
    sources = discover_inputs(inputs, fmt, instrument)
    by_instrument: dict[str, list[SourceFile]] = {}
    for source in sources:
        by_instrument.setdefault(source.instrument, []).append(source)

    m1: dict[str, Bars] = {}
    records: dict[str, dict[str, Any]] = {}
    for name, files in by_instrument.items():
        parts: list[M1Rows] = []
        reports: list[FileReport] = []
        for source in tqdm(files, desc=f"reading {name}", unit="file", disable=None, leave=False):
            rows, report = read_source(source, options.on_bad_rows, options.csv_columns)
            parts.append(rows)
            reports.append(report)
        bars, cleaning = clean_m1(parts)
        if len(bars) == 0:
            raise DataError(f"instrument {name}: no valid 1-minute rows in {[str(f.path) for f in files]}")
        m1[name] = bars
        records[name] = {
            "sources": [asdict(r) for r in reports],
            "duplicates_dropped": cleaning.duplicates_dropped,
            "out_of_order_rows": cleaning.out_of_order_rows,
            "bad_rows_dropped": dict(sum((Counter(r.bad_rows_dropped) for r in reports), Counter())),
            "has_volume": bool(np.any(bars.volume != 0)),
        }
        if cleaning.duplicates_dropped:
            log.warning(
                "%s: dropped %d duplicate timestamps (kept the first of each)",
                name,
                cleaning.duplicates_dropped,
            )
        if records[name]["bad_rows_dropped"]:
            log.warning("%s: dropped bad rows: %s", name, records[name]["bad_rows_dropped"])
    return _write_prepared(out, m1, records, options, synthetic=None)


def prepare_synthetic(
    out: Path, days: int, seed: int, options: PrepareOptions | None = None
) -> dict[str, Any]:
    """Write a prepared folder of the deterministic synthetic market (the embedded default data)."""
    options = options or PrepareOptions()
    _claim_output(out, options.force)
    bars = generate_synthetic_m1(days, seed)
    record = {
        "sources": [],
        "duplicates_dropped": 0,
        "out_of_order_rows": 0,
        "bad_rows_dropped": {},
        "has_volume": True,
    }
    return _write_prepared(
        out,
        {SYNTHETIC_INSTRUMENT: bars},
        {SYNTHETIC_INSTRUMENT: record},
        options,
        synthetic={"days": days, "seed": seed},
    )


def _claim_output(out: Path, force: bool) -> None:
    if (out / "manifest.json").exists():
        if not force:
            raise DataError(f"{out}: already holds prepared data; pass --force to replace it")
        # The manifest goes first, so an interrupted rewrite never looks complete.
        (out / "manifest.json").unlink()
        shutil.rmtree(out / "bars", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_prepared(
    out: Path,
    m1: dict[str, Bars],
    records: dict[str, dict[str, Any]],
    options: PrepareOptions,
    synthetic: dict[str, int] | None,
) -> dict[str, Any]:
    derived: dict[str, dict[Timeframe, Bars]] = {}
    stats: dict[str, Any] = {
        "window_bars": options.window_bars,
        "lag_bars": options.window_bars // 2,
        "instruments": {},
    }
    for name in tqdm(m1, desc="deriving timeframes", unit="instrument", disable=None, leave=False):
        by_tf = {tf: aggregate(m1[name], tf) for tf in TIMEFRAMES}
        derived[name] = by_tf
        gap = _longest_window_span(by_tf, options.window_bars, name)
        splits = _split_ranges(by_tf[BASE], options.split_fractions, gap, name)
        records[name].update(
            time_range_utc=[
                str(np.datetime64(int(by_tf[BASE].start[0]), "s")),
                str(np.datetime64(int(by_tf[BASE].start[-1]) + 60, "s")),
            ],
            gap_seconds=gap,
            splits={s: split_to_json(r) for s, r in splits.items()},
            rows={tf.value: _rows_per_split(by_tf[tf], tf, splits) for tf in TIMEFRAMES},
        )
        stats["instruments"][name] = _fit_stats(by_tf, splits["train"], options.window_bars // 2)

    offsets = write_bars(out, derived)
    for name in records:
        records[name]["offsets"] = offsets[name]
    manifest = {
        "format_version": FORMAT_VERSION,
        "code_version": code_version(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "synthetic": synthetic is not None,
        "synthetic_params": synthetic,
        "timeframes": [tf.value for tf in TIMEFRAMES],
        "features": list(FEATURE_NAMES),
        "split_fractions": list(options.split_fractions),
        "window_bars": options.window_bars,
        "on_bad_rows": options.on_bad_rows.value,
        "instruments": records,
    }
    write_json(out / "stats.json", stats)
    write_json(out / "manifest.json", manifest)  # last: its presence marks a complete folder
    return manifest


def _longest_window_span(by_tf: dict[Timeframe, Bars], window_bars: int, name: str) -> int:
    """The longest time, in seconds, that ``window_bars`` consecutive bars of any timeframe cover."""
    longest = 0
    for tf, bars in by_tf.items():
        if len(bars) < window_bars:
            raise DataError(
                f"instrument {name}: only {len(bars)} {tf.value} bars, fewer than one window of "
                f"{window_bars}; give more data or a smaller --window-bars"
            )
        start = bars.start
        span = int(np.max(start[window_bars - 1 :] - start[: len(start) - window_bars + 1])) + tf.seconds
        longest = max(longest, span)
    return longest


def _split_ranges(
    m1: Bars, fractions: tuple[float, float, float], gap: int, name: str
) -> dict[str, SplitRange]:
    n = len(m1)
    cut1 = int(m1.start[int(n * fractions[0])])
    cut2 = int(m1.start[int(n * (fractions[0] + fractions[1]))])
    first, end = int(m1.start[0]), int(m1.start[-1]) + BASE.seconds
    ranges = {
        "train": SplitRange(first, first, cut1),
        "val": SplitRange(cut1, cut1 + gap, cut2),
        "test": SplitRange(cut2, cut2 + gap, end),
    }
    for split, r in ranges.items():
        if r.anchor_start >= r.end:
            raise DataError(
                f"instrument {name}: the {split} split ({(r.end - r.history_start) / 86400:.1f} days) is no "
                f"longer than the gap between splits ({gap / 86400:.1f} days, the longest window span); "
                "give more data, larger split fractions or a smaller --window-bars"
            )
    return ranges


def _in_range(bars: Bars, tf: Timeframe, r: SplitRange) -> np.ndarray:
    return (bars.start >= r.history_start) & (bars.start + tf.seconds <= r.end)


def _rows_per_split(bars: Bars, tf: Timeframe, splits: dict[str, SplitRange]) -> dict[str, int]:
    counts = {"total": len(bars)}
    counts.update({s: int(_in_range(bars, tf, splits[s]).sum()) for s in SPLITS})
    return counts


def _fit_stats(by_tf: dict[Timeframe, Bars], train: SplitRange, lag: int) -> dict[str, Any]:
    """Per timeframe: RMS of the log change of close over ``lag`` bars in the training split."""
    rms, scale = {}, {}
    for tf, bars in by_tf.items():
        close = np.log(bars.ohlc[_in_range(bars, tf, train), 3])
        h = max(1, min(lag, len(close) - 1))
        value = float(np.sqrt(np.mean((close[h:] - close[:-h]) ** 2))) if len(close) > 1 else 0.0
        rms[tf.value] = value
        scale[tf.value] = power_of_two_scale(value)
    return {"rms_log_change": rms, "scale": scale}


def summary_table(manifest: dict[str, Any]) -> str:
    """A plain-text table of bars per timeframe and split, and what cleaning dropped."""
    lines = [f"{'instrument':<12}{'timeframe':<10}{'total':>10}{'train':>10}{'val':>10}{'test':>10}"]
    for name, record in manifest["instruments"].items():
        for tf, rows in record["rows"].items():
            lines.append(f"{name:<12}{tf:<10}" + "".join(f"{rows[k]:>10}" for k in ("total", *SPLITS)))
        dropped = record["bad_rows_dropped"] or "none"
        lines.append(
            f"{name}: {record['duplicates_dropped']} duplicate timestamps dropped; bad rows dropped: "
            f"{dropped}; range {record['time_range_utc'][0]} .. {record['time_range_utc'][1]}"
        )
    return "\n".join(lines)
