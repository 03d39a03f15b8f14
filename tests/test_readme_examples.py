"""The README's and docs/data.md's `stage1 prepare` examples run as written, on small generated files with the
names they use; the README's walkthrough runs as written on the shared EURUSD zip (fewer steps and batches)."""

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

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
#: Where the prepare examples are: the README (its walkthrough aside, which runs on real data below) and the
#: data reference.
EXAMPLE_FILES = (README, REPO / "docs" / "data.md")
WALKTHROUGH = re.compile(r"<!-- walkthrough -->\n```bash\n(.*?)```\n<!-- /walkthrough -->", re.DOTALL)
DAYS = 280  # enough for the default 128-bar windows and splits (val and test each longer than the gap)
WEEK = 7 * 86400


def _commands(text: str, command: str) -> list[str]:
    """Every `.venv/bin/stage1 <command> ...` line of ``text``, continuation lines joined, comments cut."""
    text = text.replace("\\\n", " ")
    found = re.findall(rf"^\.venv/bin/stage1 {command}[^\n]*", text, flags=re.MULTILINE)
    return [line.split("  #")[0].strip() for line in found]


def readme_prepare_examples() -> list[str]:
    """Every `stage1 prepare` example of `EXAMPLE_FILES`, the README's walkthrough left out."""
    texts = [WALKTHROUGH.sub("", path.read_text()) for path in EXAMPLE_FILES]
    return [line for text in texts for line in _commands(text, "prepare")]


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
    _histdata_zip(work / "HISTDATA_COM_ASCII_EURUSD_M1202403.zip", _bars(31, 11))  # a month
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


#: What the walkthrough test adds to each command so that it runs in seconds: the phases of the config are
#: scaled to the shorter run (the README says so), the tiny preset, fewer batches and anchors.
QUICK = {
    "train": [
        "train.max_steps=6",
        "model.encoder.preset=tiny",
        "train.eval_batches=1",
        "train.micro_batch_size=8",
    ],
    "evaluate": ["--batches", "1", "--batch-size", "8"],
    "probe": ["--max-anchors", "60"],
}


def test_the_readme_walkthrough_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each `stage1` command of the walkthrough in order, in a folder beside ../shared/data (the real EURUSD
    zip); every output it promises is there, and training ends naming the next command."""
    from conftest import require_histdata

    histdata = require_histdata()
    block = WALKTHROUGH.search(README.read_text())
    assert block is not None, "the README has a walkthrough block"
    commands = _commands(block.group(1), "")
    assert [shlex.split(c)[1] for c in commands] == ["prepare", "train", "convert", "evaluate", "probe"]
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("configs", "ds_configs"):
        (work / name).symlink_to(REPO / name)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "histdata").symlink_to(histdata)
    monkeypatch.chdir(work)
    for command in commands:
        args = shlex.split(command)[1:]
        assert main([*args, *QUICK.get(args[0], [])]) == 0, command
        said = capsys.readouterr().err  # the log (stderr) of this command
        if args[0] == "train":
            assert "next, one fp32 model folder: stage1 convert runs/eurusd --out EXPORT" in said
    assert (work / "data/eurusd/manifest.json").is_file()
    assert (work / "exports/eurusd/model.safetensors").is_file()
    for report in ("eval.json", "eval_time_example.png", "probe.json", "probe.png"):
        assert (work / "reports/eurusd" / report).stat().st_size > 0, report


def test_the_readme_month_recipe_prepares_and_trains(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's recipe for a month of bars, both commands as written (the train one shortened), on a
    generated month under the recipe's file name."""
    section = README.read_text().split("### A month of data", 1)[1].split("\n## ", 1)[0]
    commands = _commands(section, "")
    assert [shlex.split(c)[1] for c in commands] == ["prepare", "train"]
    work = tmp_path / "repo"
    work.mkdir()
    for item in inputs.iterdir():
        (work / item.name).symlink_to(item)
    for name in ("configs", "ds_configs"):
        (work / name).symlink_to(REPO / name)
    monkeypatch.chdir(work)
    for command in commands:
        args = shlex.split(command)[1:]
        assert main([*args, *QUICK.get(args[0], [])]) == 0, command
    assert (work / "runs/month/checkpoints").is_dir()
