"""Read raw 1-minute bars: HistData ASCII files (plain or zipped) and generic CSV with a header.

Every reader returns `M1Rows` in file order together with a `FileReport`; sorting, de-duplication and
merging of several files of one instrument happen in `clean_m1`. Bad rows either stop the run with the
file, line number and row text (``on_bad_rows="error"``) or are dropped and counted (``"drop"``).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from stage1_ds.data.timeframes import Bars
from stage1_ds.errors import DataError


class InputFormat(StrEnum):
    HISTDATA = "histdata"
    CSV = "csv"


class OnBadRows(StrEnum):
    ERROR = "error"
    DROP = "drop"


@dataclass(frozen=True)
class CsvColumns:
    """Column names of a generic CSV file (``--format csv``)."""

    timestamp: str = "timestamp"
    open: str = "open"
    high: str = "high"
    low: str = "low"
    close: str = "close"
    volume: str | None = "volume"
    delimiter: str = ","


@dataclass(frozen=True)
class SourceFile:
    path: Path
    instrument: str
    format: InputFormat


@dataclass
class FileReport:
    path: str
    sha256: str
    rows_read: int = 0
    rows_kept: int = 0
    bad_rows_dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class M1Rows:
    """1-minute rows as read, in file order. ``start`` is the minute's start in seconds of the data clock."""

    start: np.ndarray
    ohlc: np.ndarray
    volume: np.ndarray


_HISTDATA_NAME = re.compile(r"(?:HISTDATA_COM_ASCII_|DAT_ASCII_)([A-Z0-9]+)_M1", re.IGNORECASE)
_DATA_SUFFIXES = (".zip", ".csv", ".txt")
_OHLC = ("open", "high", "low", "close")


