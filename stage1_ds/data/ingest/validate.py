"""Checks of rows and files: bad rows by reason, a cut last line, stray dates, the bar interval, overlapping
files of one instrument, how bars are stamped, and the merge of one instrument's rows (`clean_m1`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stage1_ds.data.ingest.sources import M1Rows
from stage1_ds.data.ingest.timestamps import NAT_SECONDS, duration
from stage1_ds.data.timeframes import Bars, volume_unit, volume_units
from stage1_ds.errors import DataError

#: Files (or an archive's members) of one instrument may share at most this share of the timestamps of the
#: smaller one: more is bid and ask quotes, or two instruments under one name.
MAX_OVERLAP = 0.1


def overlapping_pair(starts: list[np.ndarray]) -> tuple[int, int, int, int] | None:
    """The first pair (i, j) of stamp arrays sharing more than `MAX_OVERLAP` of the smaller one's stamps,
    with the count shared and the smaller size; None when no pair does (a few shared minutes where files
    meet, or a source's doubled hour, are duplicates, not another series)."""
    for i, j in itertools.combinations(range(len(starts)), 2):
        shared = len(np.intersect1d(starts[i], starts[j]))
        smaller = min(len(starts[i]), len(starts[j]))
        if smaller and shared > MAX_OVERLAP * smaller:
            return i, j, shared, smaller
    return None


#: Fewer consecutive stamps than this and the bar interval is not measured (too few to tell).
INTERVAL_SAMPLE = 20


def check_bar_interval(start: np.ndarray, display: str) -> None:
    """Refuse bars that are not 1-minute bars: the most common spacing of consecutive distinct stamps (less
    than a day apart, so weekends and gaps do not count) must be 60 seconds.

    Raises:
        DataError: naming the file, the interval found and how many spacings have it.
    """
    stamps = np.unique(start[start != NAT_SECONDS])
    spacing = np.diff(stamps)
    spacing = spacing[spacing < 86_400]
    if len(spacing) < INTERVAL_SAMPLE:
        return
    values, counts = np.unique(spacing, return_counts=True)
    dominant = int(values[np.argmax(counts)])
    if dominant != 60:
        share = counts.max() / len(spacing)
        raise DataError(
            f"{display}: its bars are {duration(dominant)} apart ({share:.0%} of {len(spacing):,} consecutive "
            "stamps); stage1 prepare reads 1-minute bars: give the file of 1-minute bars, or resample these "
            "to 1 minute first"
        )


CUT_SHORT = (
    "last line cut short (no newline at the end of the file, its last field shorter than in any other row)"
)


def cut_last_row(text: bytes, table: pd.DataFrame) -> np.ndarray:
    """(N,) bool, true for the last row when the file does not end with a newline and the row's last field
    has fewer characters than the same field of every other row: a download or copy that stopped inside a
    number (``1.1052`` cut to ``1.10``) would otherwise pass as a whole row."""
    cut = np.zeros(len(table), dtype=bool)
    if not text or text.endswith((b"\n", b"\r")) or len(table) < 3:
        return cut
    lengths = table.iloc[:, -1].astype(str).str.len().to_numpy()
    cut[-1] = lengths[-1] < lengths[:-1].min()
    return cut


#: A run of fewer than `STRAY_ROWS` rows more than `STRAY_GAP_DAYS` days from every other row is a stray
#: (one row dated 2099 in a file of 2019): a typo, not a market that traded for a few minutes.
STRAY_GAP_DAYS = 30
STRAY_ROWS = 60


def stray_rows(stamps: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """(N,) bool: the ``usable`` rows in runs of fewer than `STRAY_ROWS` rows that are more than
    `STRAY_GAP_DAYS` days from the rows before and after them, when some other run is longer."""
    rows = np.flatnonzero(usable)
    order = rows[np.argsort(stamps[rows], kind="stable")]
    stray = np.zeros(len(stamps), dtype=bool)
    cuts = np.flatnonzero(np.diff(stamps[order]) > STRAY_GAP_DAYS * 86_400) + 1
    runs = np.split(order, cuts)
    if len(runs) < 2 or max(len(run) for run in runs) < STRAY_ROWS:
        return stray
    for run in runs:
        if len(run) < STRAY_ROWS:
            stray[run] = True
    return stray


def bad_row_reasons(
    stamps: np.ndarray,
    prices: np.ndarray,
    volume: np.ndarray,
    timezone: str | None,
    outside: np.ndarray,
    fraction: np.ndarray,
    mixed: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Masks of bad rows by reason, in the order they are checked (``outside``: dates not in 1990-2100;
    ``fraction``: a sub-second part; ``mixed``: naive among offset timestamps or the reverse)."""
    malformed_time = (stamps == NAT_SECONDS) & ~outside
    stray = stray_rows(stamps, ~malformed_time & ~outside)
    off_minute = ~malformed_time & ~outside & (fraction | (stamps % 60 != 0))
    not_finite = ~np.isfinite(prices).all(axis=1)
    with np.errstate(invalid="ignore"):
        non_positive = ~not_finite & (prices <= 0).any(axis=1)
        o, h, low, c = prices.T
        high_low = ~not_finite & ((h < np.maximum(o, c)) | (low > np.minimum(o, c)))
        bad_volume = ~np.isfinite(volume) | (volume < 0)
    time_reason = (
        "malformed timestamp"
        if timezone is None
        else f"malformed timestamp, or not a unique time in {timezone}"
    )
    return {
        "naive and offset timestamps mixed in one file (give every timestamp an offset, or none)": (
            np.zeros(len(stamps), dtype=bool) if mixed is None else mixed
        ),
        "date outside 1990-2100": outside,
        time_reason: malformed_time,
        f"timestamp far from the rest of the file (over {STRAY_GAP_DAYS} days from every other row)": stray,
        "timestamp not on a whole minute": off_minute,
        "missing or non-numeric price": not_finite,
        "non-positive price": non_positive,
        "OHLC violation (high < max(open, close) or low > min(open, close))": high_low,
        "missing, non-numeric or negative volume": bad_volume,
    }


def source_line(raw: bytes, row: int, header_lines: int) -> tuple[int, str]:
    """The 1-based line number and text of data row ``row`` (the parser skips blank lines, so count them)."""
    seen = -header_lines
    for number, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        if seen == row:
            return number, text.decode("utf-8", errors="replace").rstrip("\r")
        seen += 1
    return row + header_lines + 1, ""


@dataclass(frozen=True)
class CleanReport:
    duplicates_dropped: int
    out_of_order_rows: int
    volume_unit: float


#: A gap longer than this ends a trading session (`stamp_evidence`).
SESSION_GAP_SECONDS = 30 * 60


@dataclass(frozen=True)
class StampEvidence:
    """How a file's trading sessions begin and end on the minute of the hour: boundaries that fit bars
    stamped with their start (the first bar at :00, the last at :59) and with their end (:01, :00)."""

    sessions: int
    start_like: int
    end_like: int

    @property
    def looks_end_stamped(self) -> bool:
        """At least four session boundaries fit end stamps, more than twice as many as fit start stamps."""
        return self.end_like >= 4 and self.end_like > 2 * self.start_like


def stamp_evidence(start: np.ndarray) -> StampEvidence:
    """Sessions (runs of bars without a gap over 30 minutes, at least 30 bars) and where they begin and end
    on the hour. Markets open and close on the hour (FX weekly at 17:00 New York, futures' daily breaks), so
    start-stamped bars begin a session at :00 and end it at :59, end-stamped ones at :01 and :00."""
    if len(start) < 2:
        return StampEvidence(0, 0, 0)
    cuts = np.flatnonzero(np.diff(start) > SESSION_GAP_SECONDS) + 1
    begins, ends = np.r_[0, cuts], np.r_[cuts - 1, len(start) - 1]
    long = ends - begins + 1 >= 30
    first = (start[begins[long]] // 60) % 60
    last = (start[ends[long]] // 60) % 60
    return StampEvidence(
        int(long.sum()),
        int((first == 0).sum() + (last == 59).sum()),
        int((first == 1).sum() + (last == 0).sum()),
    )


def clean_m1(parts: list[M1Rows]) -> tuple[Bars, CleanReport]:
    """Merge rows of one instrument, sort them by time and drop duplicate timestamps (keep the first);
    volumes in whole units of `volume_unit`."""
    start = np.concatenate([p.start for p in parts])
    ohlc = np.concatenate([p.ohlc for p in parts])
    volume = np.concatenate([p.volume for p in parts])
    out_of_order = int((np.diff(start) < 0).sum()) if len(start) > 1 else 0
    order = np.argsort(start, kind="stable")  # stable: the first of equal timestamps stays first
    start, ohlc, volume = start[order], ohlc[order], volume[order]
    keep = np.r_[True, start[1:] != start[:-1]] if len(start) else np.zeros(0, dtype=bool)
    unit = volume_unit(volume[keep], start[keep])
    bars = Bars(
        start=start[keep],
        ohlc=ohlc[keep],
        volume=volume[keep],
        count=np.ones(int(keep.sum()), dtype=np.int32),
        units=volume_units(volume[keep], unit),
    )
    return bars, CleanReport(int((~keep).sum()), out_of_order, unit)
