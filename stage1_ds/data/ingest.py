"""Read raw 1-minute bars: HistData ASCII, generic CSV with a header, and exchange kline dumps (Binance).

Files are read plain or compressed (``.gz``, ``.bz2``, ``.xz``, ``.zst``), from a ``.zip`` holding one or
more CSV files, or from Parquet (``.parquet``, columns named as for CSV). Every reader returns `M1Rows` in
file order with a `FileReport`; sorting, de-duplication and merging of several files of one instrument
happen in `clean_m1`. Bad rows either stop the run with the file, line number and row text
(``on_bad_rows="error"``) or are dropped and counted (``"drop"``). A file that cannot be read at all is a
`DataError` naming it and why, never a traceback.

Clocks: naive timestamps (HistData, ISO without offset) are taken as given, or converted from
``timezone`` (IANA) to UTC when one is given; timestamps with an offset and epoch timestamps are UTC.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from stage1_ds.data.timeframes import Bars, volume_unit, volume_units
from stage1_ds.errors import DataError


class InputFormat(StrEnum):
    """How the columns of a file are laid out."""

    HISTDATA = "histdata"  # YYYYMMDD HHMMSS;open;high;low;close;volume, no header
    CSV = "csv"  # a header naming the columns (CsvColumns); also Parquet
    BINANCE = "binance"  # kline dumps: open time (ms or us), open, high, low, close, volume, close time, ...


class OnBadRows(StrEnum):
    ERROR = "error"
    DROP = "drop"


@dataclass(frozen=True)
class CsvColumns:
    """Column names of a generic CSV or Parquet file (``--format csv``)."""

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
    clock: str = ""
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
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_DATA_SUFFIXES = (".zip", ".csv", ".txt", ".parquet", *_COMPRESSED)
_OHLC = ("open", "high", "low", "close")
_BINANCE_COLUMNS = ("timestamp", *_OHLC, "volume", "close_time")
_TZ_OFFSET = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


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
                raise DataError(
                    f"{path}: folder holds no data file (expected {', '.join('*' + s for s in _DATA_SUFFIXES)})"
                )
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
            elif fmt == InputFormat.BINANCE:  # BTCUSDT-1m-2024-01.zip
                name = path.name.split("-")[0].upper()
            elif fmt != InputFormat.HISTDATA:
                name = path.name.split(".")[0].upper()
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


def _decompress_zstd(data: bytes, path: Path) -> bytes:
    """The one place that needs the optional `zstandard` package (``pip install 'stage1_ds[formats]'``)."""
    try:
        import zstandard
    except ImportError:
        raise DataError(
            f"{path}: reading .zst files needs the zstandard package: pip install 'stage1_ds[formats]'"
        ) from None
    return bytes(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read())


def read_parquet(path: Path) -> pd.DataFrame:
    """The one place that needs the optional `pyarrow` package (``pip install 'stage1_ds[formats]'``)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs the pyarrow package: pip install 'stage1_ds[formats]'"
        ) from None
    try:
        return parquet.read_table(path).to_pandas()
    except Exception as error:  # pyarrow raises its own error types for every kind of bad file
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None


_DECOMPRESS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}


