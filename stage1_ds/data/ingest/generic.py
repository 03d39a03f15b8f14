"""Generic CSV with a header (and Parquet's columns, named alike): the columns chosen by name, any case,
separate date and time columns joined, a symbol column of several instruments refused."""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

import pandas as pd

from stage1_ds.data.ingest.sniff import FORMAT_NAMES, sniff_format
from stage1_ds.data.ingest.sources import CsvColumns, InputFormat
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)


def read_text(raw: bytes, display: str, **options: object) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, **options)
    except pd.errors.ParserError as error:
        raise DataError(f"{display}: {error}") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{display}: not UTF-8 text ({error}): a text encoding other than UTF-8 or UTF-16 (save it as "
            "UTF-8), or a compressed format other than zip, gzip, bz2, xz and zstd"
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
SYMBOL_COLUMNS = ("symbol", "sym", "name", "ticker", "instrument", "pair", "asset", "market")
#: Header names of a column that says which side a quote is of (bid or ask rows in one file).
SIDE_COLUMNS = ("side", "quote", "bidask", "bid_ask", "price_type")
#: Separate date and time columns (their names, either of each pair), joined into the timestamp.
DATE_COLUMNS, TIME_COLUMNS = ("date", "day"), ("time", "hour")


def header_key(column: Any) -> str:
    """A header name as matched: case ignored, and MetaTrader's angle brackets (``<DATE>``) dropped."""
    return str(column).strip().strip("<>").strip().lower()


def choose_symbol(
    table: pd.DataFrame, by_key: dict[str, Any], display: str, symbol: str | None
) -> tuple[pd.DataFrame, str | None]:
    """The rows of one instrument of a long file, and the instrument its symbol column names (None without
    one): a symbol column of several values needs ``symbol`` (``--symbol``); one value, or none asked,
    passes.

    Raises:
        DataError: several instruments and no ``symbol`` (naming them and the flag), or a ``symbol`` the
            column does not hold.
    """
    column = next((by_key[name] for name in SYMBOL_COLUMNS if name in by_key), None)
    if column is None:
        if symbol is not None:
            raise DataError(
                f"{display}: --symbol {symbol}: the file has no symbol column ({', '.join(SYMBOL_COLUMNS)})"
            )
        return table, None
    values = table[column].astype(str).str.strip()
    names = list(pd.unique(values))
    if symbol is None:
        if len(names) > 1:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise DataError(
                f"{display}: its column {column!r} names {len(names)} instruments ({shown}); one series is one "
                "instrument: prepare each with --symbol NAME (and --instrument NAME), or write one file per "
                "instrument"
            )
        return table, (names[0] if names else None)
    if symbol not in names:
        raise DataError(f"{display}: --symbol {symbol}: column {column!r} holds {names[:8]}")
    return table[values == symbol], symbol


def choose_side(
    table: pd.DataFrame, by_key: dict[str, Any], display: str, side: str, ohlc: list[str]
) -> pd.DataFrame:
    """One quote side of a file whose rows are bid and ask quotes (a side column): ``bid`` or ``ask`` rows,
    or ``mid``, the mean of the two at each minute that has both (the others dropped, counted in the log).

    Raises:
        DataError: the side column holds other values than bid and ask, or none of the side asked.
    """
    column = next((by_key[name] for name in SIDE_COLUMNS if name in by_key), None)
    if column is None:
        return table
    values = table[column].astype(str).str.strip().str.lower()
    unknown = sorted(set(pd.unique(values)) - {"bid", "ask"})
    if unknown:
        raise DataError(f"{display}: its side column {column!r} holds {unknown}; expected bid and ask")
    if side in ("bid", "ask"):
        chosen = table[values == side]
        if chosen.empty:
            raise DataError(
                f"{display}: no {side} rows in its side column {column!r} (--side bid, ask or mid)"
            )
        return chosen
    stamp = table.columns[0]
    bid, ask = table[values == "bid"], table[values == "ask"]
    both = (
        bid.rename_axis("__row").reset_index().merge(ask, on=stamp, suffixes=("", "__ask")).set_index("__row")
    )
    for name in ohlc:
        mean = (
            pd.to_numeric(both[name], errors="coerce") + pd.to_numeric(both[name + "__ask"], errors="coerce")
        ) / 2
        both[name] = mean.map(repr)
    dropped = len(bid) + len(ask) - 2 * len(both)
    if dropped:
        log.info(
            "%s: %d bid or ask rows without the other side at their minute dropped (--side mid)",
            display,
            dropped,
        )
    return both[[c for c in table.columns if c in both.columns]]


def joined_date_and_time(table: pd.DataFrame, by_key: dict[str, Any], timestamp: str) -> pd.DataFrame:
    """Separate date and time columns (``date`` or ``day``, and ``time`` or ``hour``) joined into the
    timestamp column: when the header has no column named as the timestamp, or the timestamp column is the
    date (no time of day in it)."""
    date = next((by_key[n] for n in DATE_COLUMNS if n in by_key), None)
    time = next((by_key[n] for n in TIME_COLUMNS if n in by_key), None)
    if date is None or time is None:
        return table
    chosen = by_key.get(timestamp.lower())
    if chosen is not None and chosen != date:
        return table
    joined = table[date].astype(str).str.strip() + " " + table[time].astype(str).str.strip()
    return table.drop(columns=[date, time]).assign(**{timestamp: joined})


def select_columns(table: pd.DataFrame, display: str, columns: CsvColumns) -> pd.DataFrame:
    """The file's rows of one instrument and side (`choose_symbol`, `choose_side`) with the columns read,
    named ``timestamp``, ``open``, ``high``, ``low``, ``close`` (and ``volume``), the row labels kept (they
    are the data rows of the file, for its line numbers); ``attrs["symbol"]`` is the instrument its symbol
    column names (None without one).

    Raises:
        DataError: a column is missing (naming the header and the flags), or the symbol or side choice
            fails.
    """
    wanted = {
        "timestamp": columns.timestamp,
        "open": columns.open,
        "high": columns.high,
        "low": columns.low,
        "close": columns.close,
    }
    # A header's case is the exporter's choice (Volume, CLOSE, MetaTrader's <CLOSE>): a name matches without
    # case or brackets when the header has no column of exactly that name.
    by_key = {header_key(column): column for column in table.columns}
    table, symbol = choose_symbol(table, by_key, display, columns.symbol)
    table = joined_date_and_time(table, by_key, columns.timestamp)
    by_key = {header_key(column): column for column in table.columns}

    def named(name: str) -> str:
        return name if name in table.columns else by_key.get(header_key(name), name)

    if columns.volume is not None:
        wanted["volume"] = columns.volume
    elif "volume" in by_key:
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
    side = next((by_key[name] for name in SIDE_COLUMNS if name in by_key), None)
    keep = [*wanted.values(), *([side] if side is not None else [])]
    chosen = table[keep]
    chosen = choose_side(
        chosen, by_key, display, columns.side, [wanted[k] for k in ("open", "high", "low", "close")]
    )
    selected = chosen[list(wanted.values())].set_axis(list(wanted), axis=1)
    selected.attrs["symbol"] = symbol  # which instrument the rows are, for files and members to agree on
    return selected


def unread_columns(header: list[Any], columns: CsvColumns) -> list[str]:
    """The header's columns the reader does not use: where a second instrument, a quote side or a split
    date and time may hide when one minute appears twice with different prices."""
    used = {
        header_key(n) for n in (columns.timestamp, columns.open, columns.high, columns.low, columns.close)
    }
    used |= {header_key(columns.volume or "volume"), *DATE_COLUMNS, *TIME_COLUMNS}
    return [str(c) for c in header if header_key(c) not in used]
