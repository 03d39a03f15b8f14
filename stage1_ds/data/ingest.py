"""Read raw 1-minute bars: HistData ASCII, generic CSV with a header, and exchange kline dumps (Binance).

Files are read plain or compressed (``.gz``, ``.bz2``, ``.xz``, ``.zst``), from a ``.zip`` holding one or
more CSV files, or from Parquet (``.parquet``, columns named as for CSV). Every reader returns `M1Rows` in
file order with a `FileReport`; sorting, de-duplication and merging of several files of one instrument
happen in `clean_m1`. Bad rows either stop the run with the file, line number and row text
(``on_bad_rows="error"``) or are dropped and counted (``"drop"``). A file that cannot be read at all is a
`DataError` naming it and why, never a traceback.

Clocks: naive timestamps (HistData, ISO without offset) are taken as given, or converted from
``timezone`` (IANA) to UTC when one is given; timestamps with an offset and epoch timestamps are UTC. One
file may not mix naive and offset timestamps (such rows are bad rows), and one instrument's files must
share a clock (`check_clocks`). Epoch numbers are seconds, milliseconds, microseconds or nanoseconds, decided
per value by magnitude within 1990-2100 (`EARLIEST_UTC`, `LATEST_UTC`): a column whose values span two
units is an error; a value that is a date in none of them is a bad row.

Instrument names come from file names by one rule (`name_from_file`). Text is read as UTF-8, a byte-order
mark dropped.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import itertools
import logging
import lzma
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stage1_ds.data.timeframes import Bars, volume_unit, volume_units
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)


class InputFormat(StrEnum):
    """How the columns of a file are laid out."""

    HISTDATA = "histdata"  # YYYYMMDD HHMMSS;open;high;low;close;volume, no header
    CSV = "csv"  # a header naming the columns (CsvColumns); also Parquet
    BINANCE = "binance"  # kline dumps: open time (ms or us), open, high, low, close, volume, close time, ...


class BarTime(StrEnum):
    START = "start"  # a bar is stamped with the start of its minute (HistData, most FX sources)
    END = "end"  # with its end (many futures platforms and brokers): moved back a minute on reading


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
    volume: str | None = None  # None: a column named "volume" if the header has one; a name: it must exist
    delimiter: str = ","


@dataclass(frozen=True)
class SourceFile:
    """One input file, the instrument it belongs to and, from its name, the quote side (bid, ask, mid)."""

    path: Path
    instrument: str
    format: InputFormat
    side: str | None = None


@dataclass
class FileReport:
    path: str
    sha256: str
    clock: str = ""
    side: str | None = None
    volume_column: str | None = None
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
_TZ_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")  # no capture group: pandas warns on one
_BOM = b"\xef\xbb\xbf"
#: Tokens of a file name that are not the instrument: sources' prefixes and words for 1-minute bars.
_NAME_NOISE = frozenset(
    {"histdata", "com", "ascii", "dat", "m1", "1min", "minute", "ohlc", "ohlcv", "klines"}
)
_SIDES = frozenset({"bid", "ask", "mid"})
_INTERVAL = re.compile(r"(\d+)([smhdw])")  # 1m, 5m, 1h: a kline interval in a file name


@dataclass(frozen=True)
class FileName:
    """What a file name says: the instrument (None when nothing is left), the quote side, a bar interval."""

    instrument: str | None
    side: str | None
    interval: str | None


def name_from_file(path: Path) -> FileName:
    """The one rule for instrument names: split the name (without its data and compression suffixes) at
    ``_``, ``-``, ``.`` and spaces, and take the first word, upper case, that is not a number (a year, a
    month, a day), HistData's ``M12019``, an interval such as ``1m``, a word of `_NAME_NOISE`, or a quote
    side (bid, ask, mid: recorded). ``HISTDATA_COM_ASCII_EURUSD_M12019.zip``,
    ``DAT_ASCII_EURUSD_M1_2019.csv``, ``EURUSD_2019.zip`` and ``eurusd-bid-2019.csv.gz`` are EURUSD (the last
    bid); ``gbpusd-m1-bid-2012.csv`` is GBPUSD (bid); ``BTCUSDT-1m-2024-01.zip`` is BTCUSDT (interval 1m)."""
    stem = path.name
    while Path(stem).suffix.lower() in _DATA_SUFFIXES:
        stem = stem[: -len(Path(stem).suffix)]
    instrument, side, interval = None, None, None
    for token in re.split(r"[_\-\s.]+", stem):
        low = token.lower()
        if not low or low.isdigit() or low in _NAME_NOISE or re.fullmatch(r"m1\d{4,6}", low):
            continue
        if low in _SIDES:
            side = side or low
        elif _INTERVAL.fullmatch(low):
            interval = interval or low
        elif instrument is None:
            instrument = token.upper()
    return FileName(instrument, side, interval)


def discover_inputs(paths: Iterable[Path], fmt: InputFormat, instrument: str | None) -> list[SourceFile]:
    """Expand files and folders into `SourceFile`s, each with its instrument name (``instrument``, or from
    the file name by `name_from_file`) and quote side.

    Raises:
        DataError: a path does not exist, a folder holds no data file, or a file name leaves no instrument
            name without ``--instrument``.
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
        named = name_from_file(path)
        name = instrument or named.instrument
        if name is None:
            raise DataError(
                f"{path}: the file name holds no instrument name (only numbers, dates, intervals or source "
                "words); pass --instrument"
            )
        sources.append(SourceFile(path=path, instrument=name, format=fmt, side=named.side))
    _note_year_suffixes(sources, instrument)
    return sources