def _members(path: Path, fmt: InputFormat) -> list[tuple[bytes | pd.DataFrame, str]]:
    """The tables inside a file, with display names (``zip!member`` for a member of a zip): raw CSV bytes,
    or a DataFrame for Parquet.

    Raises:
        DataError: the file is corrupt or of a kind its suffix does not say, or a zip holds no CSV.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return [(read_parquet(path), str(path))]
        if suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.lower().endswith((".csv", ".txt"))]
                if fmt == InputFormat.HISTDATA:  # the zips hold a notice .txt beside the data
                    names = [n for n in names if _HISTDATA_NAME.search(n)] or names
                names = [n for n in names if n.lower().endswith(".csv")] or names
                if not names:
                    raise DataError(f"{path}: zip holds no CSV file")
                return [(archive.read(n), f"{path}!{n}") for n in sorted(names)]
        data = path.read_bytes()
        if suffix in _DECOMPRESS:
            return [(_DECOMPRESS[suffix](data), str(path))]
        if suffix == ".zst":
            return [(_decompress_zstd(data, path), str(path))]
        return [(data, str(path))]
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError, zlib.error) as error:
        kind = {".zip": "a zip archive", ".parquet": "Parquet"}.get(suffix, f"{suffix} compressed data")
        raise DataError(f"{path}: not readable as {kind}: {error}") from None
    except ValueError as error:  # bz2 and zstandard report corrupt data as ValueError
        raise DataError(f"{path}: not readable as {suffix} compressed data: {error}") from None


def read_source(
    source: SourceFile,
    on_bad_rows: OnBadRows,
    columns: CsvColumns | None = None,
    timezone: str | None = None,
) -> tuple[M1Rows, FileReport]:
    """Read one file (every table in it) into `M1Rows`, checking every row.

    Args:
        timezone: IANA name of the clock of naive timestamps, converted to UTC; None keeps them as given.

    Raises:
        DataError: the file cannot be read, is empty, lacks a column, or (with ``on_bad_rows="error"``)
            has a bad row; the message names the file, the line and the row.
    """
    report = FileReport(path=str(source.path), sha256=sha256_of(source.path))
    parts, clocks = [], set()
    for table, display in _members(source.path, source.format):
        rows, clock = _read_table(
            table, display, source.format, columns or CsvColumns(), timezone, on_bad_rows, report
        )
        parts.append(rows)
        clocks.add(clock)
    report.clock = " + ".join(sorted(clocks))
    return (
        M1Rows(
            start=np.concatenate([p.start for p in parts]),
            ohlc=np.concatenate([p.ohlc for p in parts]),
            volume=np.concatenate([p.volume for p in parts]),
        ),
        report,
    )


def _read_table(
    raw: bytes | pd.DataFrame,
    display: str,
    fmt: InputFormat,
    columns: CsvColumns,
    timezone: str | None,
    on_bad_rows: OnBadRows,
    report: FileReport,
) -> tuple[M1Rows, str]:
    """Parse and check one table; returns its good rows and a description of its clock."""
    if isinstance(raw, pd.DataFrame):
        table, header_lines, text = _select_columns(raw.astype(str), display, columns), 1, b""
    elif not raw.strip():
        raise DataError(f"{display}: file is empty (expected 1-minute OHLC rows)")
    elif fmt == InputFormat.HISTDATA:
        table, header_lines, text = _read_histdata_table(raw, display), 0, raw
    elif fmt == InputFormat.BINANCE:
        table, header_lines = _read_binance_table(raw, display)
        text = raw
    else:
        table, header_lines, text = _read_csv_table(raw, display, columns), 1, raw
    if fmt == InputFormat.HISTDATA:
        stamps, aware = (
            _to_seconds(pd.to_datetime(table["timestamp"], format="%Y%m%d %H%M%S", errors="coerce")),
            False,
        )
    else:
        stamps, aware = _parse_time(table["timestamp"])
    clock = "UTC (timestamps with an offset or epoch time)" if aware else "as given (naive)"
    if timezone is not None and not aware:
        stamps = _to_utc(stamps, timezone, display)
        clock = f"UTC (converted from {timezone})"
    report.rows_read += len(table)

    prices = np.stack([pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in _OHLC], axis=1)
    if "volume" in table:
        volume = pd.to_numeric(table["volume"], errors="coerce").to_numpy(np.float64)
    else:
        volume = np.zeros(len(table), dtype=np.float64)

    reasons = _bad_row_reasons(stamps, prices, volume, timezone if not aware else None)
    bad = np.zeros(len(table), dtype=bool)
    for reason, mask in reasons.items():
        mask &= ~bad  # count each row under its first reason only
        if mask.any():
            report.bad_rows_dropped[reason] = report.bad_rows_dropped.get(reason, 0) + int(mask.sum())
            bad |= mask
    if on_bad_rows == OnBadRows.ERROR and bad.any():
        row = int(np.flatnonzero(bad)[0])  # the first bad line of the file, whatever its reason
        reason = next(r for r, mask in reasons.items() if mask[row])
        line, shown = _source_line(text, row, header_lines) if text else (row + 2, " ".join(table.iloc[row]))
        where = f"{display}, line {line}" if text else f"{display}, row {row + 1}"
        raise DataError(f"{where}: {reason}: {shown!r} (use --on-bad-rows drop to drop such rows)")
    keep = ~bad
    report.rows_kept += int(keep.sum())
    return M1Rows(start=stamps[keep], ohlc=prices[keep], volume=volume[keep]), clock


def _read_csv(raw: bytes, display: str, **options: object) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, **options)
    except pd.errors.ParserError as error:
        raise DataError(f"{display}: {error}") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{display}: not UTF-8 text ({error}); a compressed file needs its suffix "
            f"(.gz, .bz2, .xz, .zst, .zip)"
        ) from None


def _read_histdata_table(raw: bytes, display: str) -> pd.DataFrame:
    names = ["timestamp", *_OHLC, "volume"]
    try:
        return _read_csv(raw, display, sep=";", header=None, names=names)
    except DataError as error:
        raise DataError(f"{error} (expected 'YYYYMMDD HHMMSS;open;high;low;close;volume')") from None


def _read_binance_table(raw: bytes, display: str) -> tuple[pd.DataFrame, int]:
    """Kline rows: open time, open, high, low, close, volume, close time, ... (recent dumps add a header)."""
    first = raw.lstrip().split(b"\n", 1)[0].split(b",", 1)[0].strip()
    header_lines = 0 if first.isdigit() else 1
    table = _read_csv(raw, display, header=None, skiprows=header_lines)
    if table.shape[1] < len(_BINANCE_COLUMNS):
        raise DataError(
            f"{display}: {table.shape[1]} columns, expected the kline layout "
            f"({', '.join(_BINANCE_COLUMNS)}, ...)"
        )
    return table.iloc[:, : len(_BINANCE_COLUMNS)].set_axis(list(_BINANCE_COLUMNS), axis=1), header_lines


def _read_csv_table(raw: bytes, display: str, columns: CsvColumns) -> pd.DataFrame:
    return _select_columns(_read_csv(raw, display, sep=columns.delimiter), display, columns)


def _select_columns(table: pd.DataFrame, display: str, columns: CsvColumns) -> pd.DataFrame:
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


_NAT = np.iinfo(np.int64).min


def _parse_time(text: pd.Series) -> tuple[np.ndarray, bool]:
    """Seconds since the epoch, and whether they are UTC by construction (epoch numbers, or ISO 8601 with an
    offset); naive ISO 8601 times are returned as given. Epoch numbers are seconds, milliseconds or
    microseconds by their magnitude (1e11 s is the year 5138)."""
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().mean() > 0.5:
        values = numeric.to_numpy(np.float64)
        magnitude = np.nanmedian(np.abs(values))
        seconds = values / (1e6 if magnitude > 1e14 else 1e3 if magnitude > 1e11 else 1.0)
        out = np.full(len(values), _NAT, dtype=np.int64)
        finite = np.isfinite(seconds) & (seconds == np.round(seconds))
        out[finite] = seconds[finite].astype(np.int64)
        return out, True
    sample = next((t for t in text if t.strip()), "")
    aware = bool(_TZ_OFFSET.search(sample.strip()))
    return _to_seconds(pd.to_datetime(text, format="ISO8601", errors="coerce", utc=aware)), aware


def _to_seconds(parsed: pd.Series) -> np.ndarray:
    values = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    out = np.full(len(values), _NAT, dtype=np.int64)
    ok = values != _NAT
    out[ok] = values[ok] // 1_000_000_000
    # Sub-second parts must not be silently floored: mark them as not on a whole minute.
    out[ok & (values % 1_000_000_000 != 0)] = 1
    return out


def _to_utc(stamps: np.ndarray, timezone: str, display: str) -> np.ndarray:
    """Naive local seconds of ``timezone`` to UTC seconds; times that do not exist or occur twice on that
    clock (daylight-saving changes) become malformed (``_NAT``)."""
    ok = stamps != _NAT
    local = pd.DatetimeIndex(pd.to_datetime(stamps[ok], unit="s"))
    try:
        converted = local.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT").tz_convert("UTC")
    except Exception as error:  # an unknown zone name raises from zoneinfo or pytz
        raise DataError(
            f"--timezone {timezone!r}: not an IANA time zone name ({error}) for {display}"
        ) from None
    out = np.full(len(stamps), _NAT, dtype=np.int64)
    out[ok] = _to_seconds(pd.Series(converted.tz_localize(None)))
    return out


def _bad_row_reasons(
    stamps: np.ndarray, prices: np.ndarray, volume: np.ndarray, timezone: str | None
) -> dict[str, np.ndarray]:
    """Masks of bad rows by reason, in the order they are checked."""
    malformed_time = stamps == _NAT
    off_minute = ~malformed_time & (stamps % 60 != 0)
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
        time_reason: malformed_time,
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
        units=volume_units(volume[keep], volume_unit(volume[keep])),
    )
    return bars, CleanReport(duplicates_dropped=int((~keep).sum()), out_of_order_rows=out_of_order)
