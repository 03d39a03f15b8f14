"""What `stage1 prepare` is given: the input files, the instrument each belongs to (from its name, by one
rule), how its columns are laid out, and what reading each one reports."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np


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
    member: str | None = None  # one member of a zip of several instruments (the rest are other sources)

    @property
    def display(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)


@dataclass
class FileReport:
    path: str
    sha256: str
    clock: str = ""
    side: str | None = None
    symbol: str | None = None  # the one value of the file's symbol column, when it has one
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


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
