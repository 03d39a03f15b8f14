"""Timestamps: epoch numbers (unit by magnitude) or ISO 8601 text, naive or with an offset; naive local
clocks converted to UTC; one clock per instrument."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stage1_ds.data.ingest.sources import FileReport
from stage1_ds.errors import DataError

TZ_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")  # no capture group: pandas warns on one


#: The seconds of an unreadable timestamp (a sentinel no date of 1990-2100 takes).
NAT_SECONDS = np.iinfo(np.int64).min
#: Timestamps must fall in [1990-01-01, 2100-01-01) UTC: what epoch numbers are read as decides their unit.
EARLIEST_UTC, LATEST_UTC = 631_152_000, 4_102_444_800
EPOCH_UNITS = {"seconds": 1, "milliseconds": 10**3, "microseconds": 10**6, "nanoseconds": 10**9}


class ColumnError(Exception):
    """A timestamp column that cannot be read as a whole; ``row`` is an example row."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


@dataclass(frozen=True)
class ParsedTimes:
    """Whole seconds since the epoch (`NAT_SECONDS` where unreadable), the rows with a sub-second part, whether the
    times are UTC by construction, how many of the column's units make a second (epoch numbers), and the
    rows whose clock (naive or with an offset) differs from the column's first row."""

    seconds: np.ndarray
    fraction: np.ndarray
    aware: bool
    unit_factor: int
    mixed: np.ndarray | None = None


def parse_time(text: pd.Series, column: str) -> ParsedTimes:
    """Epoch numbers (UTC; the unit by magnitude, see the module docstring) or ISO 8601 text (with an offset:
    UTC; naive: as given). Within one column naive and offset times may not mix: rows of the other clock
    than the first row's are marked ``mixed``.

    Raises:
        ColumnError: epoch numbers in two units, or none a date of 1990-2100 in any unit (with the
            YYYYMMDDHHMMSS shape named).
    """
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().mean() > 0.5:
        return parse_epoch(numeric.to_numpy(np.float64), column)
    cells = text.astype(str).str.strip()
    has_offset = cells.str.contains(TZ_OFFSET).to_numpy(bool)
    filled = (cells != "").to_numpy(bool)
    aware = bool(has_offset[np.argmax(filled)]) if filled.any() else False
    mixed = filled & (has_offset != aware)
    parsed = pd.to_datetime(cells.where(~mixed, ""), format="ISO8601", errors="coerce", utc=aware)
    return ParsedTimes(*to_seconds(parsed), aware, 1, mixed)


def parse_epoch(values: np.ndarray, column: str) -> ParsedTimes:
    unit = np.full(len(values), -1)
    for k, factor in enumerate(EPOCH_UNITS.values()):
        unit[(values >= EARLIEST_UTC * factor) & (values < LATEST_UTC * factor)] = k
    names = list(EPOCH_UNITS)
    seen = np.unique(unit[unit >= 0])
    if len(seen) > 1:
        first = int(np.flatnonzero(unit >= 0)[0])
        other = int(np.flatnonzero((unit >= 0) & (unit != unit[first]))[0])
        raise ColumnError(
            f"column {column!r} holds epoch times in two units ({names[unit[first]]} from its first value, "
            f"{names[unit[other]]} here); one file must use one unit",
            other,
        )
    if len(seen) == 0:
        row = int(np.argmax(np.isfinite(values)))
        digits = f"{values[row]:.0f}"
        shaped = len(digits) == 14 and not pd.isna(
            pd.to_datetime(digits, format="%Y%m%d%H%M%S", errors="coerce")
        )
        raise ColumnError(
            f"not a timestamp this reader knows in column {column!r}: "
            + (
                f"{digits} looks like YYYYMMDDHHMMSS; write it as ISO 8601 ({pd.to_datetime(digits, format='%Y%m%d%H%M%S')}) "
                "or as epoch seconds"
                if shaped
                else "epoch numbers are read as seconds, milliseconds, microseconds or nanoseconds of a date in "
                "1990-2100, and these are none"
            ),
            row,
        )
    factor = list(EPOCH_UNITS.values())[int(seen[0])]
    out = np.full(len(values), NAT_SECONDS, dtype=np.int64)
    known = unit >= 0
    out[known] = (values[known] // factor).astype(np.int64)
    out[np.isfinite(values) & ~known] = EARLIEST_UTC - 60  # a number, but no date of 1990-2100: out of range
    return ParsedTimes(out, known & (values % factor != 0), True, factor)


def to_seconds(parsed: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Whole seconds of parsed times at any resolution pandas chose (years beyond 2262 included; `NAT_SECONDS`
    where unreadable), and where the text had a sub-second part (never silently floored)."""
    unit = parsed.dt.unit
    factor = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    values = parsed.to_numpy(dtype=f"datetime64[{unit}]").astype(np.int64)
    out = np.full(len(values), NAT_SECONDS, dtype=np.int64)
    ok = values != NAT_SECONDS
    out[ok] = values[ok] // factor
    return out, ok & (values % factor != 0)


def to_utc(stamps: np.ndarray, timezone: str, display: str) -> np.ndarray:
    """Naive local seconds of ``timezone`` to UTC seconds; times that do not exist or occur twice on that
    clock (daylight-saving changes) become malformed (``NAT_SECONDS``)."""
    ok = stamps != NAT_SECONDS
    local = pd.DatetimeIndex(pd.to_datetime(stamps[ok], unit="s"))
    try:
        converted = local.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT").tz_convert("UTC")
    except Exception as error:  # an unknown zone name raises from zoneinfo or pytz
        raise DataError(
            f"--timezone {timezone!r}: not an IANA time zone name ({error}) for {display}"
        ) from None
    out = np.full(len(stamps), NAT_SECONDS, dtype=np.int64)
    out[ok] = to_seconds(pd.Series(converted.tz_localize(None)))[0]
    return out


UTC_CLOCK = "UTC (timestamps with an offset or epoch time)"
NAIVE_CLOCK = "as given (naive)"
CLOCK_FIX = (
    "one instrument's timestamps must share a clock: give every timestamp a UTC offset (or epoch time), or "
    "none, and pass --timezone ZONE to convert naive ones to UTC (HistData: America/New_York)"
)


def clock_kind(clock: str) -> str:
    """``naive`` for timestamps taken as given, ``utc`` for offsets, epoch times and converted ones."""
    return "naive" if clock == NAIVE_CLOCK else "utc"


def check_clocks(instrument: str, reports: list[FileReport]) -> None:
    """One instrument's files must share a clock: all UTC (offsets, epoch times, or naive ones converted
    with --timezone) or all naive as given; otherwise their bars would be merged hours apart.

    Raises:
        DataError: naming a file of each clock and the fix.
    """
    kinds = {clock_kind(r.clock): r.path for r in reports}
    if len(kinds) > 1:
        raise DataError(
            f"instrument {instrument}: {kinds['utc']} has UTC timestamps (offsets or epoch time) and "
            f"{kinds['naive']} naive ones; {CLOCK_FIX}"
        )


def duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"
