"""Inputs that cannot mislead: hostile but plausible files give the right bars or a clear error, never
silently wrong bars and never a traceback."""

from __future__ import annotations

import logging
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stage1_ds.config import ConfigError, DataConfig, MaskingConfig, load_config
from stage1_ds.data.ingest import (
    CsvColumns,
    InputFormat,
    OnBadRows,
    SourceFile,
    discover_inputs,
    read_source,
)
from stage1_ds.data.prepare import PrepareOptions, prepare_files, summary_table
from stage1_ds.data.timeframes import MAX_UNITS, Bars, aggregate, volume_unit, volume_units
from stage1_ds.data.windows import WindowDataset
from stage1_ds.errors import DataError
from stage1_ds.model.losses import cross_timeframe_terms
from stage1_ds.model.masking import MODES, MaskedWindows
from stage1_ds.timeframes import TIMEFRAMES

START = 1_704_189_600  # 2024-01-02T10:00:00Z
OHLCV = "1.1,1.2,1.0,1.15,5"


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _csv(tmp_path: Path, stamps: list[str], name: str = "bars.csv", columns: str = "timestamp") -> Path:
    return _write(
        tmp_path / name, [f"{columns},open,high,low,close,volume"] + [f"{t},{OHLCV}" for t in stamps]
    )


def _read(path: Path, fmt: InputFormat = InputFormat.CSV, on_bad_rows: OnBadRows = OnBadRows.ERROR, **kw):
    return read_source(SourceFile(path, "TEST", fmt), on_bad_rows, **kw)


def _klines(minutes: int, interval_ms: int = 60_000, scale: int = 1000) -> list[str]:
    """Binance kline rows: open time, OHLCV, close time, and five more fields, in ms (or us: scale 1e6)."""
    step = interval_ms * scale // 1000
    return [
        f"{(START * 1000 + i * interval_ms) * scale // 1000},{OHLCV},"
        f"{(START * 1000 + i * interval_ms) * scale // 1000 + step - 1},0,10,0,0,0"
        for i in range(minutes)
    ]


# --- timestamps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 10**3, 10**6, 10**9])
def test_epoch_times_in_any_unit_are_read_by_magnitude(tmp_path: Path, scale: int) -> None:
    """Seconds, ms, us and ns (pandas' and Parquet's int64 default, once read as microseconds)."""
    path = _csv(tmp_path, [str((START + 60 * i) * scale) for i in range(3)])
    rows, _ = _read(path)
    assert rows.start.tolist() == [START, START + 60, START + 120]


def test_epoch_milliseconds_before_1990_are_refused_not_read_as_seconds(tmp_path: Path) -> None:
    """6.3e10 ms is 1972, and 6.3e10 s the year 3966: a magnitude rule with no range read it as seconds."""
    early = 63_072_000  # 1972-01-01
    path = _csv(tmp_path, [str((early + 60 * i) * 1000) for i in range(3)])
    with pytest.raises(DataError, match=r"line 2: not a timestamp this reader knows .* a date in 1990-2100"):
        _read(path)
    rows, _ = _read(_csv(tmp_path, [str((START + 60 * i) * 1000) for i in range(3)], name="ms.csv"))
    assert rows.start.tolist() == [START, START + 60, START + 120]


def test_a_column_of_epoch_times_in_two_units_is_an_error_naming_both_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path, [str(START * 1000), str(START + 60), str((START + 120) * 1000)])
    with pytest.raises(
        DataError, match=r"bars\.csv, line 3: column 'timestamp' holds epoch times in two units "
    ):
        _read(path)


def test_numbers_shaped_like_yyyymmddhhmmss_are_named_with_the_fix(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["20240102100000", "20240102100100"])
    with pytest.raises(
        DataError, match=r"line 2: not a timestamp this reader knows .* looks like YYYYMMDDHHMMSS"
    ):
        _read(path)


