"""Exchange kline dumps (Binance): open time, open, high, low, close, volume, close time, ..."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from stage1_ds.data.ingest.generic import read_text
from stage1_ds.data.ingest.sniff import format_hint
from stage1_ds.data.ingest.sources import OHLC, InputFormat
from stage1_ds.data.ingest.timestamps import ParsedTimes, duration
from stage1_ds.errors import DataError

BINANCE_COLUMNS = ("timestamp", *OHLC, "volume", "close_time")


def read_binance_table(raw: bytes, display: str) -> tuple[pd.DataFrame, int]:
    """Kline rows: open time, open, high, low, close, volume, close time, ... (recent dumps add a header).
    Blank lines before the first row are skipped (the header is the first line with text)."""
    body = raw.lstrip()
    first = body.split(b"\n", 1)[0].split(b",", 1)[0].strip()
    header_lines = 0 if first.isdigit() else 1
    table = read_text(body, display, header=None, skiprows=header_lines)
    if table.shape[1] < len(BINANCE_COLUMNS):
        raise DataError(
            f"{display}: {table.shape[1]} columns, expected the kline layout "
            f"({', '.join(BINANCE_COLUMNS)}, ...){format_hint(raw, InputFormat.BINANCE)}"
        )
    return table.iloc[:, : len(BINANCE_COLUMNS)].set_axis(list(BINANCE_COLUMNS), axis=1), header_lines


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def check_kline_interval(table: pd.DataFrame, times: ParsedTimes, at: Callable[[int, str], str]) -> None:
    """Klines carry their close time: ``close - open + 1`` (in the open time's unit) must be one minute."""
    opened = pd.to_numeric(table["timestamp"], errors="coerce").to_numpy(np.float64)
    closed = pd.to_numeric(table["close_time"], errors="coerce").to_numpy(np.float64)
    seconds = (closed - opened + 1) / times.unit_factor
    known = np.isfinite(seconds)
    if known.any() and not np.isclose(np.median(seconds[known]), 60.0):
        found = duration(float(np.median(seconds[known])))
        raise DataError(
            at(int(np.flatnonzero(known)[0]), f"klines of {found} (close time - open time)")
            + "; expected 1-minute klines (1m): download the 1m dumps"
        )
