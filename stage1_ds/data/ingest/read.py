"""Reading one input file: every table in it parsed in its format, every row checked (`read_source`)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from stage1_ds.data.ingest.binance import check_kline_interval, read_binance_table
from stage1_ds.data.ingest.containers import BOM, MAX_INPUT_MB, as_utf8, open_tables
from stage1_ds.data.ingest.generic import read_csv_table, read_text, select_columns, unread_columns
from stage1_ds.data.ingest.histdata import read_histdata_table
from stage1_ds.data.ingest.sniff import FORMAT_NAMES, sniff_format
from stage1_ds.data.ingest.sources import (
    OHLC,
    CsvColumns,
    FileReport,
    InputFormat,
    M1Rows,
    OnBadRows,
    SourceFile,
    name_from_file,
    sha256_of,
)
from stage1_ds.data.ingest.timestamps import (
    CLOCK_FIX,
    EARLIEST_UTC,
    LATEST_UTC,
    NAIVE_CLOCK,
    NAT_SECONDS,
    UTC_CLOCK,
    ColumnError,
    ParsedTimes,
    clock_kind,
    parse_time,
    to_seconds,
    to_utc,
)
from stage1_ds.data.ingest.validate import (
    CUT_SHORT,
    bad_row_reasons,
    check_bar_interval,
    cut_last_row,
    overlaps,
    source_line,
)
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)


def read_source(
    source: SourceFile,
    on_bad_rows: OnBadRows,
    columns: CsvColumns | None = None,
    timezone: str | None = None,
    max_input_mb: int = MAX_INPUT_MB,
) -> tuple[M1Rows, FileReport]:
    """Read one file (every table in it, or its one member `SourceFile.member`) into `M1Rows`, checking
    every row. Tables of one archive that overlap in time are read once where their bars agree.

    Args:
        timezone: IANA name of the clock of naive timestamps, converted to UTC; None keeps them as given.
        max_input_mb: the cap on a compressed table's expanded size (`read_capped`).

    Raises:
        DataError: the file cannot be read, is empty, lacks a column, is of another format than asked for,
            mixes clocks or instruments across its tables, holds tables that overlap with other bars, or
            (with ``on_bad_rows="error"``) has a bad row; the message names the file, the line and the row.
    """
    interval = name_from_file(source.path).interval
    if source.format == InputFormat.BINANCE and interval not in (None, "1m"):
        raise DataError(
            f"{source.path}: the file name says {interval} klines; only 1-minute klines (1m) are read"
        )
    columns = columns or CsvColumns()
    report = FileReport(path=source.display, sha256=sha256_of(source.path), side=source.side)
    parts, clocks, members, symbols = [], set(), [], {}
    for table, display in open_tables(
        source.path, source.format, source.member, max_input_mb << 20, columns.timestamp
    ):
        members.append(display.rsplit("!", 1)[-1])
        rows, clock, symbol = _read_table(
            table, display, source.format, columns, timezone, on_bad_rows, report
        )
        parts.append(rows)
        clocks.add(clock)
        if symbol is not None:
            symbols[members[-1]] = symbol
    if len({clock_kind(c) for c in clocks}) > 1:
        raise DataError(f"{source.path}: its tables use different clocks ({sorted(clocks)}); {CLOCK_FIX}")
    if len(set(symbols.values())) > 1:
        listed = ", ".join(f"{m} ({s})" for m, s in symbols.items())
        raise DataError(
            f"{source.path}: its tables' symbol columns name different instruments ({listed}); one series is "
            "one instrument: unzip it and prepare each file under its own --instrument"
        )
    report.clock = " + ".join(sorted(clocks))
    report.symbol = next(iter(symbols.values()), None)
    _check_members(source, parts, members)
    rows = M1Rows(
        start=np.concatenate([p.start for p in parts]),
        ohlc=np.concatenate([p.ohlc for p in parts]),
        volume=np.concatenate([p.volume for p in parts]),
    )
    check_bar_interval(rows.start, source.display)
    return rows, report


def _check_members(source: SourceFile, parts: list[M1Rows], members: list[str]) -> None:
    """Tables of one archive are parts of one series: where they overlap (weekly parts sharing a day) their
    bars must agree, and are then read once (`clean_m1` keeps the first); tables that share many minutes
    with other prices are two instruments or two quote sides.

    Raises:
        DataError: naming both members, how many minutes they share and the first minute they disagree at.
    """
    for overlap in overlaps(parts):
        a, b = members[overlap.first], members[overlap.second]
        if overlap.disagree_at is None:
            log.info(
                "%s: its tables %s and %s share %d minutes with the same bars: read once",
                source.path,
                a,
                b,
                overlap.shared,
            )
            continue
        raise DataError(
            f"{source.path}: its tables {a} and {b} share {overlap.shared:,} timestamps ({overlap.share:.0%} of "
            f"the smaller) and their bars differ, first at {overlap.where()}: two instruments (or bid and ask "
            "quotes) in one archive would be merged into one series; unzip it and give the files to --input, "
            "each under its own name"
        )


def _read_table(
    raw: bytes | pd.DataFrame,
    display: str,
    fmt: InputFormat,
    columns: CsvColumns,
    timezone: str | None,
    on_bad_rows: OnBadRows,
    report: FileReport,
) -> tuple[M1Rows, str, str | None]:
    """Parse and check one table; returns its good rows, a description of its clock and the instrument its
    symbol column names (None without one)."""
    if isinstance(raw, pd.DataFrame):
        # Parquet: every cell as text, nulls as empty text (a missing value, never a crash)
        table = select_columns(raw.astype(object).where(raw.notna(), "").astype(str), display, columns)
        header_lines, text = 1, b""
    else:
        raw = as_utf8(raw, display).removeprefix(BOM)
        if not raw.strip():
            raise DataError(f"{display}: file is empty (expected 1-minute OHLC rows)")
        text = raw
        if fmt == InputFormat.HISTDATA:
            table, header_lines = read_histdata_table(raw, display), 0
        elif fmt == InputFormat.BINANCE:
            table, header_lines = read_binance_table(raw, display)
        else:
            table, header_lines = read_csv_table(raw, display, columns), 1

    def at(row: int, what: str) -> str:
        """``what`` of the table's row ``row``, with the file, the line and the row's text (its label is
        its data row in the file: rows of another symbol or side were left out)."""
        if not text:
            return f"{display}, row {row + 1}: {what}: {' '.join(str(v) for v in table.iloc[row])!r}"
        line, shown = source_line(text, int(table.index[row]), header_lines)
        return f"{display}, line {line}: {what}: {shown!r}"

    try:
        if fmt == InputFormat.HISTDATA:
            parsed = pd.to_datetime(table["timestamp"], format="%Y%m%d %H%M%S", errors="coerce")
            times = ParsedTimes(*to_seconds(parsed), aware=False, unit_factor=1)
        else:
            times = parse_time(
                table["timestamp"], "timestamp" if fmt != InputFormat.CSV else columns.timestamp
            )
    except ColumnError as error:
        raise DataError(at(error.row, str(error))) from None
    stamps, aware = times.seconds, times.aware
    clock = UTC_CLOCK if aware else NAIVE_CLOCK
    outside = (stamps != NAT_SECONDS) & ((stamps < EARLIEST_UTC) | (stamps >= LATEST_UTC))
    if timezone is not None and not aware:
        stamps = to_utc(np.where(outside, NAT_SECONDS, stamps), timezone, display)
        clock = f"UTC (converted from {timezone})"
    report.rows_read += len(table)
    if fmt == InputFormat.BINANCE:
        check_kline_interval(table, times, at)

    prices = np.stack([pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64) for c in OHLC], axis=1)
    if "volume" in table:
        volume = pd.to_numeric(table["volume"], errors="coerce").to_numpy(np.float64)
        report.volume_column = columns.volume or "volume" if fmt == InputFormat.CSV else "volume (6th field)"
    else:
        volume = np.zeros(len(table), dtype=np.float64)

    # A last line that may be cut is dropped with a line saying so (it is one minute, and whole lines
    # written without trailing zeros can look cut), never a stop: the other reasons decide that.
    delimiter = {InputFormat.HISTDATA: ";", InputFormat.BINANCE: ","}.get(fmt, columns.delimiter)
    cut = cut_last_row(text, table, delimiter, header_lines)
    if cut.any():
        log.warning("%s: dropped", at(len(table) - 1, CUT_SHORT))
    reasons = {  # a cut row first: it explains whatever else is wrong with it
        CUT_SHORT: cut,
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
    refused = bad & ~cut
    if refused.any() and (on_bad_rows == OnBadRows.ERROR or bad.all()):
        looks = sniff_format(text) if text else None
        hint = (
            f"; the file looks like {FORMAT_NAMES[looks]}: --format {looks.value}"
            if looks not in (None, fmt)
            else ""
        )
        row = int(np.flatnonzero(refused)[0])  # the first bad line of the file, whatever its reason
        reason = next(r for r, mask in reasons.items() if mask[row])
        if on_bad_rows == OnBadRows.ERROR or hint:
            raise DataError(at(row, reason) + (hint or " (use --on-bad-rows drop to drop such rows)"))
    clash = clashing_rows(stamps, np.c_[prices, volume], ~bad)
    if clash is not None:
        first, second = clash
        header = list(raw.columns) if isinstance(raw, pd.DataFrame) else list(table.columns)
        if fmt == InputFormat.CSV and text:
            header = list(read_text(text.split(b"\n", 1)[0] + b"\n", display, sep=columns.delimiter).columns)
        raise DataError(
            f"{at(first, 'a time')} and {at(second, 'the same time, other prices').split(', ', 1)[1]}. One "
            "minute twice with different prices is a column the reader did not understand, not data: "
            + duplicate_cause(fmt, unread_columns(header, columns) if fmt == InputFormat.CSV else [])
        )
    keep = ~bad
    report.rows_kept += int(keep.sum())
    rows = M1Rows(start=stamps[keep], ohlc=prices[keep], volume=volume[keep])
    return rows, clock, table.attrs.get("symbol")


def clashing_rows(stamps: np.ndarray, values: np.ndarray, usable: np.ndarray) -> tuple[int, int] | None:
    """The first two ``usable`` rows (in file order) with the same time and different ``values``; None when
    every repeated time repeats its whole row (a source's doubled hour: dropped later, counted)."""
    rows = np.flatnonzero(usable)
    order = rows[np.argsort(stamps[rows], kind="stable")]
    same = np.flatnonzero(stamps[order][1:] == stamps[order][:-1])
    a, b = order[same], order[same + 1]
    differ = ~np.all((values[a] == values[b]) | (np.isnan(values[a]) & np.isnan(values[b])), axis=1)
    if not differ.any():
        return None
    k = int(np.argmin(np.where(differ, np.maximum(a, b), np.iinfo(np.int64).max)))
    return int(min(a[k], b[k])), int(max(a[k], b[k]))


def duplicate_cause(fmt: InputFormat, unread: list[str]) -> str:
    """What a minute given twice with different prices most likely is, and the flag that fixes it."""
    if unread:
        return (
            f"the columns {unread} are not read: a column of instruments (--symbol NAME picks one; "
            "symbol, sym, name or ticker are recognised), of quote sides (a side column of bid and ask: "
            "--side bid, ask or mid), or a time column to join with the date (date/day with time/hour)"
        )
    if fmt == InputFormat.CSV:
        return (
            "two instruments, or bid and ask quotes, in one file without a column saying which, or times "
            "without their time of day (a separate time column?): split the file per instrument and side"
        )
    return "two instruments, or bid and ask quotes, in one file: one file per instrument and side"
