"""Which layout a text file looks like, from its first line: the one place formats are told apart."""

from __future__ import annotations

import re

from stage1_ds.data.ingest.containers import BOM
from stage1_ds.data.ingest.sources import InputFormat

FORMAT_NAMES = {
    InputFormat.HISTDATA: "HistData ASCII M1 (YYYYMMDD HHMMSS;open;high;low;close;volume)",
    InputFormat.CSV: "a CSV file with a header",
    InputFormat.BINANCE: "Binance klines (open time, open, high, low, close, volume, close time, ...)",
}


def sniff_format(raw: bytes) -> InputFormat | None:
    """The format the first non-blank line of a text file looks like: HistData (``YYYYMMDD HHMMSS;``), Binance
    klines (an epoch-millisecond or -microsecond number, then at least six more comma-separated fields), or a
    CSV with a header (letters and a delimiter); None when none fits."""
    first = next((line.strip() for line in raw.removeprefix(BOM).split(b"\n") if line.strip()), b"")
    line = first.decode("utf-8", errors="replace")
    if re.match(r"\d{8} \d{6};", line):
        return InputFormat.HISTDATA
    fields = line.split(",")
    if len(fields) >= 7 and (re.fullmatch(r"\d{12,17}", fields[0]) or fields[0].lower() == "open_time"):
        return InputFormat.BINANCE
    if re.search(r"[A-Za-z]", line) and re.search(r"[,;\t|]", line):
        return InputFormat.CSV
    return None


def format_hint(raw: bytes, asked: InputFormat) -> str:
    """``; the file looks like ...: --format X`` when its first line looks like another format than asked."""
    looks = sniff_format(raw)
    return (
        ""
        if looks in (None, asked)
        else f"; the file looks like {FORMAT_NAMES[looks]}: --format {looks.value}"
    )