def test_a_year_typo_is_a_date_outside_1990_to_2100(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["2024-01-02T10:00:00", "2924-01-02T10:01:00", "2024-01-02T10:02:00"])
    with pytest.raises(DataError, match=r"bars\.csv, line 3: date outside 1990-2100: '2924-01-02T10:01:00"):
        _read(path)
    rows, report = _read(path, on_bad_rows=OnBadRows.DROP)
    assert len(rows.start) == 2 and report.bad_rows_dropped == {"date outside 1990-2100": 1}


def test_naive_and_offset_times_in_one_file_are_bad_rows_never_a_traceback(tmp_path: Path) -> None:
    for first, later in (("", "Z"), ("+00:00", "")):
        stamps = [f"2024-01-02T10:0{i}:00" + (first if i == 0 else later) for i in range(3)]
        path = _csv(tmp_path, stamps, name=f"mixed{first or 'naive'}.csv")
        with pytest.raises(DataError, match=r"line 3: naive and offset timestamps mixed in one file"):
            _read(path)
        rows, report = _read(path, on_bad_rows=OnBadRows.DROP)
        assert len(rows.start) == 1 and sum(report.bad_rows_dropped.values()) == 2


def test_one_instruments_files_on_two_clocks_are_an_error_naming_both(tmp_path: Path) -> None:
    utc = _csv(tmp_path, [f"2024-01-02T10:{i:02d}:00Z" for i in range(5)], name="EURUSD_a.csv")
    naive = _csv(tmp_path, [f"2024-01-03T10:{i:02d}:00" for i in range(5)], name="EURUSD_b.csv")
    options = PrepareOptions(window_bars=2, split_fractions=(1.0, 0.0, 0.0))
    with pytest.raises(
        DataError, match=r"instrument EURUSD: .*EURUSD_a\.csv has UTC .*EURUSD_b\.csv naive .*--timezone"
    ):
        prepare_files([utc, naive], tmp_path / "out", InputFormat.CSV, options=options)
    converted = PrepareOptions(window_bars=2, split_fractions=(1.0, 0.0, 0.0), timezone="Europe/London")
    prepare_files([utc, naive], tmp_path / "ok", InputFormat.CSV, options=converted)  # both UTC now


# --- Binance ------------------------------------------------------------------------------------------


def test_five_minute_klines_are_refused_by_their_name_and_by_their_close_times(tmp_path: Path) -> None:
    named = _write(tmp_path / "BTCUSDT-5m-2024-01.csv", _klines(10, 300_000))
    with pytest.raises(DataError, match=r"BTCUSDT-5m-2024-01\.csv: the file name says 5m klines"):
        _read(named, InputFormat.BINANCE)
    unnamed = _write(tmp_path / "BTCUSDT.csv", _klines(10, 300_000))
    with pytest.raises(DataError, match=r"BTCUSDT\.csv, line 1: klines of 5 minutes .* expected 1-minute"):
        _read(unnamed, InputFormat.BINANCE)
    for scale in (10**3, 10**6):  # one-minute klines in ms and us pass
        rows, _ = _read(
            _write(tmp_path / f"BTCUSDT-1m-{scale}.csv", _klines(10, scale=scale)), InputFormat.BINANCE
        )
        assert len(rows.start) == 10


def test_a_byte_order_mark_and_blank_lines_before_the_first_row_lose_no_row(tmp_path: Path) -> None:
    lines = _klines(5)
    path = tmp_path / "BTCUSDT-1m-2024-01.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    rows, report = _read(path, InputFormat.BINANCE)
    assert len(rows.start) == 5 and rows.start[0] == START and report.rows_read == 5
    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy,taker_quote,ignore"
    blank_first = _write(tmp_path / "BTCUSDT-1m-blank.csv", ["", header, *lines])
    assert len(_read(blank_first, InputFormat.BINANCE)[0].start) == 5
    bad = _write(tmp_path / "BTCUSDT-1m-bad.csv", ["", header, lines[0], lines[1].replace(",1.2,", ",-1.2,")])
    with pytest.raises(DataError, match=r"line 4: non-positive price: '1704189660000,"):
        _read(bad, InputFormat.BINANCE)