def _note_year_suffixes(sources: list[SourceFile], instrument: str | None) -> None:
    """Files that differ only by numbers (``BTC_2023.csv``, ``BTC_2024.csv``) are one instrument by the
    naming rule: say so, since a user may have meant otherwise."""
    if instrument is not None:
        return
    by_name: dict[str, list[str]] = {}
    for source in sources:
        by_name.setdefault(source.instrument, []).append(source.path.name)
    for name, files in by_name.items():
        if len(files) > 1:
            log.info("%s are one instrument, %s (numbers in file names are dates, not names)", files, name)


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
        table = parquet.read_table(path).to_pandas()
    except Exception as error:  # pyarrow raises its own error types for every kind of bad file
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None
    # pandas writes a DataFrame's time index as an index, not a column: make it the column it is.
    if isinstance(table.index, pd.DatetimeIndex) or table.index.name is not None:
        table = table.reset_index(names=table.index.name or "timestamp")
    return table


_DECOMPRESS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}


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
        DataError: the file cannot be read, is empty, lacks a column, is of another format than asked for,
            mixes clocks across its tables, or (with ``on_bad_rows="error"``) has a bad row; the message
            names the file, the line and the row.
    """
    interval = name_from_file(source.path).interval
    if source.format == InputFormat.BINANCE and interval not in (None, "1m"):
        raise DataError(
            f"{source.path}: the file name says {interval} klines; only 1-minute klines (1m) are read"
        )
    report = FileReport(path=str(source.path), sha256=sha256_of(source.path), side=source.side)
    parts, clocks, members = [], set(), []
    for table, display in _members(source.path, source.format):
        members.append(display.rsplit("!", 1)[-1])
        rows, clock = _read_table(
            table, display, source.format, columns or CsvColumns(), timezone, on_bad_rows, report
        )
        parts.append(rows)
        clocks.add(clock)
    if len({_clock_kind(c) for c in clocks}) > 1:
        raise DataError(f"{source.path}: its tables use different clocks ({sorted(clocks)}); {_CLOCK_FIX}")
    report.clock = " + ".join(sorted(clocks))
    overlap = overlapping_pair([part.start for part in parts])
    if overlap is not None:
        i, j, shared, smaller = overlap
        raise DataError(
            f"{source.path}: its tables {members[i]} and {members[j]} share {shared:,} timestamps ({shared / smaller:.0%} "
            "of the smaller): two instruments (or bid and ask quotes) in one archive would be merged into one "
            "series; unzip it and give the files to --input, each under its own name"
        )
    rows = M1Rows(
        start=np.concatenate([p.start for p in parts]),
        ohlc=np.concatenate([p.ohlc for p in parts]),
        volume=np.concatenate([p.volume for p in parts]),
    )
    check_bar_interval(rows.start, str(source.path))
    return rows, report


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
            f"{display}: its bars are {_duration(dominant)} apart ({share:.0%} of {len(spacing):,} consecutive "
            "stamps); stage1 prepare reads 1-minute bars: give the file of 1-minute bars, or resample these "
            "to 1 minute first"
        )


UTC_CLOCK = "UTC (timestamps with an offset or epoch time)"
NAIVE_CLOCK = "as given (naive)"
_CLOCK_FIX = (
    "one instrument's timestamps must share a clock: give every timestamp a UTC offset (or epoch time), or "
    "none, and pass --timezone ZONE to convert naive ones to UTC (HistData: America/New_York)"
)


def _clock_kind(clock: str) -> str:
    """``naive`` for timestamps taken as given, ``utc`` for offsets, epoch times and converted ones."""
    return "naive" if clock == NAIVE_CLOCK else "utc"


def check_clocks(instrument: str, reports: list[FileReport]) -> None:
    """One instrument's files must share a clock: all UTC (offsets, epoch times, or naive ones converted
    with --timezone) or all naive as given; otherwise their bars would be merged hours apart.

    Raises:
        DataError: naming a file of each clock and the fix.
    """
    kinds = {_clock_kind(r.clock): r.path for r in reports}
    if len(kinds) > 1:
        raise DataError(
            f"instrument {instrument}: {kinds['utc']} has UTC timestamps (offsets or epoch time) and "
            f"{kinds['naive']} naive ones; {_CLOCK_FIX}"
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
        # Parquet: every cell as text, nulls as empty text (a missing value, never a crash)
        table = _select_columns(raw.astype(object).where(raw.notna(), "").astype(str), display, columns)
        header_lines, text = 1, b""
    else:
        raw = _as_utf8(raw).removeprefix(_BOM)
        if not raw.strip():
            raise DataError(f"{display}: file is empty (expected 1-minute OHLC rows)")
        text = raw
        if fmt == InputFormat.HISTDATA:
            table, header_lines = _read_histdata_table(raw, display), 0
        elif fmt == InputFormat.BINANCE:
            table, header_lines = _read_binance_table(raw, display)
        else:
            table, header_lines = _read_csv_table(raw, display, columns), 1

    def at(row: int, what: str) -> str:
        """``what`` of data row ``row``, with the file, the line and the row's text."""
        if not text:
            return f"{display}, row {row + 1}: {what}: {' '.join(str(v) for v in table.iloc[row])!r}"
        line, shown = _source_line(text, row, header_lines)
        return f"{display}, line {line}: {what}: {shown!r}"

    try:
        if fmt == InputFormat.HISTDATA:
            parsed = pd.to_datetime(table["timestamp"], format="%Y%m%d %H%M%S", errors="coerce")
            times = ParsedTimes(*_to_seconds(parsed), aware=False, unit_factor=1)
        else:
            times = _parse_time(
                table["timestamp"], "timestamp" if fmt != InputFormat.CSV else columns.timestamp
            )
    except _ColumnError as error:
        raise DataError(at(error.row, str(error))) from None
    stamps, aware = times.seconds, times.aware
    clock = UTC_CLOCK if aware else NAIVE_CLOCK
    outside = (stamps != _NAT) & ((stamps < EARLIEST_UTC) | (stamps >= LATEST_UTC))
    if timezone is not None and not aware:
        stamps = _to_utc(np.where(outside, _NAT, stamps), timezone, display)
        clock = f"UTC (converted from {timezone})"
    report.rows_read += len(table)
    if fmt == InputFormat.BINANCE:
        _check_kline_interval(table, times, at)

    prices = np.stack([pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in _OHLC], axis=1)
    if "volume" in table:
        volume = pd.to_numeric(table["volume"], errors="coerce").to_numpy(np.float64)
        report.volume_column = columns.volume or "volume" if fmt == InputFormat.CSV else "volume (6th field)"
    else:
        volume = np.zeros(len(table), dtype=np.float64)

    reasons = {  # a cut row first: it explains whatever else is wrong with it
        CUT_SHORT: cut_last_row(text, table),
        **bad_row_reasons(
            stamps, prices, volume, timezone if not aware else None, outside, times.fraction, times.mixed
        ),
    }
    bad = np.zeros(len(table), dtype=bool)
    for reason, mask in reasons.items():
        mask &= ~bad  # count each row under its first reason only
        if mask.any():
            report.bad_rows_dropped[reason] = report.bad_rows_dropped.get(reason, 0) + int(mask.sum())
            bad |= mask
    if bad.any() and (on_bad_rows == OnBadRows.ERROR or bad.all()):
        looks = sniff_format(text) if text else None
        hint = (
            f"; the file looks like {_FORMAT_NAMES[looks]}: --format {looks.value}"
            if looks not in (None, fmt)
            else ""
        )
        row = int(np.flatnonzero(bad)[0])  # the first bad line of the file, whatever its reason
        reason = next(r for r, mask in reasons.items() if mask[row])
        if on_bad_rows == OnBadRows.ERROR or hint:
            raise DataError(at(row, reason) + (hint or " (use --on-bad-rows drop to drop such rows)"))
    keep = ~bad
    report.rows_kept += int(keep.sum())
    return M1Rows(start=stamps[keep], ohlc=prices[keep], volume=volume[keep]), clock


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


