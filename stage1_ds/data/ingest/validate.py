"""Checks of rows and files: bad rows by reason, a cut last line, stray dates, the bar interval, overlapping
parts of one instrument, and the merge of one instrument's rows (`clean_m1`)."""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stage1_ds.data.ingest.sources import FileReport, M1Rows
from stage1_ds.data.ingest.timestamps import NAT_SECONDS, duration
from stage1_ds.data.timeframes import Bars, volume_unit, volume_units
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)

#: Files (or an archive's members) of one instrument may share this share of the timestamps of the smaller
#: one with other bars at the shared minutes (a few shared minutes where files meet, or a source's doubled
#: hour); more is bid and ask quotes, or two instruments under one name.
MAX_OVERLAP = 0.1


@dataclass(frozen=True)
class Overlap:
    """Two parts (files, or an archive's members) of one instrument sharing more than `MAX_OVERLAP` of the
    smaller one's timestamps: how many, and the first shared minute whose OHLC differs (None when every
    shared minute holds the same bar: overlapping parts of one series, read once)."""

    first: int
    second: int
    shared: int
    smaller: int
    disagree_at: int | None

    @property
    def share(self) -> float:
        return self.shared / self.smaller

    def where(self) -> str:
        """The first disagreeing minute, as a date and time of the data clock."""
        assert self.disagree_at is not None
        return f"{pd.Timestamp(self.disagree_at, unit='s'):%Y-%m-%d %H:%M}"


def overlaps(parts: list[M1Rows]) -> list[Overlap]:
    """Every pair of parts sharing more than `MAX_OVERLAP` of the smaller one's timestamps, each with the
    first shared minute whose prices differ (to 1e-9 relative)."""
    found = []
    for i, j in itertools.combinations(range(len(parts)), 2):
        shared, at_i, at_j = np.intersect1d(parts[i].start, parts[j].start, return_indices=True)
        smaller = min(len(parts[i].start), len(parts[j].start))
        if not smaller or len(shared) <= MAX_OVERLAP * smaller:
            continue
        same = np.isclose(parts[i].ohlc[at_i], parts[j].ohlc[at_j], rtol=1e-9, atol=0.0).all(axis=1)
        differ = shared[~same]
        found.append(Overlap(i, j, len(shared), smaller, int(differ[0]) if len(differ) else None))
    return found


def check_parts(name: str, parts: list[M1Rows], reports: list[FileReport]) -> None:
    """Files of one instrument are parts of one series: they cover different times (a few shared minutes
    where files meet, or a source's doubled hour, are duplicates), or overlap with the same bars (weekly
    parts sharing a day: read once, said in one line). Files that share many minutes with other prices,
    whose names say different quote sides, or whose symbol columns name different instruments are two
    series, which no de-duplication makes one.

    Raises:
        DataError: naming the two files, what they share, the first minute their bars differ, and the fix.
    """
    symbols = {r.path: r.symbol for r in reports if r.symbol is not None}
    if len(set(symbols.values())) > 1:
        listed = ", ".join(f"{path} ({symbol})" for path, symbol in symbols.items())
        raise DataError(
            f"instrument {name}: its files' symbol columns name different instruments ({listed}); prepare "
            "each under its own --instrument"
        )
    for overlap in overlaps(parts):
        first, second = reports[overlap.first], reports[overlap.second]
        pair = sorted({r.side for r in (first, second) if r.side is not None})
        if overlap.disagree_at is None and len(pair) < 2:
            log.info(
                "%s: %s and %s share %d minutes with the same bars: read once",
                name,
                first.path,
                second.path,
                overlap.shared,
            )
            continue
        what = " and ".join(pair) + " quotes" if len(pair) > 1 else "bid and ask quotes"
        differ = "" if overlap.disagree_at is None else f", their bars differing first at {overlap.where()}"
        raise DataError(
            f"instrument {name}: {first.path} and {second.path} share {overlap.shared:,} of their "
            f"timestamps ({overlap.share:.0%} of the smaller){differ}: {what}, or two instruments under one "
            "name? One instrument's files must not overlap with other bars: prepare each under its own "
            "--instrument"
        )
    sides = sorted({r.side for r in reports if r.side is not None})
    if len(sides) > 1:
        log.warning(
            "%s: files of different quote sides (%s) are joined into one series", name, ", ".join(sides)
        )


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
    "last line perhaps cut short (no newline at the end of the file, and the line lacks a field, a digit or a "
    "decimal the lines before it have)"
)
#: Lines before the last that a possibly cut last line is compared with.
CUT_SAMPLE = 200
_NUMBER = re.compile(rb"[+-]?(\d+)(?:\.(\d*))?(?:[eE][+-]?\d+)?")


def _decimals(field: bytes) -> int | None:
    """Digits after the decimal point of a plain number (0 for an integer); None for anything else."""
    match = _NUMBER.fullmatch(field)
    return None if match is None else len(match.group(2) or b"")


def _looks_whole(field: bytes, before: list[bytes]) -> bool:
    """A field of the last line is whole when it is written to the precision of the same field in the lines
    before it (as many decimals as the most precise of them; ``1.1459`` of ``1.14599`` is cut however the
    file writes its zeros) or, for integers and text, when it is no shorter than the shortest of them."""
    own, decimals = _decimals(field), [_decimals(f) for f in before]
    numbers = [d for d in decimals if d is not None]
    if own is not None and len(numbers) == len(decimals) and max(numbers, default=0) > 0:
        return own >= max(numbers)
    return len(field) >= min((len(f) for f in before), default=0)


def cut_last_row(text: bytes, table: pd.DataFrame, delimiter: str, header_lines: int) -> np.ndarray:
    """(N,) bool, true for the table's last row when it is the file's last line, the file does not end with
    a newline, and the line is not provably whole: it has fewer fields than the line before it, or a field
    written to less precision than in the `CUT_SAMPLE` lines before it (`_looks_whole`). A download or copy
    that stopped inside a number (``1.10520`` cut to ``1.105``), or inside any column, would otherwise pass
    as a whole row."""
    cut = np.zeros(len(table), dtype=bool)
    if not text or text.endswith((b"\n", b"\r")) or len(table) < 3:
        return cut
    lines = [line.strip() for line in text.split(b"\n") if line.strip()]
    if int(table.index[-1]) != len(lines) - header_lines - 1:
        return cut  # the last line is not one of the table's rows (another symbol's, or side's)
    sep = delimiter.encode()
    last = lines[-1].split(sep)
    before = [line.split(sep) for line in lines[max(header_lines, len(lines) - 1 - CUT_SAMPLE) : -1]]
    if not before:
        return cut
    if len(last) < len(before[-1]):
        cut[-1] = True
        return cut
    for k, field in enumerate(last):
        column = [fields[k].strip() for fields in before if len(fields) > k]
        if column and not _looks_whole(field.strip(), column):
            cut[-1] = True
            break
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