# --- nulls and corrupted cells in every reader ------------------------------------------------------


def _frame(rows: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": [f"2024-01-02T10:{i:02d}:00" for i in range(rows)],
            "open": [1.1] * rows,
            "high": [1.2] * rows,
            "low": [1.0] * rows,
            "close": [1.15] * rows,
            "volume": [5.0] * rows,
        }
    )


def _cell(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _as_histdata(frame: pd.DataFrame) -> str:
    """HistData lines: YYYYMMDD HHMMSS;open;high;low;close;volume (an unreadable time kept as it is)."""
    lines = []
    for row in frame.itertuples(index=False):
        time = pd.to_datetime(_cell(row.timestamp), errors="coerce")
        stamp = (
            _cell(row.timestamp)
            if pd.isna(time) or "Z" in _cell(row.timestamp)
            else time.strftime("%Y%m%d %H%M%S")
        )
        lines.append(";".join([stamp, *(_cell(v) for v in row[1:])]))
    return "\n".join(lines)


def _as_binance(frame: pd.DataFrame) -> str:
    """Kline lines in ms; an unreadable time kept as it is (its close time too)."""
    lines = []
    for row in frame.itertuples(index=False):
        time = pd.to_datetime(_cell(row.timestamp), errors="coerce", utc=True)
        opened = (
            _cell(row.timestamp)
            if pd.isna(time) or "Z" in _cell(row.timestamp)
            else str(int(time.timestamp() * 1000))
        )
        closed = str(int(opened) + 59_999) if opened.isdigit() else opened
        lines.append(",".join([opened, *(_cell(v) for v in row[1:]), closed, "0", "10", "0", "0", "0"]))
    return "\n".join(lines)


WRITERS: dict[str, Callable[[pd.DataFrame, Path], Path]] = {
    "csv": lambda f, d: _write(d / "TEST.csv", [f.to_csv(index=False).strip()]),
    "csv.gz": lambda f, d: _gz(d / "TEST.csv.gz", f.to_csv(index=False)),
    "zip": lambda f, d: _zip(d / "TEST.zip", f.to_csv(index=False)),
    "parquet": lambda f, d: _parquet(d / "TEST.parquet", f),
    "histdata": lambda f, d: _write(d / "DAT_ASCII_TEST_M1_2024.csv", [_as_histdata(f)]),
    "binance": lambda f, d: _write(d / "TEST-1m-2024-01.csv", [_as_binance(f)]),
}
FORMATS = {"histdata": InputFormat.HISTDATA, "binance": InputFormat.BINANCE}


def _gz(path: Path, text: str) -> Path:
    import gzip

    path.write_bytes(gzip.compress(text.encode()))
    return path


def _zip(path: Path, text: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("TEST.csv", text)
    return path


def _parquet(path: Path, frame: pd.DataFrame) -> Path:
    """Columns of mixed types (a text cell among numbers) are written as text, nulls kept."""
    mixed = [c for c in frame.columns if frame[c].dtype == object]
    frame.astype({c: "string" for c in mixed}).to_parquet(path)
    return path


CORRUPTIONS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "null timestamp": lambda f: f.astype({"timestamp": object}).assign(
        timestamp=[*f.timestamp[:2], None, *f.timestamp[3:]]
    ),
    "null price": lambda f: f.assign(high=[*f.high[:2], None, *f.high[3:]]),
    "NaN volume": lambda f: f.assign(volume=[*f.volume[:2], float("nan"), *f.volume[3:]]),
    "text price": lambda f: f.astype({"low": object}).assign(low=[*f.low[:2], "abc", *f.low[3:]]),
    "negative price": lambda f: f.assign(open=[*f.open[:2], -1.1, *f.open[3:]]),
    "text timestamp": lambda f: f.assign(timestamp=[*f.timestamp[:2], "yesterday", *f.timestamp[3:]]),
    "mixed offset": lambda f: f.assign(timestamp=[*f.timestamp[:2], f.timestamp[2] + "Z", *f.timestamp[3:]]),
}


@pytest.mark.parametrize("reader", list(WRITERS))
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_every_reader_turns_every_corrupted_cell_into_a_named_error_or_a_counted_drop(
    tmp_path: Path, reader: str, corruption: str
) -> None:
    """One corrupted cell in row 3 of a generated file: in error mode a DataError naming the file, in drop
    mode one dropped row, counted; never another exception. A byte-order mark costs no row."""
    frame = CORRUPTIONS[corruption](_frame())
    path = WRITERS[reader](frame, tmp_path)
    fmt = FORMATS.get(reader, InputFormat.CSV)
    if reader in ("csv", "histdata", "binance"):  # text files: a byte-order mark first
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.raises(DataError, match=path.name):
        _read(path, fmt)
    rows, report = _read(path, fmt, OnBadRows.DROP)
    assert len(rows.start) == 5 and sum(report.bad_rows_dropped.values()) == 1, report.bad_rows_dropped


# --- volume ----------------------------------------------------------------------------------------------


def _bars(volume: np.ndarray) -> Bars:
    n = len(volume)
    ohlc = np.tile([1.1, 1.2, 1.0, 1.15], (n, 1))
    start = START + 60 * np.arange(n, dtype=np.int64)
    return Bars(
        start, ohlc, volume, np.ones(n, dtype=np.int32), volume_units(volume, volume_unit(volume, start))
    )


def test_volume_units_stay_exact_in_float32_whatever_the_range_of_volumes() -> None:
    """A 1e21 range (once -9.2e18 units) and heavy tails (once beyond 2^24 units a bar): every bar of every
    timeframe stays below 2^24 units, no unit count is negative."""
    rng = np.random.default_rng(0)
    for volume in (np.array([1e-9] * 4 + [1e12]), np.round(rng.pareto(0.8, 2000) * 100)):
        m1 = _bars(volume)
        for tf in TIMEFRAMES:
            units = aggregate(m1, tf).units
            assert units.min() >= 0 and units.max() < MAX_UNITS, tf


def test_the_cross_timeframe_volume_loss_is_exactly_zero_on_true_heavy_tailed_bars(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    minutes = 4 * 1440
    frame = pd.DataFrame(
        {
            "timestamp": START + 60 * np.arange(minutes),
            "open": 1.1,
            "high": 1.2,
            "low": 1.0,
            "close": 1.15,
            "volume": np.round(rng.pareto(0.5, minutes) * 1000),
        }
    )
    old_unit = 2.0 ** np.round(np.log2(np.median(frame.volume) / 16))  # 1/16 of the median, whatever the tail
    assert frame.volume.rolling(240).sum().max() / old_unit > 2**24, "some h4 bar beyond what it kept exact"
    path = tmp_path / "HEAVY.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "out"
    prepare_files(
        [path], out, InputFormat.CSV, options=PrepareOptions(window_bars=16, split_fractions=(1, 0, 0))
    )
    data = DataConfig(window_bars=16, channels=["ohlc", "volume"])
    windows = WindowDataset(out, "train", data)
    batch = windows.batch(np.arange(0, len(windows), 7))
    terms = cross_timeframe_terms({tf: w.features for tf, w in batch.windows.items()}, batch)
    assert all(t.count > 0 for t in terms.values())
    assert all(t.value.item() == 0.0 for t in terms.values()), {tf: t.value.item() for tf, t in terms.items()}


# --- configs ---------------------------------------------------------------------------------------------


def test_a_window_of_one_patch_is_refused_with_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"data\.window_bars: windows of m1 m5 m15 m30 h1 h4 of 8 bars make one patch"
    ):
        load_config(None, ["data.window_bars=8"])
    with pytest.raises(ConfigError, match=r"data\.window_bars_per_timeframe\.h4: windows of h4 of 2 bars"):
        load_config(None, ["data.window_bars_per_timeframe={h4: 2}"])


def test_time_masks_and_their_fallback_never_hide_a_kept_timeframe_whole(synthetic_small: Path) -> None:
    # h4 windows of 5 bars of patches of 4 span 20 hours, less than the 32 hours of h1: time masks can hide
    # h4 whole, and such samples fall back to spans
    config = load_config(
        None, ["data.window_bars=32", "data.window_bars_per_timeframe={h4: 5}", "model.patch_len=4"]
    )
    windows = WindowDataset(synthetic_small, "train", config.data, seed=0)
    masked = MaskedWindows(windows, MaskingConfig(modes={"time": 1.0}), config.model.patch_len, seed=0)
    batch = masked.batch(np.arange(0, len(windows), 3)[:400])
    assert batch.mask_mode is not None
    fell_back = batch.mask_mode != MODES.index("time")
    assert fell_back.any(), "some samples fall back to spans at this geometry"
    for tf, window in batch.windows.items():
        kept = window.valid.any(1)
        hidden = ((window.mask | ~window.valid) & window.valid.any(1, keepdim=True)).all(1)  # type: ignore[operator]
        assert not (kept & hidden).any(), tf


# --- columns, formats and names ----------------------------------------------------------------------


def test_a_named_volume_column_must_exist_and_the_summary_says_where_volume_came_from(tmp_path: Path) -> None:
    path = _csv(tmp_path, [f"{START + 60 * i}" for i in range(600)], name="BTC.csv")
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['vol'\]; the header has \['timestamp', .*'volume'\]"
    ):
        _read(path, columns=CsvColumns(volume="vol"))
    options = PrepareOptions(window_bars=2, split_fractions=(1.0, 0.0, 0.0))
    manifest = prepare_files([path], tmp_path / "out", InputFormat.CSV, options=options)
    assert (
        "BTC: 0 duplicate timestamps dropped; bad rows dropped: none; volume from 'volume'"
        in summary_table(manifest)
    )


