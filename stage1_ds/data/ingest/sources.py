"""What `stage1 prepare` is given: the input files, the instrument each belongs to (from its name, by one
rule), how its columns are laid out, and what reading each one reports."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

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


#: HistData's clock: New York local time with its daylight saving (the 2018 files; the 2019 ones follow the
#: European daylight-saving calendar in a few weeks of March and October), what `stage1 prepare` converts
#: HistData files from when no --timezone is given.
HISTDATA_CLOCK = "America/New_York"
#: ``--timezone as-given``: naive timestamps kept on the file's own clock, not converted.
AS_GIVEN = "as-given"


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
    symbol: str | None = None  # the rows of this instrument of a file with a symbol column of several
    side: str = "bid"  # of a file of bid and ask rows (a side column): bid, ask, or mid (their mean)


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


COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
DATA_SUFFIXES = (".zip", ".csv", ".txt", ".parquet", *COMPRESSED)
OHLC = ("open", "high", "low", "close")

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
    while Path(stem).suffix.lower() in DATA_SUFFIXES:
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
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file())
            if not found:
                raise DataError(
                    f"{path}: folder holds no data file (expected {', '.join('*' + s for s in DATA_SUFFIXES)})"
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