_FORMAT_NAMES = {
    InputFormat.HISTDATA: "HistData ASCII M1 (YYYYMMDD HHMMSS;open;high;low;close;volume)",
    InputFormat.CSV: "a CSV file with a header",
    InputFormat.BINANCE: "Binance klines (open time, open, high, low, close, volume, close time, ...)",
}


def sniff_format(raw: bytes) -> InputFormat | None:
    """The format the first non-blank line of a text file looks like: HistData (``YYYYMMDD HHMMSS;``), Binance
    klines (an epoch-millisecond or -microsecond number, then at least six more comma-separated fields), or a
    CSV with a header (letters and a delimiter); None when none fits."""
    first = next((line.strip() for line in raw.removeprefix(_BOM).split(b"\n") if line.strip()), b"")
    line = first.decode("utf-8", errors="replace")
    if re.match(r"\d{8} \d{6};", line):
        return InputFormat.HISTDATA
    fields = line.split(",")
    if len(fields) >= 7 and (re.fullmatch(r"\d{12,17}", fields[0]) or fields[0].lower() == "open_time"):
        return InputFormat.BINANCE
    if re.search(r"[A-Za-z]", line) and re.search(r"[,;\t|]", line):
        return InputFormat.CSV
    return None


def _format_hint(raw: bytes, asked: InputFormat) -> str:
    """``; the file looks like ...: --format X`` when its first line looks like another format than asked."""
    looks = sniff_format(raw)
    return (
        ""
        if looks in (None, asked)
        else f"; the file looks like {_FORMAT_NAMES[looks]}: --format {looks.value}"
    )