@pytest.mark.parametrize(
    ("asked", "content", "looks"),
    [
        (InputFormat.HISTDATA, "timestamp,open,high,low,close\n2024-01-02T10:00:00,1.1,1.2,1.0,1.1\n", "csv"),
        (InputFormat.BINANCE, "timestamp,open,high,low,close\n2024-01-02T10:00:00,1.1,1.2,1.0,1.1\n", "csv"),
        (
            InputFormat.CSV,
            "20240102 100000;1.1;1.2;1.0;1.1;0\n20240102 100100;1.1;1.2;1.0;1.1;0\n",
            "histdata",
        ),
        (InputFormat.HISTDATA, "\n".join(_klines(3)) + "\n", "binance"),
    ],
)
def test_a_file_in_another_format_says_which_format_it_looks_like(
    tmp_path: Path, asked: InputFormat, content: str, looks: str
) -> None:
    path = tmp_path / "DAT_ASCII_X_M1_2024.csv"
    path.write_text(content)
    for mode in OnBadRows:  # dropping every row is no way out: the hint comes either way
        with pytest.raises(DataError, match=rf"looks like .*--format {looks}"):
            _read(path, asked, mode)


def test_one_rule_names_instruments_from_file_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = {
        "HISTDATA_COM_ASCII_EURUSD_M12019.zip": ("EURUSD", None),
        "XAUUSD_2019.zip": ("XAUUSD", None),
        "gbpusd-m1-bid-2012.csv": ("GBPUSD", "bid"),
        "BTCUSDT-1m-2024-01.zip": ("BTCUSDT", None),
        "BTC_2023.csv": ("BTC", None),
        "BTC_2024.csv": ("BTC", None),
    }
    for name in names:
        (tmp_path / name).write_text("")
    with caplog.at_level(logging.INFO):
        found = discover_inputs([tmp_path], InputFormat.HISTDATA, None)
    assert {s.path.name: (s.instrument, s.side) for s in found} == names
    assert "are one instrument, BTC" in caplog.text
    (tmp_path / "2019.csv").write_text("")
    with pytest.raises(DataError, match=r"2019\.csv: the file name holds no instrument name .* --instrument"):
        discover_inputs([tmp_path / "2019.csv"], InputFormat.CSV, None)


