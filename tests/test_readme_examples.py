"""The README's `stage1 prepare` examples run as written, on small generated files with the names they use."""

from __future__ import annotations

import glob
import gzip
import os
import re
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stage1_ds.cli import main
from stage1_ds.data.synthetic import generate_synthetic_m1

README = Path(__file__).resolve().parent.parent / "README.md"
DAYS = 280  # enough for the default 128-bar windows and splits (val and test each longer than the gap)
WEEK = 7 * 86400


def readme_prepare_examples() -> list[str]:
    """Every `.venv/bin/stage1 prepare ...` command of the README, continuation lines joined, comments cut."""
    text = README.read_text().replace("\\\n", " ")
    commands = re.findall(r"^\.venv/bin/stage1 prepare [^\n]*", text, flags=re.MULTILINE)
    return [command.split("  #")[0].strip() for command in commands]


def _bars(days: int, seed: int, shift_weeks: int = 0) -> pd.DataFrame:
    bars = generate_synthetic_m1(days, seed)
    return pd.DataFrame(
        {
            "time": bars.start + shift_weeks * WEEK,
            "open": bars.ohlc[:, 0],
            "high": bars.ohlc[:, 1],
            "low": bars.ohlc[:, 2],
            "close": bars.ohlc[:, 3],
            "volume": bars.volume,
        }
    )


def _histdata_zip(path: Path, frame: pd.DataFrame) -> None:
    stamps = pd.to_datetime(frame["time"], unit="s").dt.strftime("%Y%m%d %H%M%S")
    text = frame.assign(time=stamps, volume=0).to_csv(sep=";", header=False, index=False)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(path.with_suffix(".csv").name, text)


def _kline_zip(path: Path, frame: pd.DataFrame) -> None:
    opened = frame["time"] * 1000
    klines = frame.drop(columns="time").assign(
        open_time=opened, close_time=opened + 59_999, quote=0, count=10, taker=0, taker_quote=0, ignore=0
    )
    columns = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote", "count", "taker"]
    text = klines[[*columns, "taker_quote", "ignore"]].to_csv(header=False, index=False)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(path.with_suffix(".csv").name, text)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the README's input files, and ../shared/data/histdata and ../shared/data/corpus
    beside it."""
    root = tmp_path_factory.mktemp("readme")
    work, histdata, corpus = (
        root / "repo",
        root / "shared" / "data" / "histdata",
        root / "shared" / "data" / "corpus",
    )
    work.mkdir()
    histdata.mkdir(parents=True)
    corpus.mkdir()
    _histdata_zip(corpus / "HISTDATA_COM_ASCII_USDCHF_M12018.zip", _bars(DAYS, 9))
    _histdata_zip(histdata / "HISTDATA_COM_ASCII_EURUSD_M12018.zip", _bars(DAYS, 1))
    _histdata_zip(histdata / "HISTDATA_COM_ASCII_GBPUSD_M12018.zip", _bars(DAYS, 2))
    _histdata_zip(work / "EURUSD_2018.zip", _bars(DAYS // 2, 3))
    _histdata_zip(work / "EURUSD_2019.zip", _bars(DAYS // 2, 4, shift_weeks=DAYS // 14 + 1))
    _histdata_zip(work / "EURUSD_2024.zip", _bars(40, 5))
    (work / "btc.csv.gz").write_bytes(
        gzip.compress(_bars(DAYS, 6).rename(columns={"volume": "vol"}).to_csv(index=False).encode())
    )
    _kline_zip(work / "BTCUSDT-1m-2024-01.zip", _bars(DAYS // 2, 7))
    _kline_zip(work / "BTCUSDT-1m-2024-02.zip", _bars(DAYS // 2, 8, shift_weeks=DAYS // 14 + 1))
    return work


def test_the_readme_has_prepare_examples() -> None:
    assert len(readme_prepare_examples()) >= 10


@pytest.mark.parametrize("command", readme_prepare_examples())
def test_each_readme_prepare_example_runs_as_written(
    inputs: Path, tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each example in a fresh copy of the input folder (examples reuse output names). Synthetic sizes are
    scaled down (--instruments 100 to 3); the folders that `--merge` combines are prepared first."""
    work = tmp_path / "repo"
    work.mkdir()
    for item in inputs.iterdir():
        (work / item.name).symlink_to(item)
    (tmp_path / "shared").symlink_to(inputs.parent / "shared")
    monkeypatch.chdir(work)
    args = shlex.split(command.replace("--instruments 100", "--instruments 3"))[1:]
    if "--merge" in args:
        histdata = Path("../shared/data/histdata")
        for name, pair in (("fx_majors", "EURUSD"), ("fx_crosses", "GBPUSD")):
            assert (
                main(["prepare", "--input", *map(str, histdata.glob(f"*{pair}*")), "--out", f"data/{name}"])
                == 0
            )
    expanded = [match for arg in args for match in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
    assert main(expanded) == 0, command
    out = Path(args[args.index("--out") + 1])
    assert (out / "manifest.json").is_file(), os.listdir(out)
    np.testing.assert_equal((out / "stats.json").is_file(), True)
