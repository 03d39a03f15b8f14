"""One file, read for what it holds: MetaTrader exports and split date/time columns give every minute; a
file of several instruments or of bid and ask rows is split by a flag, never merged into one series; a
minute given twice with other prices is refused, quoting both lines; an exact repeated row is dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stage1_ds.cli import main
from stage1_ds.data.store import load_prepared
from stage1_ds.timeframes import Timeframe

MINUTES = 3 * 1440  # three days of every minute, 2019-01-02 on


def _bars(seed: int, price: float) -> list[tuple[str, str, float, float, float, float]]:
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 1e-4, MINUTES)))
    rows = []
    for minute, c in enumerate(close):
        day, rest = divmod(minute, 1440)
        o = close[minute - 1] if minute else price
        rows.append(
            (f"2019.01.{2 + day:02d}", f"{rest // 60:02d}:{rest % 60:02d}:00", o, max(o, c), min(o, c), c)
        )
    return rows


def _prepare(tmp_path: Path, name: str, text: str, *flags: str) -> tuple[int, Path]:
    source = tmp_path / name
    source.write_text(text)
    out = tmp_path / "data"
    args = ["prepare", "--format", "csv", "--input", str(source), "--out", str(out)]
    return main([*args, "--split", "0", "0", "1", "--window-bars", "8", *flags]), out


def _m1(out: Path) -> np.ndarray:
    return np.asarray(load_prepared(out).bars[Timeframe.M1].ohlc)


def test_a_metatrader_export_gives_every_minute(tmp_path: Path) -> None:
    lines = ["<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"]
    lines += [
        f"{d}\t{t}\t{o:.5f}\t{h:.5f}\t{lo:.5f}\t{c:.5f}\t7\t0\t2" for d, t, o, h, lo, c in _bars(0, 1.14)
    ]
    code, out = _prepare(tmp_path, "EURUSD_M1.csv", "\n".join(lines) + "\n", "--delimiter", "tab")
    assert code == 0
    m1 = _m1(out)
    assert len(m1) == MINUTES and m1[0, 3] == pytest.approx(float(lines[1].split("\t")[5]))


def test_day_and_hour_columns_are_joined_into_the_time(tmp_path: Path) -> None:
    lines = ["Day,Hour,Open,High,Low,Close"]
    lines += [f"{d.replace('.', '-')},{t},{o},{h},{lo},{c}" for d, t, o, h, lo, c in _bars(1, 1.3)]
    code, out = _prepare(tmp_path, "GBPUSD.csv", "\n".join(lines) + "\n")
    assert code == 0 and len(_m1(out)) == MINUTES


@pytest.mark.parametrize("column", ["Name", "sym", "Symbol"])
def test_a_long_file_of_two_instruments_is_split_by_symbol_never_merged(
    column: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [f"timestamp,{column},open,high,low,close"]
    for name, bars in (("EURUSD", _bars(2, 1.14)), ("GBPUSD", _bars(3, 1.27))):
        lines += [f"{d.replace('.', '-')}T{t},{name},{o},{h},{lo},{c}" for d, t, o, h, lo, c in bars]
    text = "\n".join(lines) + "\n"
    code, _ = _prepare(tmp_path, "fx.csv", text)
    assert code == 2
    error = capsys.readouterr().err
    assert f"its column '{column}' names 2 instruments (EURUSD, GBPUSD)" in error and "--symbol" in error
    code, out = _prepare(tmp_path, "fx.csv", text, "--symbol", "GBPUSD", "--instrument", "GBPUSD")
    assert code == 0 and load_prepared(out).instruments == ["GBPUSD"]
    m1 = _m1(out)
    assert len(m1) == MINUTES and m1[:, 3].min() > 1.2, "GBPUSD's prices only"


def test_bid_and_ask_rows_are_read_one_side_or_their_mean_never_mixed(tmp_path: Path) -> None:
    bid = _bars(4, 1.14)
    lines = ["timestamp,side,open,high,low,close"]
    for d, t, o, h, lo, c in bid:
        stamp = f"{d.replace('.', '-')}T{t}"
        lines += [
            f"{stamp},bid,{o},{h},{lo},{c}",
            f"{stamp},ASK,{o + 2e-4},{h + 2e-4},{lo + 2e-4},{c + 2e-4}",
        ]
    text = "\n".join(lines) + "\n"
    code, out = _prepare(tmp_path, "EURUSD.csv", text)  # bid by default
    assert code == 0
    np.testing.assert_allclose(_m1(out)[:, 3], [c for *_, c in bid])
    code, out = _prepare(tmp_path, "EURUSD.csv", text, "--side", "mid", "--force")
    assert code == 0
    np.testing.assert_allclose(_m1(out)[:, 3], [c + 1e-4 for *_, c in bid], rtol=1e-12)


def test_a_minute_twice_with_other_prices_is_refused_quoting_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bid and ask rows without a column saying which: two rows a minute."""
    lines = ["timestamp,open,high,low,close,source"]
    for d, t, o, h, lo, c in _bars(5, 1.14)[:100]:
        stamp = f"{d.replace('.', '-')}T{t}"
        lines += [f"{stamp},{o},{h},{lo},{c},x", f"{stamp},{o + 2e-4},{h + 2e-4},{lo + 2e-4},{c + 2e-4},y"]
    code, _ = _prepare(tmp_path, "EURUSD.csv", "\n".join(lines) + "\n")
    assert code == 2
    error = capsys.readouterr().err
    assert "EURUSD.csv, line 2: a time: " in error and "line 3: the same time, other prices: " in error
    assert "the columns ['source'] are not read" in error and "--side" in error and "--symbol" in error


def test_an_exact_repeated_row_is_dropped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [f"{d.replace('.', '-')}T{t},{o},{h},{lo},{c}" for d, t, o, h, lo, c in _bars(6, 1.14)]
    lines = ["timestamp,open,high,low,close", *rows, *rows[60:120]]  # an hour given twice, as HistData does
    code, out = _prepare(tmp_path, "EURUSD.csv", "\n".join(lines) + "\n")
    assert code == 0 and len(_m1(out)) == MINUTES
    assert load_prepared(out).manifest["instruments"]["EURUSD"]["duplicates_dropped"] == 60