def _check_kline_interval(table: pd.DataFrame, times: ParsedTimes, at: Callable[[int, str], str]) -> None:
    """Klines carry their close time: ``close - open + 1`` (in the open time's unit) must be one minute."""
    opened = pd.to_numeric(table["timestamp"], errors="coerce").to_numpy(np.float64)
    closed = pd.to_numeric(table["close_time"], errors="coerce").to_numpy(np.float64)
    seconds = (closed - opened + 1) / times.unit_factor
    known = np.isfinite(seconds)
    if known.any() and not np.isclose(np.median(seconds[known]), 60.0):
        found = _duration(float(np.median(seconds[known])))
        raise DataError(
            at(int(np.flatnonzero(known)[0]), f"klines of {found} (close time - open time)")
            + "; expected 1-minute klines (1m): download the 1m dumps"
        )


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


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
    """Kline rows: open time, open, high, low, close, volume, close time, ... (recent dumps add a header).
    Blank lines before the first row are skipped (the header is the first line with text)."""
    body = raw.lstrip()
    first = body.split(b"\n", 1)[0].split(b",", 1)[0].strip()
    header_lines = 0 if first.isdigit() else 1
    table = _read_csv(body, display, header=None, skiprows=header_lines)
    if table.shape[1] < len(_BINANCE_COLUMNS):
        raise DataError(
            f"{display}: {table.shape[1]} columns, expected the kline layout "
            f"({', '.join(_BINANCE_COLUMNS)}, ...){_format_hint(raw, InputFormat.BINANCE)}"
        )
    return table.iloc[:, : len(_BINANCE_COLUMNS)].set_axis(list(_BINANCE_COLUMNS), axis=1), header_lines


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _as_utf8(raw: bytes) -> bytes:
    """UTF-16 text (with its byte-order mark, as some Windows tools export) re-encoded as UTF-8."""
    return raw.decode("utf-16").encode("utf-8") if raw.startswith(_UTF16_BOMS) else raw


