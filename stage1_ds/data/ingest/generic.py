"""Generic CSV with a header (and Parquet's columns, named alike): the columns chosen by name, any case,
separate date and time columns joined, a symbol column of several instruments refused."""

from __future__ import annotations

import csv
import io
from typing import Any

import pandas as pd

from stage1_ds.data.ingest.sniff import FORMAT_NAMES, sniff_format
from stage1_ds.data.ingest.sources import CsvColumns, InputFormat
from stage1_ds.errors import DataError


def read_text(raw: bytes, display: str, **options: object) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, **options)
    except pd.errors.ParserError as error:
        raise DataError(f"{display}: {error}") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{display}: not UTF-8 text ({error}); a compressed file needs its suffix "
            f"(.gz, .bz2, .xz, .zst, .zip)"
        ) from None


def check_field_counts(raw: bytes, display: str, delimiter: str) -> None:
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


def read_csv_table(raw: bytes, display: str, columns: CsvColumns) -> pd.DataFrame:
    check_field_counts(raw, display, columns.delimiter)
    return select_columns(read_text(raw, display, sep=columns.delimiter), display, columns)


#: Header names of a column that says which instrument a row is of (a long-format file of many).
SYMBOL_COLUMNS = ("symbol", "ticker", "instrument", "pair", "asset", "market")


def refuse_symbol_column(table: pd.DataFrame, by_case: dict[str, Any], display: str) -> None:
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


def joined_date_and_time(table: pd.DataFrame, by_case: dict[str, Any], timestamp: str) -> pd.DataFrame:
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


def select_columns(table: pd.DataFrame, display: str, columns: CsvColumns) -> pd.DataFrame:
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
    refuse_symbol_column(table, by_case, display)
    table = joined_date_and_time(table, by_case, columns.timestamp)
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
            else f"; the file looks like {FORMAT_NAMES[looks]}: --format {looks.value}"
        )
        raise DataError(
            f"{display}, line 1: missing column(s) {missing}; the header has {list(table.columns)} "
            f"(set the names with --timestamp-column, --open-column, ..., --volume-column or --delimiter){hint}"
        )
    return table[list(wanted.values())].set_axis(list(wanted), axis=1)