def test_bid_and_ask_files_of_one_instrument_are_an_error_not_a_duplicate_count(tmp_path: Path) -> None:
    stamps = [f"2024-01-02T10:{i:02d}:00Z" for i in range(40)]
    bid = _csv(tmp_path, stamps, name="gbpusd-m1-bid-2024.csv")
    ask = _csv(tmp_path, stamps, name="gbpusd-m1-ask-2024.csv")
    with pytest.raises(
        DataError, match=r"instrument GBPUSD: .* share 40 of their timestamps .* ask and bid quotes"
    ):
        prepare_files([bid, ask], tmp_path / "out", InputFormat.CSV, options=PrepareOptions(window_bars=2))
    with pytest.raises(DataError, match=r"instrument ONE: .* share 40 of their timestamps"):
        prepare_files([bid, ask], tmp_path / "out2", InputFormat.CSV, "ONE", PrepareOptions(window_bars=2))


# --- conventions of vendors' files ------------------------------------------------------------------------


def test_column_names_match_without_case(tmp_path: Path) -> None:
    rows = [f"{START + 60 * i},1.10,1.20,1.00,1.15,{i + 1}" for i in range(30)]
    path = _write(tmp_path / "caps.csv", ["Timestamp,Open,High,Low,Close,Volume", *rows])
    read, _ = _read(path)
    assert read.volume.sum() == sum(range(1, 31)), "the Volume column is read, not zero"