def _check_field_counts(raw: bytes, display: str, delimiter: str) -> None:
    """Refuse data rows with more fields than the header among the first lines: pandas would take the
    first column as an index and shift every column, and the error would name the wrong column.

    Raises:
        DataError: naming the line, both counts and the likely causes.
    """
    lines = [line for line in raw.decode("utf-8", errors="replace").splitlines()[:50] if line.strip()]
    if len(lines) < 2:
        return
    header = len(next(csv.reader([lines[0]], delimiter=delimiter)))
    for number, line in enumerate(lines[1:], start=2):
        fields = len(next(csv.reader([line], delimiter=delimiter)))
        if fields > header:
            raise DataError(
                f"{display}, line {number}: {fields} fields where the header has {header} (delimiter "
                f"{delimiter!r}): a delimiter at the end of each line, thousands separators (1,234.5) or "
                "decimal commas (1,5) in the numbers? Remove them, or export with another delimiter and pass "
                "it with --delimiter"
            )


def _read_csv_table(raw: bytes, display: str, columns: CsvColumns) -> pd.DataFrame:
    _check_field_counts(raw, display, columns.delimiter)
    return _select_columns(_read_csv(raw, display, sep=columns.delimiter), display, columns)


#: Header names of a column that says which instrument a row is of (a long-format file of many).
SYMBOL_COLUMNS = ("symbol", "ticker", "instrument", "pair", "asset", "market")


def _refuse_symbol_column(table: pd.DataFrame, by_case: dict[str, Any], display: str) -> None:
    """A file with a symbol column of several values holds several instruments' rows, which one series would
    merge (the prices jumping between them).

    Raises:
        DataError: naming the column, its instruments and the fix.
    """
    for name in SYMBOL_COLUMNS:
        if name in by_case:
            values = pd.unique(table[by_case[name]].astype(str))
            if len(values) > 1:
                shown = ", ".join(map(str, values[:5])) + (" ..." if len(values) > 5 else "")
                raise DataError(
                    f"{display}: its column {by_case[name]!r} names {len(values)} instruments ({shown}); one "
                    "file is one instrument here: write one file per instrument (named after it) and give "
                    "them all to --input"
                )


def _joined_date_and_time(table: pd.DataFrame, by_case: dict[str, Any], timestamp: str) -> pd.DataFrame:
    """Separate date and time columns (``date``, ``time``) joined into the timestamp column: when the
    header has no column named as the timestamp, or the timestamp column is the date (no time of day in it)."""
    date, time = by_case.get("date"), by_case.get("time")
    if date is None or time is None:
        return table
    chosen = by_case.get(timestamp.lower())
    if chosen is not None and chosen != date:
        return table
    joined = table[date].astype(str).str.strip() + " " + table[time].astype(str).str.strip()
    return table.drop(columns=[date, time]).assign(**{timestamp: joined})


def _select_columns(table: pd.DataFrame, display: str, columns: CsvColumns) -> pd.DataFrame:
    wanted = {
        "timestamp": columns.timestamp,
        "open": columns.open,
        "high": columns.high,
        "low": columns.low,
        "close": columns.close,
    }
    # A header's case is the exporter's choice (Volume, CLOSE): a name matches without case when the header
    # has no column of exactly that name.
    by_case = {str(column).lower(): column for column in table.columns}
    _refuse_symbol_column(table, by_case, display)
    table = _joined_date_and_time(table, by_case, columns.timestamp)
    by_case = {str(column).lower(): column for column in table.columns}

    def named(name: str) -> str:
        return name if name in table.columns else by_case.get(name.lower(), name)

    if columns.volume is not None:
        wanted["volume"] = columns.volume
    elif "volume" in by_case:
        wanted["volume"] = "volume"
    wanted = {key: named(name) for key, name in wanted.items()}
    missing = [name for name in wanted.values() if name not in table.columns]
    if missing:
        looks = sniff_format(",".join(map(str, table.columns)).encode())
        hint = (
            ""
            if looks in (None, InputFormat.CSV)
            else f"; the file looks like {_FORMAT_NAMES[looks]}: --format {looks.value}"
        )
        raise DataError(
            f"{display}, line 1: missing column(s) {missing}; the header has {list(table.columns)} "
            f"(set the names with --timestamp-column, --open-column, ..., --volume-column or --delimiter){hint}"
        )
    return table[list(wanted.values())].set_axis(list(wanted), axis=1)


