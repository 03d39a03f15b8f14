"""Bad input gives a clear error naming the file and line; drop mode reports what it dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage1_ds.data.ingest import InputFormat, OnBadRows, SourceFile, read_source
from stage1_ds.data.prepare import PrepareOptions, prepare_files
from stage1_ds.errors import DataError

GOOD = [
    "timestamp,open,high,low,close,volume",
    "2024-01-02T10:00:00,1.1000,1.1010,1.0990,1.1005,5",
    "2024-01-02T10:01:00,1.1005,1.1012,1.1001,1.1008,3",
    "2024-01-02T10:02:00,1.1008,1.1009,1.1000,1.1002,2",
]


def _csv(tmp_path: Path, lines: list[str], name: str = "bars.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(path: Path, on_bad_rows: OnBadRows = OnBadRows.ERROR):
    return read_source(SourceFile(path, "TEST", InputFormat.CSV), on_bad_rows)


def test_good_csv_reads_all_rows(tmp_path: Path) -> None:
    rows, report = _read(_csv(tmp_path, GOOD))
    assert report.rows_read == report.rows_kept == 3
    assert list(rows.start[1:] - rows.start[:-1]) == [60, 60]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("2024-01-02 bad,1.1,1.2,1.0,1.1,1", "malformed timestamp"),
        ("2024-01-02T10:03:00,-1.1,1.2,1.0,1.1,1", "non-positive price"),
        ("2024-01-02T10:03:00,1.1,1.05,1.0,1.1,1", "OHLC violation"),
        ("2024-01-02T10:03:00,1.1,1.2,1.15,1.1,1", "OHLC violation"),
        ("2024-01-02T10:03:00,1.1,abc,1.0,1.1,1", "non-numeric price"),
        ("2024-01-02T10:03:30,1.1,1.2,1.0,1.1,1", "whole minute"),
    ],
)
def test_bad_row_stops_with_file_line_and_row(tmp_path: Path, line: str, reason: str) -> None:
    path = _csv(tmp_path, [*GOOD[:2], line, *GOOD[2:]])
    with pytest.raises(DataError) as info:
        _read(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and reason in message and line in message


def test_drop_mode_drops_and_counts_bad_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path, [*GOOD, "2024-01-02T10:03:00,-1,1,1,1,0", "2024-01-02T10:04:00,1.1,1.0,1.2,1.1,0"])
    rows, report = _read(path, OnBadRows.DROP)
    assert report.rows_read == 5 and report.rows_kept == 3 and len(rows.start) == 3
    assert sum(report.bad_rows_dropped.values()) == 2
    assert any("non-positive" in k for k in report.bad_rows_dropped)


def test_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, ["timestamp,open,high,close", "2024-01-02T10:00:00,1,1,1"])
    with pytest.raises(DataError, match=r"bars\.csv, line 1: missing column\(s\) \['low'\]"):
        _read(path)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = _csv(tmp_path, [""], name="empty.csv")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        _read(path)


def test_folder_without_data_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("nothing here")
    with pytest.raises(DataError, match="folder holds no data file"):
        prepare_files([tmp_path], tmp_path / "out", InputFormat.HISTDATA)


def test_histdata_bad_row_names_line(tmp_path: Path) -> None:
    path = tmp_path / "DAT_ASCII_EURUSD_M1_2024.csv"
    path.write_text("20240102 100000;1.1;1.2;1.0;1.1;0\n20240102 100100;1.1;1.2;1.0;0;0\n")
    with pytest.raises(DataError, match=r"DAT_ASCII_EURUSD_M1_2024\.csv, line 2: non-positive price"):
        prepare_files([path], tmp_path / "out", InputFormat.HISTDATA)


def test_epoch_millisecond_and_second_timestamps(tmp_path: Path) -> None:
    seconds = 1_704_189_600  # 2024-01-02T10:00:00Z
    for scale in (1, 1000):
        lines = ["timestamp,open,high,low,close"] + [
            f"{(seconds + 60 * i) * scale},1.1,1.2,1.0,1.1" for i in range(3)
        ]
        rows, _ = _read(_csv(tmp_path, lines, name=f"epoch{scale}.csv"))
        assert list(rows.start) == [seconds, seconds + 60, seconds + 120]
        assert not rows.volume.any()


def test_too_little_data_for_a_window_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fewer than one window"):
        prepare_files(
            [_csv(tmp_path, GOOD)], tmp_path / "out", InputFormat.CSV, "TEST", PrepareOptions(window_bars=8)
        )


def test_the_first_bad_line_is_named_even_after_blank_lines(tmp_path: Path) -> None:
    bad_late = "2024-01-02 bad,1.1,1.2,1.0,1.1,1"
    bad_early = "2024-01-02T10:03:00,-1.1,1.2,1.0,1.1,1"
    path = _csv(tmp_path, [GOOD[0], "", GOOD[1], bad_early, GOOD[2], bad_late])
    with pytest.raises(DataError, match=r"bars\.csv, line 4: non-positive price: '2024-01-02T10:03:00,-1\.1"):
        _read(path)