@pytest.mark.parametrize(("minutes", "found"), [(2, "2 minutes"), (60, "1 hour")])
def test_bars_that_are_not_one_minute_bars_are_refused_with_the_interval_found(
    tmp_path: Path, minutes: int, found: str
) -> None:
    path = _csv(tmp_path, [f"{START + 60 * minutes * i}" for i in range(200)])
    with pytest.raises(DataError, match=rf"bars.csv: its bars are {found} apart \(100% of 199"):
        _read(path)


def test_one_minute_bars_with_gaps_are_one_minute_bars(tmp_path: Path) -> None:
    minutes = [i for i in range(400) if i % 7 != 3 and not 100 <= i < 160]  # missing minutes and an hour
    read, _ = _read(_csv(tmp_path, [f"{START + 60 * i}" for i in minutes]))
    assert len(read.start) == len(minutes)


@pytest.mark.parametrize("suffix", ["", "Z", "+01:00"])
def test_iso_timestamps_are_read_without_a_library_warning(tmp_path: Path, suffix: str) -> None:
    stamps = [
        pd.Timestamp(START + 60 * i, unit="s").strftime("%Y-%m-%d %H:%M:%S") + suffix for i in range(40)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would reach the user's terminal
        read, _ = _read(_csv(tmp_path, stamps))
    assert len(read.start) == 40


def test_a_row_far_outside_the_rest_of_the_data_is_a_bad_row_named_with_its_line(tmp_path: Path) -> None:
    stamps = [f"{START + 60 * i}" for i in range(600)]
    stamps.insert(300, "4070908800")  # 2099-01-01, a typo in the middle of the file
    path = _csv(tmp_path, stamps)
    with pytest.raises(DataError, match=r"bars.csv, line 302: .*far from the rest of the file"):
        _read(path)
    read, _ = _read(path, on_bad_rows=OnBadRows.DROP)
    assert len(read.start) == 600 and read.start.max() < START + 60 * 600


@pytest.mark.parametrize("name", ["timestamp", None])
def test_parquet_with_the_time_as_its_index_is_read(tmp_path: Path, name: str | None) -> None:
    times = pd.to_datetime(START + 60 * np.arange(50), unit="s", utc=True)
    frame = pd.DataFrame({"open": 1.1, "high": 1.2, "low": 1.0, "close": 1.15}, index=times)
    frame.index.name = name
    frame.to_parquet(tmp_path / "indexed.parquet")
    read, _ = _read(tmp_path / "indexed.parquet")  # an unnamed time index is the timestamp column
    assert read.start.tolist() == (START + 60 * np.arange(50)).tolist()


@pytest.mark.parametrize(
    "row",
    [
        "{t},1.10,1.20,1.00,1.15,5,",  # a delimiter at the end of the line
        "{t},1,234.5,1,240.0,1,230.0,1,235.0,5",  # thousands separators
        "{t},1,10,1,20,1,00,1,15,5",  # decimal commas
    ],
)
def test_rows_with_more_fields_than_the_header_say_so_not_a_timestamp_error(tmp_path: Path, row: str) -> None:
    lines = ["timestamp,open,high,low,close,volume", *(row.format(t=START + 60 * i) for i in range(30))]
    with pytest.raises(DataError, match=r"bars.csv, line 2: \d+ fields where the header has 6"):
        _read(_write(tmp_path / "bars.csv", lines))


def test_utf16_text_is_read_as_text(tmp_path: Path) -> None:
    lines = ["timestamp,open,high,low,close,volume", *(f"{START + 60 * i},{OHLCV}" for i in range(30))]
    path = tmp_path / "bars.csv"
    path.write_bytes("\n".join(lines).encode("utf-16"))  # with its byte-order mark, as Windows tools write
    read, _ = _read(path)
    assert len(read.start) == 30


def test_an_archive_of_two_instruments_is_refused_naming_both(tmp_path: Path) -> None:
    """Two instruments' files in one zip share their timestamps (parts of one series do not: they stay one
    instrument, tests/test_inputs.py)."""
    times = [START + 60 * i for i in range(100)]
    path = tmp_path / "fx.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "EURUSD.csv",
            "\n".join(["timestamp,open,high,low,close", *(f"{t},1.1,1.2,1.0,1.1" for t in times)]),
        )
        archive.writestr(
            "GBPUSD.csv",
            "\n".join(["timestamp,open,high,low,close", *(f"{t},1.3,1.4,1.2,1.3" for t in times)]),
        )
    with pytest.raises(DataError, match=r"fx.zip: its tables EURUSD.csv and GBPUSD.csv share 100 timestamps"):
        _read(path)