#: The seconds of an unreadable timestamp (a sentinel no date of 1990-2100 takes).
NAT_SECONDS = np.iinfo(np.int64).min
_NAT = NAT_SECONDS
#: Timestamps must fall in [1990-01-01, 2100-01-01) UTC: what epoch numbers are read as decides their unit.
EARLIEST_UTC, LATEST_UTC = 631_152_000, 4_102_444_800
_EPOCH_UNITS = {"seconds": 1, "milliseconds": 10**3, "microseconds": 10**6, "nanoseconds": 10**9}


class _ColumnError(Exception):
    """A timestamp column that cannot be read as a whole; ``row`` is an example row."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


@dataclass(frozen=True)
class ParsedTimes:
    """Whole seconds since the epoch (`_NAT` where unreadable), the rows with a sub-second part, whether the
    times are UTC by construction, how many of the column's units make a second (epoch numbers), and the
    rows whose clock (naive or with an offset) differs from the column's first row."""

    seconds: np.ndarray
    fraction: np.ndarray
    aware: bool
    unit_factor: int
    mixed: np.ndarray | None = None


def _parse_time(text: pd.Series, column: str) -> ParsedTimes:
    """Epoch numbers (UTC; the unit by magnitude, see the module docstring) or ISO 8601 text (with an offset:
    UTC; naive: as given). Within one column naive and offset times may not mix: rows of the other clock
    than the first row's are marked ``mixed``.

    Raises:
        _ColumnError: epoch numbers in two units, or none a date of 1990-2100 in any unit (with the
            YYYYMMDDHHMMSS shape named).
    """
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().mean() > 0.5:
        return _parse_epoch(numeric.to_numpy(np.float64), column)
    cells = text.astype(str).str.strip()
    has_offset = cells.str.contains(_TZ_OFFSET).to_numpy(bool)
    filled = (cells != "").to_numpy(bool)
    aware = bool(has_offset[np.argmax(filled)]) if filled.any() else False
    mixed = filled & (has_offset != aware)
    parsed = pd.to_datetime(cells.where(~mixed, ""), format="ISO8601", errors="coerce", utc=aware)
    return ParsedTimes(*_to_seconds(parsed), aware, 1, mixed)


def _parse_epoch(values: np.ndarray, column: str) -> ParsedTimes:
    unit = np.full(len(values), -1)
    for k, factor in enumerate(_EPOCH_UNITS.values()):
        unit[(values >= EARLIEST_UTC * factor) & (values < LATEST_UTC * factor)] = k
    names = list(_EPOCH_UNITS)
    seen = np.unique(unit[unit >= 0])
    if len(seen) > 1:
        first = int(np.flatnonzero(unit >= 0)[0])
        other = int(np.flatnonzero((unit >= 0) & (unit != unit[first]))[0])
        raise _ColumnError(
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
        raise _ColumnError(
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
    factor = list(_EPOCH_UNITS.values())[int(seen[0])]
    out = np.full(len(values), _NAT, dtype=np.int64)
    known = unit >= 0
    out[known] = (values[known] // factor).astype(np.int64)
    out[np.isfinite(values) & ~known] = EARLIEST_UTC - 60  # a number, but no date of 1990-2100: out of range
    return ParsedTimes(out, known & (values % factor != 0), True, factor)


def _to_seconds(parsed: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Whole seconds of parsed times at any resolution pandas chose (years beyond 2262 included; `_NAT`
    where unreadable), and where the text had a sub-second part (never silently floored)."""
    unit = parsed.dt.unit
    factor = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    values = parsed.to_numpy(dtype=f"datetime64[{unit}]").astype(np.int64)
    out = np.full(len(values), _NAT, dtype=np.int64)
    ok = values != _NAT
    out[ok] = values[ok] // factor
    return out, ok & (values % factor != 0)


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
    out[ok] = _to_seconds(pd.Series(converted.tz_localize(None)))[0]
    return out


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
    malformed_time = (stamps == _NAT) & ~outside
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
