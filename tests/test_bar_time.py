"""How bars are stamped, weighed from what markets do at known times (`stage1_ds.data.ingest.stamps`):
prepare warns when --bar-time contradicts strong evidence either way, never on a start-stamped exchange
session that ends with its closing print, and when a file's halves disagree."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import EURUSD_2019, require_histdata
from stage1_ds.data.ingest import BarTime, InputFormat, M1Rows, OnBadRows, SourceFile, read_source
from stage1_ds.data.prepare import PrepareOptions, prepare_files, summary_table
from stage1_ds.data.store import load_prepared
from stage1_ds.timeframes import Timeframe


@pytest.fixture(scope="module")
def month() -> M1Rows:
    """A real month of EURUSD, stamped at the start of each minute (HistData)."""
    require_histdata()
    rows, _ = read_source(SourceFile(EURUSD_2019, "EURUSD", InputFormat.HISTDATA), OnBadRows.ERROR)
    keep = rows.start < rows.start[0] + 31 * 86_400
    return M1Rows(rows.start[keep], rows.ohlc[keep], rows.volume[keep])


def _prepare(
    tmp_path: Path,
    name: str,
    start: np.ndarray,
    ohlc: np.ndarray,
    caplog: pytest.LogCaptureFixture,
    **kw: object,
) -> tuple[dict, dict, str]:
    path = tmp_path / f"{name}.csv"
    lines = ["timestamp,open,high,low,close"]
    lines += [f"{t},{o},{h},{lo},{c}" for t, (o, h, lo, c) in zip(start, ohlc, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    options = PrepareOptions(window_bars=8, split_fractions=(1.0, 0.0, 0.0), **kw)  # type: ignore[arg-type]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        manifest = prepare_files([path], tmp_path / name, InputFormat.CSV, "X", options)
    return manifest, manifest["instruments"]["X"], caplog.text


def test_end_stamped_bars_are_detected_and_moved_back_with_bar_time_end(
    tmp_path: Path, month: M1Rows, caplog: pytest.LogCaptureFixture
) -> None:
    """The month written again with each stamp moved to the minute's end, as futures platforms export:
    prepare warns, says how strongly, and names the option; --bar-time end gives the original bars back."""
    _, record, said = _prepare(tmp_path, "start", month.start + 60, month.ohlc, caplog)
    assert "look stamped with their END (z = -" in said and "--bar-time end" in said
    assert record["bar_time"] == "start" and record["stamp_evidence"]["verdict"] == "end"
    manifest, record, said = _prepare(
        tmp_path, "end", month.start + 60, month.ohlc, caplog, bar_time=BarTime.END
    )
    assert "look stamped" not in said and record["bar_time"] == "end"
    assert "bars stamped at their end" in summary_table(manifest)
    m1 = load_prepared(tmp_path / "end").bars[Timeframe.M1]
    np.testing.assert_array_equal(np.asarray(m1.start), np.unique(month.start))


def test_bar_time_end_on_start_stamped_bars_is_warned(
    tmp_path: Path, month: M1Rows, caplog: pytest.LogCaptureFixture
) -> None:
    _, record, said = _prepare(tmp_path, "wrong", month.start, month.ohlc, caplog, bar_time=BarTime.END)
    assert "--bar-time end, but its bars look stamped with their START (z = +" in said
    assert record["stamp_evidence"]["z"] > 4
    _, _, said = _prepare(tmp_path, "right", month.start, month.ohlc, caplog)
    assert "stamped" not in said


def test_a_file_whose_halves_are_stamped_differently_is_warned(
    tmp_path: Path, month: M1Rows, caplog: pytest.LogCaptureFixture
) -> None:
    """Two weeks start-stamped, then two weeks end-stamped, as files joined from two sources are."""
    half = month.start >= month.start[0] + 15 * 86_400
    _, _, said = _prepare(tmp_path, "joined", month.start + 60 * half, month.ohlc, caplog)
    assert "the halves of its bars disagree" in said
    assert "look stamped with their START" in said.split("after it")[0]
    assert "with their END" in said.split("after it")[1]


def test_a_start_stamped_exchange_session_with_its_closing_print_is_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A US equity session stamped at the start of each minute, 14:30 to 21:00 UTC with the closing
    print's 21:00 row, on 30 weekdays of a random walk (no pattern within the hour): its opens at :30 say
    start stamps, its closes at :00 say nothing, and nothing is warned."""
    rng = np.random.default_rng(0)
    day0 = 1_704_153_600  # 2024-01-02 00:00 UTC, a Tuesday
    days = [day0 + 86_400 * d for d in range(42) if (1 + d) % 7 < 5][:30]
    start = np.concatenate([day + 14 * 3600 + 1800 + 60 * np.arange(391) for day in days])
    close = 100 * np.exp(np.cumsum(rng.normal(0, 5e-4, len(start))))
    opens = np.r_[100, close[:-1]]
    ohlc = np.stack([opens, np.maximum(opens, close) + 0.01, np.minimum(opens, close) - 0.01, close], axis=1)
    _, record, said = _prepare(tmp_path, "equity", start, ohlc, caplog)
    assert "stamped" not in said and "disagree" not in said
    evidence = record["stamp_evidence"]
    assert evidence["sessions"] == 30 and evidence["start_like"] == 30 and evidence["end_like"] == 0
    _, record, _ = _prepare(tmp_path, "equity_end", start + 60, ohlc, caplog)
    assert record["stamp_evidence"]["end_like"] == 30