def test_a_symbol_column_of_several_instruments_is_refused(tmp_path: Path) -> None:
    rows = [f"{START + 60 * (i // 2)},{'EURUSD' if i % 2 else 'GBPUSD'},1.1,1.2,1.0,1.15" for i in range(60)]
    path = _write(tmp_path / "long.csv", ["timestamp,Symbol,open,high,low,close", *rows])
    with pytest.raises(
        DataError, match=r"long.csv: its column 'Symbol' names 2 instruments \(GBPUSD, EURUSD\)"
    ):
        _read(path)
    one = _write(
        tmp_path / "one.csv",
        ["timestamp,symbol,open,high,low,close", *(r.replace("GBPUSD", "EURUSD") for r in rows[1::2])],
    )
    assert len(_read(one)[0].start) == 30


@pytest.mark.parametrize("asked", ["timestamp", "date"])
def test_separate_date_and_time_columns_are_joined(tmp_path: Path, asked: str) -> None:
    stamps = [pd.Timestamp(START + 60 * i, unit="s") for i in range(120)]
    rows = [f"{t:%Y-%m-%d},{t:%H:%M},1.1,1.2,1.0,1.15" for t in stamps]
    read, _ = _read(
        _write(tmp_path / "dt.csv", ["Date,Time,open,high,low,close", *rows]),
        columns=CsvColumns(timestamp=asked),
    )
    assert read.start.tolist() == [START + 60 * i for i in range(120)], "every minute kept"
