"""HistData ASCII M1: ``YYYYMMDD HHMMSS;open;high;low;close;volume``, no header."""

from __future__ import annotations

import pandas as pd

from stage1_ds.data.ingest.generic import read_text
from stage1_ds.data.ingest.sources import OHLC
from stage1_ds.errors import DataError


def read_histdata_table(raw: bytes, display: str) -> pd.DataFrame:
    names = ["timestamp", *OHLC, "volume"]
    try:
        return read_text(raw, display, sep=";", header=None, names=names)
    except DataError as error:
        raise DataError(f"{error} (expected 'YYYYMMDD HHMMSS;open;high;low;close;volume')") from None
