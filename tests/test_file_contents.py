"""Files read for what their bytes hold: compression and text encoding told by content whatever the suffix,
compressed input streamed through a cap (a decompression bomb is refused in bounded memory), a cut last
line caught whatever column the cut falls in, and archives of several parts or instruments read as what
they are: never one series of two instruments, overlapping parts of one series read once."""

from __future__ import annotations

import gzip
import logging
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stage1_ds.data.ingest import CsvColumns, InputFormat, OnBadRows, SourceFile, read_source
from stage1_ds.data.prepare import PrepareOptions, prepare_files
from stage1_ds.data.store import load_prepared
from stage1_ds.errors import DataError
from stage1_ds.timeframes import Timeframe

START = 1_546_423_200  # 2019-01-02 10:00 UTC
HEADER = "timestamp,open,high,low,close,volume"


def _lines(minutes: int, price: float = 1.1, seed: int = 0, first: int = START) -> list[str]:
    """Rows of a random walk, prices to five decimals and volumes to two, every minute from ``first``."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 2e-4, minutes)))
    rows = []
    for i, c in enumerate(close):
        o = close[i - 1] if i else price
        rows.append(
            f"{first + 60 * i},{o:.5f},{max(o, c) + 1e-4:.5f},{min(o, c) - 1e-4:.5f},{c:.5f},{10 + i % 7:.2f}"
        )
    return rows


def _text(minutes: int, **kw: object) -> bytes:
    return ("\n".join([HEADER, *_lines(minutes, **kw)]) + "\n").encode()  # type: ignore[arg-type]


def _read(path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return read_source(SourceFile(path, "TEST", InputFormat.CSV), OnBadRows.ERROR, **kw)  # type: ignore[arg-type]


def _options() -> PrepareOptions:
    return PrepareOptions(window_bars=4, split_fractions=(1.0, 0.0, 0.0))


# --- compression and encoding from the bytes ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "zip", "utf-16-le", "utf-16-be", "utf-32"])
def test_content_decides_how_a_file_is_read_whatever_its_name(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """gzip or zip bytes under a ``.csv`` name, UTF-16 without a byte-order mark and UTF-32 with one give the
    bars the plain UTF-8 file gives; a name that lies is said."""
    text = _text(120)
    plain = tmp_path / "plain.csv"
    plain.write_bytes(text)
    path = tmp_path / "bars.csv"
    if kind == "gzip":
        path.write_bytes(gzip.compress(text, mtime=0))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("bars.csv", text)
    else:
        path.write_bytes(text.decode().encode(kind))
    with caplog.at_level(logging.INFO):
        read, _ = _read(path)
    expected, _ = _read(plain)
    np.testing.assert_array_equal(read.start, expected.start)
    np.testing.assert_array_equal(read.ohlc, expected.ohlc)
    said = {"gzip": "its bytes are gzip", "zip": "its bytes are zip"}.get(kind, kind.upper().split("-LE")[0])
    if kind != "utf-32":
        assert said.lower() in caplog.text.lower()


def test_a_compressed_suffix_on_bytes_of_no_container_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv.gz"
    path.write_bytes(_text(30)[:-1])
    with pytest.raises(
        DataError, match=r"bars\.csv\.gz: not readable as \.gz compressed data: its first bytes"
    ):
        _read(path)


def test_parquet_with_a_time_index_and_a_time_column_reads_the_column_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("pyarrow")
    frame = pd.read_csv(pd.io.common.BytesIO(_text(60)))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s")
    same = frame.set_index(pd.DatetimeIndex(frame["timestamp"]))  # an unnamed index equal to the column
    same.index.name = None
    same.to_parquet(tmp_path / "same.parquet")
    shifted = same.set_axis(same.index + pd.Timedelta(hours=1))
    shifted.to_parquet(tmp_path / "shifted.parquet")
    expected = [START + 60 * i for i in range(60)]
    with caplog.at_level(logging.INFO):
        assert _read(tmp_path / "same.parquet")[0].start.tolist() == expected
    assert "the column is read, the index left unread" in caplog.text and "they differ" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _read(tmp_path / "shifted.parquet")[0].start.tolist() == expected
    assert "they differ" in caplog.text and "--timestamp-column" in caplog.text


# --- bounded memory -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["gzip", "zip"])
def test_a_decompression_bomb_is_refused_in_memory_bounded_by_the_cap(tmp_path: Path, container: str) -> None:
    """A small file that expands to 48 MB, read with a 4 MB cap: a clear error naming the cap's flag, and
    Python's peak allocation stays near the cap (decompressing it whole would take all 48 MB)."""
    line = b"1546423200,1.1,1.2,1.0,1.1,1\n"
    chunk = line * (2**20 // len(line))
    path = tmp_path / ("bomb.csv.gz" if container == "gzip" else "bomb.zip")
    if container == "gzip":
        with gzip.open(path, "wb", compresslevel=1) as out:
            out.write(HEADER.encode() + b"\n")
            for _ in range(48):
                out.write(chunk)
    else:
        with (
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
            archive.open("bomb.csv", "w") as out,
        ):
            for _ in range(48):
                out.write(chunk)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb.* expands past 4 MB .*--max-input-mb"):
            _read(path, max_input_mb=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MB for a 4 MB cap"


def test_the_cap_is_a_prepare_flag(tmp_path: Path) -> None:
    from stage1_ds.cli import main

    path = tmp_path / "EURUSD.csv.gz"
    path.write_bytes(gzip.compress(_text(40_000), mtime=0))  # about 2 MB of text
    out = tmp_path / "data"
    args = ["prepare", "--format", "csv", "--input", str(path), "--out", str(out), "--window-bars", "4"]
    assert main([*args, "--max-input-mb", "1"]) == 2
    assert main([*args, "--max-input-mb", "3"]) == 0
    with pytest.raises(DataError, match="--max-input-mb 0: expected a size of at least 1 MB"):
        PrepareOptions(max_input_mb=0)


# --- a cut last line -----------------------------------------------------------------------------------------


def _cut_cases() -> dict[str, tuple[list[str], str]]:
    """Name: (the header and rows, the text of the file with its last line cut)."""
    rows = _lines(60)
    plain = [HEADER, *rows]
    middle = ["timestamp,volume,open,high,low,close"]
    middle += [",".join([f[0], f[5], *f[1:5]]) for f in (r.split(",") for r in rows)]
    # Prices written without trailing zeros (1.10590 as 1.1059), the close last: a close 1.10599 cut to
    # 1.1059 has every field and reads as a price.
    zeros = [
        middle[0],
        *(",".join(f"{float(x):g}" if k > 1 else x for k, x in enumerate(r.split(","))) for r in middle[1:]),
    ]
    zeros[-1] = zeros[-1].split(",")[0] + ",16.00,1.10599,1.10599,1.10599,1.10599"
    return {
        "in the last column (volume)": (plain, "\n".join(plain)[:-1]),  # 16.00 -> 16.0
        "in the middle column (volume)": (
            middle,
            "\n".join([*middle[:-1], middle[-1].split(",", 2)[0] + ",1"]),
        ),
        "a row with fewer fields than the header": (plain, "\n".join(plain).rsplit(",", 1)[0]),
        "a price written without trailing zeros": (zeros, "\n".join(zeros)[:-1]),
    }


@pytest.mark.parametrize("case", list(_cut_cases()))
def test_a_cut_last_line_is_dropped_and_said_whatever_column_the_cut_falls_in(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    lines, text = _cut_cases()[case]
    path = tmp_path / "bars.csv"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        read, report = _read(path)
    assert len(read.start) == len(lines) - 2, "every whole row kept, the cut one dropped"
    assert f"line {len(lines)}: last line perhaps cut short" in caplog.text
    assert sum(report.bad_rows_dropped.values()) == 1
    path.write_text("\n".join(lines))  # whole, only the final newline missing: every row read
    assert len(_read(path)[0].start) == len(lines) - 1


def test_a_cut_last_line_of_another_symbol_leaves_the_rows_read_alone(tmp_path: Path) -> None:
    rows = [f"{r.split(',', 1)[0]},{sym},{r.split(',', 1)[1]}" for r in _lines(40) for sym in ("EUR", "GBP")]
    path = tmp_path / "long.csv"
    path.write_text("\n".join(["timestamp,symbol,open,high,low,close,volume", *rows])[:-2])
    assert len(_read(path, columns=CsvColumns(symbol="EUR"))[0].start) == 40


# --- archives and parts ------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_of_two_instruments_is_two_instruments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A EURUSD year and a GBPUSD year in one zip (their times do not overlap): each member is its own
    instrument, never one series with a jump where they meet; --instrument for it is refused."""
    eur = _text(1500, price=1.14)
    gbp = _text(1500, price=1.27, seed=1, first=START + 86_400)
    path = _zip(
        tmp_path / "2019.zip", {"DAT_ASCII_EURUSD_M1_2019.csv": eur, "DAT_ASCII_GBPUSD_M1_2019.csv": gbp}
    )
    with caplog.at_level(logging.INFO):
        manifest = prepare_files([path], tmp_path / "out", InputFormat.CSV, options=_options())
    assert sorted(manifest["instruments"]) == ["EURUSD", "GBPUSD"]
    assert "2019.zip holds 2 instruments" in caplog.text
    data = load_prepared(tmp_path / "out")
    for name, text in (("EURUSD", eur), ("GBPUSD", gbp)):
        expected = pd.read_csv(pd.io.common.BytesIO(text))
        begin, end = data.rows(name, Timeframe.M1)
        starts = np.asarray(data.bars[Timeframe.M1].start[begin:end])
        np.testing.assert_array_equal(starts, expected["timestamp"].to_numpy())
    with pytest.raises(
        DataError, match=r"2019\.zip: its members name 2 instruments .*EURUSD.*GBPUSD.*drop --instrument"
    ):
        prepare_files([path], tmp_path / "one", InputFormat.CSV, "FX", _options())


def test_symbol_columns_of_different_instruments_are_never_one_series(tmp_path: Path) -> None:
    def with_symbol(text: bytes, symbol: str) -> bytes:
        head, *rows = text.decode().splitlines()
        return "\n".join([head + ",symbol", *(f"{r},{symbol}" for r in rows)]).encode()

    eur = with_symbol(_text(300, price=1.14), "EURUSD")
    gbp = with_symbol(_text(300, price=1.27, first=START + 86_400), "GBPUSD")
    archive = _zip(tmp_path / "parts.zip", {"part1.csv": eur, "part2.csv": gbp})
    with pytest.raises(
        DataError,
        match=r"parts\.zip: its tables' symbol columns name different instruments \(part1\.csv \(EURUSD\), part2\.csv \(GBPUSD\)\)",
    ):
        _read(archive)
    (tmp_path / "a.csv").write_bytes(eur)
    (tmp_path / "b.csv").write_bytes(gbp)
    with pytest.raises(
        DataError, match=r"instrument FX: its files' symbol columns name different instruments"
    ):
        prepare_files(
            [tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out", InputFormat.CSV, "FX", _options()
        )


@pytest.mark.parametrize("where", ["zip", "files"])
def test_overlapping_parts_of_one_series_are_read_once_and_disagreeing_ones_refused(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Weekly parts of one instrument sharing a whole day: the same bars there are one series (said in one
    line); other bars there are refused with the first minute they differ at."""
    rows = _lines(3 * 1440)
    first, second = rows[: 2 * 1440], rows[1440:]  # the middle day in both
    bad = list(second)
    bad[100] = bad[100].replace(bad[100].split(",")[4], f"{float(bad[100].split(',')[4]) + 1e-4:.5f}", 1)

    def prepare(parts: list[list[str]], out: str) -> dict:
        texts = {f"EURUSD_week{k}.csv": "\n".join([HEADER, *p]).encode() + b"\n" for k, p in enumerate(parts)}
        if where == "zip":
            inputs = [_zip(tmp_path / f"{out}.zip", texts)]
        else:
            (tmp_path / out).mkdir()
            inputs = []
            for name, text in texts.items():
                (tmp_path / out / name).write_bytes(text)
                inputs.append(tmp_path / out / name)
        return prepare_files(inputs, tmp_path / f"prepared_{out}", InputFormat.CSV, "EURUSD", _options())

    with caplog.at_level(logging.INFO):
        prepare([first, second], "agree")
    assert "share 1440 minutes with the same bars: read once" in caplog.text
    m1 = load_prepared(tmp_path / "prepared_agree").bars[Timeframe.M1]
    assert np.asarray(m1.start).tolist() == [START + 60 * i for i in range(3 * 1440)]
    minute = pd.Timestamp(int(bad[100].split(",")[0]), unit="s")
    with pytest.raises(DataError, match=rf"share 1,440 .* differ(ing)?,? first at {minute:%Y-%m-%d %H:%M}"):
        prepare([first, bad], "disagree")