def discover_inputs(paths: Iterable[Path], fmt: InputFormat, instrument: str | None) -> list[SourceFile]:
    """Expand files and folders into `SourceFile`s, each with its instrument name.

    Raises:
        DataError: a path does not exist, a folder holds no data file, or an instrument name cannot be
            derived (a non-HistData file name without ``--instrument``).
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in _DATA_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"{path}: folder holds no data file (expected *.zip, *.csv or *.txt)")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    sources = []
    for path in files:
        name = instrument
        if name is None:
            match = _HISTDATA_NAME.search(path.name)
            if match:
                name = match.group(1).upper()
            elif fmt == InputFormat.CSV:
                name = path.stem.upper()
            else:
                raise DataError(
                    f"{path}: cannot tell the instrument from the file name "
                    "(expected HISTDATA_COM_ASCII_<PAIR>_M1<YEAR>.zip or DAT_ASCII_<PAIR>_M1_<YEAR>.csv); "
                    "pass --instrument"
                )
        sources.append(SourceFile(path=path, instrument=name, format=fmt))
    return sources


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _open_text(path: Path) -> tuple[bytes, str]:
    """Return the bytes of the CSV and a display name (``zip!member`` for a member of a zip)."""
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.lower().endswith((".csv", ".txt"))]
            members = [n for n in members if _HISTDATA_NAME.search(n)] or [
                n for n in members if n.lower().endswith(".csv")
            ]
            if not members:
                raise DataError(f"{path}: zip holds no CSV file (expected DAT_ASCII_<PAIR>_M1_<YEAR>.csv)")
            return archive.read(members[0]), f"{path}!{members[0]}"
    return path.read_bytes(), str(path)


def read_source(
    source: SourceFile, on_bad_rows: OnBadRows, columns: CsvColumns | None = None
) -> tuple[M1Rows, FileReport]:
    """Read one file into `M1Rows`, checking every row.

    Raises:
        DataError: the file is empty, lacks a column, or (with ``on_bad_rows="error"``) has a bad row;
            the message names the file, the line and the row.
    """
    raw, display = _open_text(source.path)
    report = FileReport(path=str(source.path), sha256=sha256_of(source.path))
    if not raw.strip():
        raise DataError(f"{display}: file is empty (expected 1-minute OHLC rows)")
    if source.format == InputFormat.HISTDATA:
        table, first_line = _read_histdata_table(raw, display), 1
        stamps = _parse_histdata_time(table["timestamp"])
        has_volume = True
    else:
        columns = columns or CsvColumns()
        table, first_line = _read_csv_table(raw, display, columns), 2
        stamps = _parse_generic_time(table["timestamp"])
        has_volume = "volume" in table
    report.rows_read = len(table)

    prices = np.stack([pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in _OHLC], axis=1)
    if has_volume:
        volume = pd.to_numeric(table["volume"], errors="coerce").to_numpy(np.float64)
    else:
        volume = np.zeros(len(table), dtype=np.float64)

    reasons = _bad_row_reasons(stamps, prices, volume)
    bad = np.zeros(len(table), dtype=bool)
    for reason, mask in reasons.items():
        mask &= ~bad  # count each row under its first reason only
        if mask.any():
            report.bad_rows_dropped[reason] = int(mask.sum())
            bad |= mask
    if on_bad_rows == OnBadRows.ERROR and bad.any():
        row = int(np.flatnonzero(bad)[0])  # the first bad line of the file, whatever its reason
        reason = next(r for r, mask in reasons.items() if mask[row])
        line, text = _source_line(raw, row, header_lines=first_line - 1)
        raise DataError(
            f"{display}, line {line}: {reason}: {text!r} (use --on-bad-rows drop to drop such rows)"
        )
    keep = ~bad
    report.rows_kept = int(keep.sum())
    rows = M1Rows(start=stamps[keep], ohlc=prices[keep], volume=volume[keep])
    return rows, report


def _read_histdata_table(raw: bytes, display: str) -> pd.DataFrame:
    names = ["timestamp", *_OHLC, "volume"]
    try:
        return pd.read_csv(
            io.BytesIO(raw), sep=";", header=None, names=names, dtype=str, keep_default_na=False
        )
    except pd.errors.ParserError as error:
        raise DataError(
            f"{display}: {error} (expected 'YYYYMMDD HHMMSS;open;high;low;close;volume')"
        ) from None


def _read_csv_table(raw: bytes, display: str, columns: CsvColumns) -> pd.DataFrame:
    try:
        table = pd.read_csv(io.BytesIO(raw), sep=columns.delimiter, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        raise DataError(f"{display}: {error}") from None
    wanted = {
        "timestamp": columns.timestamp,
        "open": columns.open,
        "high": columns.high,
        "low": columns.low,
        "close": columns.close,
    }
    missing = [name for name in wanted.values() if name not in table.columns]
    if missing:
        raise DataError(
            f"{display}, line 1: missing column(s) {missing}; the header has {list(table.columns)} "
            "(set the names with --timestamp-column, --open-column, ... or --delimiter)"
        )
    if columns.volume is not None and columns.volume in table.columns:
        wanted["volume"] = columns.volume
    return table[list(wanted.values())].set_axis(list(wanted), axis=1)


def _parse_histdata_time(text: pd.Series) -> np.ndarray:
    parsed = pd.to_datetime(text, format="%Y%m%d %H%M%S", errors="coerce")
    return _to_seconds(parsed)


def _parse_generic_time(text: pd.Series) -> np.ndarray:
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().mean() > 0.5:
        # Epoch time: milliseconds when the magnitude says so (1e11 s is the year 5138).
        values = numeric.to_numpy(np.float64)
        is_ms = np.nanmedian(np.abs(values)) > 1e11
        seconds = values / 1000.0 if is_ms else values
        out = np.full(len(values), np.iinfo(np.int64).min, dtype=np.int64)
        finite = np.isfinite(seconds) & (seconds == np.round(seconds))
        out[finite] = seconds[finite].astype(np.int64)
        return out
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    return _to_seconds(parsed)


_NAT = np.iinfo(np.int64).min


def _to_seconds(parsed: pd.Series) -> np.ndarray:
    values = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    out = np.full(len(values), _NAT, dtype=np.int64)
    ok = values != _NAT
    out[ok] = values[ok] // 1_000_000_000
    # Sub-second parts must not be silently floored: mark them as not on a whole minute.
    out[ok & (values % 1_000_000_000 != 0)] = 1
    return out


def _bad_row_reasons(stamps: np.ndarray, prices: np.ndarray, volume: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of bad rows by reason, in the order they are checked."""
    malformed_time = stamps == _NAT
    off_minute = ~malformed_time & (stamps % 60 != 0)
    not_finite = ~np.isfinite(prices).all(axis=1)
    with np.errstate(invalid="ignore"):
        non_positive = ~not_finite & (prices <= 0).any(axis=1)
        o, h, low, c = prices.T
        high_low = ~not_finite & ((h < np.maximum(o, c)) | (low > np.minimum(o, c)))
        bad_volume = ~np.isfinite(volume) | (volume < 0)
    return {
        "malformed timestamp": malformed_time,
        "timestamp not on a whole minute": off_minute,
        "missing or non-numeric price": not_finite,
        "non-positive price": non_positive,
        "OHLC violation (high < max(open, close) or low > min(open, close))": high_low,
        "missing, non-numeric or negative volume": bad_volume,
    }


def _source_line(raw: bytes, row: int, header_lines: int) -> tuple[int, str]:
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


def clean_m1(parts: list[M1Rows]) -> tuple[Bars, CleanReport]:
    """Merge rows of one instrument, sort them by time and drop duplicate timestamps (keep the first)."""
    start = np.concatenate([p.start for p in parts])
    ohlc = np.concatenate([p.ohlc for p in parts])
    volume = np.concatenate([p.volume for p in parts])
    out_of_order = int((np.diff(start) < 0).sum()) if len(start) > 1 else 0
    order = np.argsort(start, kind="stable")  # stable: the first of equal timestamps stays first
    start, ohlc, volume = start[order], ohlc[order], volume[order]
    keep = np.r_[True, start[1:] != start[:-1]] if len(start) else np.zeros(0, dtype=bool)
    bars = Bars(
        start=start[keep],
        ohlc=ohlc[keep],
        volume=volume[keep],
        count=np.ones(int(keep.sum()), dtype=np.int32),
    )
    return bars, CleanReport(duplicates_dropped=int((~keep).sum()), out_of_order_rows=out_of_order)
