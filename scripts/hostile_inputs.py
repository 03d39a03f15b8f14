"""Hostile-input benchmark: vendor exports, hand-made files and misuse that once gave silently wrong bars,
tracebacks, deleted user files or ran a checkpoint's code, each run through the real `stage1` command (one
process per case) and checked against what the input really holds. Prints one line per case: what was
expected, what happened, and whether it is as expected; exits 1 if any case is not.

Usage: python scripts/hostile_inputs.py [--histdata ../shared/data/histdata] [--bomb-gb 2] [--cases REGEX]
                                       [--json OUT.json]

Outcomes: ``bars`` (prepared, and the bars are what the file holds), ``error`` (exit 2 with a message that
names the file, line or flag), ``warned`` (prepared, with the warning that says what is suspect), ``kept``
(the user's files untouched). The gzip bomb reports the peak memory of its process beside the size the
file expands to (the cap, ``--max-input-mb``, bounds it). Cases that need real HistData bars say
``skipped`` when the folder is absent.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stage1_ds.data.ingest import InputFormat, OnBadRows, SourceFile, read_source  # noqa: E402
from stage1_ds.data.store import load_prepared  # noqa: E402
from stage1_ds.errors import CheckpointError  # noqa: E402
from stage1_ds.timeframes import Timeframe  # noqa: E402
from stage1_ds.train.pickles import check_folder  # noqa: E402

START = 1_546_423_200  # 2019-01-02 10:00 UTC
DAYS = 3


@dataclass
class Outcome:
    case: str
    kind: str
    expected: str
    happened: str
    ok: bool | None  # None: skipped
    detail: str = ""


@dataclass
class Run:
    code: int
    err: str
    peak_mb: float


def stage1(*args: str) -> Run:
    """``stage1 ARGS`` in its own process: exit code, what it said, its peak memory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "stage1_ds", *args], stdout=err, stderr=err, env=env
        )
        _, status, usage = os.wait4(process.pid, 0)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Run(os.waitstatus_to_exitcode(status), text, usage.ru_maxrss / 1024)


def walk(minutes: int, price: float, seed: int, first: int = START) -> np.ndarray:
    """(N, 5): time, open, high, low, close of a random walk, every minute from ``first``."""
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0, 2e-4, minutes)))
    opens = np.r_[price, close[:-1]]
    times = first + 60 * np.arange(minutes)
    bars = np.stack([opens, np.maximum(opens, close), np.minimum(opens, close), close], axis=1)
    return np.c_[times, bars.round(5)]  # as the files write them


def csv_lines(bars: np.ndarray, header: str = "timestamp,open,high,low,close") -> list[str]:
    return [header, *(f"{int(t)},{o:.5f},{h:.5f},{lo:.5f},{c:.5f}" for t, o, h, lo, c in bars)]


def prepared_m1(out: Path, instrument: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 1-minute starts and closes of a prepared folder (of one instrument)."""
    data = load_prepared(out)
    name = instrument or data.instruments[0]
    begin, end = data.rows(name, Timeframe.M1)
    m1 = data.bars[Timeframe.M1]
    return np.asarray(m1.start[begin:end]), np.asarray(m1.ohlc[begin:end, 3])


def prepare(tmp: Path, inputs: list[Path], *flags: str, out: str = "out") -> tuple[Run, Path]:
    folder = tmp / out
    args = ["prepare", "--format", "csv", "--input", *map(str, inputs), "--out", str(folder)]
    return stage1(*args, "--split", "1", "0", "0", "--window-bars", "4", *flags), folder


def expect_bars(run: Run, out: Path, bars: np.ndarray, instrument: str | None = None) -> tuple[bool, str]:
    if run.code != 0:
        return False, f"exit {run.code}: {last_line(run.err)}"
    start, close = prepared_m1(out, instrument)
    same = np.array_equal(start, bars[:, 0]) and np.allclose(close, bars[:, 4], rtol=1e-9)
    return same, f"{len(start):,} bars" + ("" if same else f", expected {len(bars):,} with their closes")


def expect_error(run: Run, pattern: str) -> tuple[bool, str]:
    line = last_line(run.err)
    traceback = "Traceback" in run.err
    ok = run.code == 2 and not traceback and re.search(pattern, run.err) is not None
    return ok, f"exit {run.code}{', traceback' if traceback else ''}: {line}"


def expect_warning(run: Run, pattern: str) -> tuple[bool, str]:
    found = re.search(pattern, run.err)
    said = next((ln for ln in run.err.splitlines() if found and found.group(0) in ln), "")
    return run.code == 0 and found is not None, f"exit {run.code}: {said.strip()[:200] or last_line(run.err)}"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[:200]


# --- the cases: each builds its input under tmp and returns (ok, what happened) -------------------------------

Case = Callable[[Path], tuple[bool, str]]


def _dated(tmp: Path, name: str, header: str, row: str, *flags: str) -> tuple[bool, str]:
    """Three days of bars written with a date and a time column (``row`` formats ``stamp`` and the
    prices), prepared with ``flags``: every minute must come back."""
    bars = walk(DAYS * 1440, 1.14, 0)
    lines = [header]
    for t, o, h, lo, c in bars:
        stamp = np.datetime64(int(t), "s").astype(object)
        lines.append(row.format(stamp=stamp, o=o, h=h, lo=lo, c=c))
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return expect_bars(*prepare(tmp, [path], *flags), bars)


def metatrader(tmp: Path) -> tuple[bool, str]:
    header = "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"
    row = "{stamp:%Y.%m.%d}\t{stamp:%H:%M:%S}\t{o:.5f}\t{h:.5f}\t{lo:.5f}\t{c:.5f}\t7\t0\t2"
    return _dated(tmp, "EURUSD_M1.csv", header, row, "--delimiter", "tab")


def day_hour(tmp: Path) -> tuple[bool, str]:
    row = "{stamp:%Y-%m-%d},{stamp:%H:%M},{o:.5f},{h:.5f},{lo:.5f},{c:.5f}"
    return _dated(tmp, "EURUSD.csv", "Day,Hour,Open,High,Low,Close", row)


def _long_file(tmp: Path, column: str) -> tuple[Path, np.ndarray]:
    eur, gbp = walk(DAYS * 1440, 1.14, 0), walk(DAYS * 1440, 1.27, 1)
    lines = [f"timestamp,{column},open,high,low,close"]
    for a, b in zip(eur, gbp, strict=True):
        for sym, (t, o, h, lo, c) in (("EURUSD", a), ("GBPUSD", b)):
            lines.append(f"{int(t)},{sym},{o:.5f},{h:.5f},{lo:.5f},{c:.5f}")
    path = tmp / "fx.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, eur


def symbol_refused(tmp: Path) -> tuple[bool, str]:
    path, _ = _long_file(tmp, "Name")
    return expect_error(prepare(tmp, [path])[0], r"names 2 instruments .*--symbol")


def symbol_chosen(tmp: Path) -> tuple[bool, str]:
    path, eur = _long_file(tmp, "sym")
    return expect_bars(*prepare(tmp, [path], "--symbol", "EURUSD"), eur)


def bid_ask_rows(tmp: Path) -> tuple[bool, str]:
    bid = walk(DAYS * 1440, 1.14, 0)
    lines = ["timestamp,side,open,high,low,close"]
    for t, o, h, lo, c in bid:
        lines.append(f"{int(t)},bid,{o:.5f},{h:.5f},{lo:.5f},{c:.5f}")
        lines.append(f"{int(t)},ask,{o + 2e-4:.5f},{h + 2e-4:.5f},{lo + 2e-4:.5f},{c + 2e-4:.5f}")
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(lines) + "\n")
    return expect_bars(*prepare(tmp, [path]), bid)


def duplicate_minute(tmp: Path) -> tuple[bool, str]:
    lines = csv_lines(walk(DAYS * 1440, 1.14, 0))
    lines.insert(200, lines[100].split(",")[0] + ",1.2,1.2,1.2,1.2")
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(lines) + "\n")
    return expect_error(prepare(tmp, [path])[0], r"line 101: a time .*line 201: the same time, other prices")


def repeated_rows(tmp: Path) -> tuple[bool, str]:
    bars = walk(DAYS * 1440, 1.14, 0)
    lines = csv_lines(bars)
    lines[200:200] = lines[140:200]  # a source's repeated hour
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(lines) + "\n")
    run, out = prepare(tmp, [path])
    ok, said = expect_bars(run, out, bars)
    return ok and "dropped 60 duplicate" in run.err, said + " (60 repeated rows dropped and counted)"


def _zip(path: Path, members: dict[str, list[str]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, lines in members.items():
            archive.writestr(name, "\n".join(lines) + "\n")
    return path


def zip_two_instruments(tmp: Path) -> tuple[bool, str]:
    eur, gbp = walk(DAYS * 1440, 1.14, 0), walk(DAYS * 1440, 1.27, 1, first=START + DAYS * 86_400)
    path = _zip(tmp / "fx.zip", {"EURUSD_2019.csv": csv_lines(eur), "GBPUSD_2019.csv": csv_lines(gbp)})
    run, out = prepare(tmp, [path])
    ok_eur, said = expect_bars(run, out, eur, "EURUSD")
    ok_gbp, _ = expect_bars(run, out, gbp, "GBPUSD") if run.code == 0 else (False, "")
    return ok_eur and ok_gbp, said + " each of EURUSD and GBPUSD"


def zip_two_instruments_one_name(tmp: Path) -> tuple[bool, str]:
    eur, gbp = walk(1440, 1.14, 0), walk(1440, 1.27, 1, first=START + 86_400)
    path = _zip(tmp / "fx.zip", {"EURUSD_2019.csv": csv_lines(eur), "GBPUSD_2019.csv": csv_lines(gbp)})
    return expect_error(prepare(tmp, [path], "--instrument", "FX")[0], r"members name 2 instruments")


def weekly_parts_agree(tmp: Path) -> tuple[bool, str]:
    bars = walk(DAYS * 1440, 1.14, 0)
    lines = csv_lines(bars)
    parts = {"EURUSD_w1.csv": lines[: 2 * 1440 + 1], "EURUSD_w2.csv": [lines[0], *lines[1441:]]}
    run, out = prepare(tmp, [_zip(tmp / "EURUSD.zip", parts)])
    ok, said = expect_bars(run, out, bars)
    return ok and "read once" in run.err, said + " (the shared day read once)"


def weekly_parts_disagree(tmp: Path) -> tuple[bool, str]:
    lines = csv_lines(walk(DAYS * 1440, 1.14, 0))
    second = [lines[0], *lines[1441:]]
    second[50] = second[50].replace(second[50].split(",")[4], "1.20000")
    parts = {"EURUSD_w1.csv": lines[: 2 * 1440 + 1], "EURUSD_w2.csv": second}
    return expect_error(prepare(tmp, [_zip(tmp / "EURUSD.zip", parts)])[0], r"differ, first at 2019-01-03")


def _cut(tmp: Path, cut: Callable[[list[str]], str]) -> tuple[bool, str]:
    """The bars with a volume column, the file written by ``cut`` (its last line cut, no final newline)."""
    bars = walk(DAYS * 1440, 1.14, 0)
    header = "timestamp,open,high,low,close,volume"
    lines = [f"{line},{10 + k % 7:.2f}" if k else header for k, line in enumerate(csv_lines(bars))]
    path = tmp / "EURUSD.csv"
    path.write_text(cut(lines))
    run, out = prepare(tmp, [path])
    ok, said = expect_bars(run, out, bars[:-1])
    return ok and "last line perhaps cut short" in run.err, said + " (the cut line dropped and said)"


def cut_in_volume(tmp: Path) -> tuple[bool, str]:
    return _cut(tmp, lambda lines: "\n".join(lines)[:-1])


def cut_fewer_fields(tmp: Path) -> tuple[bool, str]:
    return _cut(tmp, lambda lines: "\n".join(lines).rsplit(",", 1)[0])


def cut_without_zeros(tmp: Path) -> tuple[bool, str]:
    """Prices written without trailing zeros (1.10590 as 1.1059), the close last: a last close of 1.14599
    cut to 1.1459 has every field and reads as a price."""
    bars = walk(DAYS * 1440, 1.14, 0)
    lines = ["timestamp,open,high,low,close"]
    lines += [",".join([str(int(b[0])), *(f"{x:.5f}".rstrip("0") for x in b[1:])]) for b in bars[:-1]]
    lines.append(f"{int(bars[-1, 0])},1.14599,1.14599,1.14599,1.1459")
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(lines))
    run, out = prepare(tmp, [path])
    ok, said = expect_bars(run, out, bars[:-1])
    return ok and "last line perhaps cut short" in run.err, said + " (the cut line dropped and said)"


def gzip_named_csv(tmp: Path) -> tuple[bool, str]:
    bars = walk(DAYS * 1440, 1.14, 0)
    path = tmp / "EURUSD.csv"
    path.write_bytes(gzip.compress(("\n".join(csv_lines(bars)) + "\n").encode(), mtime=0))
    run, out = prepare(tmp, [path])
    ok, said = expect_bars(run, out, bars)
    return ok and "its bytes are gzip" in run.err, said + " (the lying suffix said)"


def utf16_without_bom(tmp: Path) -> tuple[bool, str]:
    bars = walk(DAYS * 1440, 1.14, 0)
    path = tmp / "EURUSD.csv"
    path.write_bytes(("\n".join(csv_lines(bars)) + "\n").encode("utf-16-le"))
    return expect_bars(*prepare(tmp, [path]), bars)


def parquet_index_and_column(tmp: Path) -> tuple[bool, str]:
    import pandas as pd

    bars = walk(DAYS * 1440, 1.14, 0)
    frame = pd.DataFrame(bars[:, 1:], columns=["open", "high", "low", "close"])
    frame["timestamp"] = pd.to_datetime(bars[:, 0].astype(np.int64), unit="s", utc=True)
    frame.index = pd.DatetimeIndex(frame["timestamp"]).rename(None)
    path = tmp / "EURUSD.parquet"
    frame.to_parquet(path)
    run, out = prepare(tmp, [path])
    ok, said = expect_bars(run, out, bars)
    return ok and "the column is read" in run.err, said + " (the column read, the index named)"


def gzip_bomb(tmp: Path, gigabytes: float) -> tuple[bool, str]:
    line = b"1546423200,1.1,1.2,1.0,1.1\n"
    chunk = line * (2**22 // len(line))
    path = tmp / "EURUSD.csv.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b"timestamp,open,high,low,close\n")
        for _ in range(int(gigabytes * 2**30 / len(chunk))):
            out.write(chunk)
    run, _ = prepare(tmp, [path])
    ok, said = expect_error(run, r"expands past 512 MB .*--max-input-mb")
    size = path.stat().st_size / 2**20
    return ok, f"{said[:120]} | {size:.1f} MB file, {gigabytes:g} GB expanded, peak RSS {run.peak_mb:,.0f} MB"


def _month(histdata: Path) -> np.ndarray | None:
    path = histdata / "HISTDATA_COM_ASCII_EURUSD_M12019.zip"
    if not path.is_file():
        return None
    rows, _ = read_source(SourceFile(path, "EURUSD", InputFormat.HISTDATA), OnBadRows.ERROR)
    keep = rows.start < rows.start[0] + 31 * 86_400
    return np.c_[rows.start[keep], rows.ohlc[keep]]


def bar_time_end_on_start(tmp: Path, month: np.ndarray) -> tuple[bool, str]:
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(csv_lines(month)) + "\n")
    return expect_warning(
        prepare(tmp, [path], "--bar-time", "end")[0],
        r"--bar-time end, but its bars look stamped with their START",
    )


def end_stamped(tmp: Path, month: np.ndarray) -> tuple[bool, str]:
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(csv_lines(month + np.array([60, 0, 0, 0, 0]))) + "\n")
    return expect_warning(prepare(tmp, [path])[0], r"look stamped with their END")


def halves_disagree(tmp: Path, month: np.ndarray) -> tuple[bool, str]:
    shifted = month.copy()
    shifted[month[:, 0] >= month[0, 0] + 15 * 86_400, 0] += 60
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(csv_lines(shifted)) + "\n")
    return expect_warning(prepare(tmp, [path])[0], r"the halves of its bars disagree")


def equity_session(tmp: Path) -> tuple[bool, str]:
    day0 = 1_704_153_600  # a Tuesday
    days = [day0 + 86_400 * d for d in range(42) if (1 + d) % 7 < 5][:30]
    parts = [walk(391, 100.0, k, first=day + 14 * 3600 + 1800) for k, day in enumerate(days)]
    path = tmp / "SPY.csv"
    path.write_text("\n".join(csv_lines(np.concatenate(parts))) + "\n")
    run, _ = prepare(tmp, [path])
    ok = run.code == 0 and "look stamped" not in run.err and "disagree" not in run.err
    return ok, f"exit {run.code}, " + ("no stamp warning" if ok else last_line(run.err))


def user_folder_force(tmp: Path) -> tuple[bool, str]:
    """A folder of the user's that holds a manifest.json of its own (another tool's output)."""
    folder = tmp / "mine"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(csv_lines(walk(DAYS * 1440, 1.14, 0))) + "\n")
    run, _ = prepare(tmp, [path], "--force", out="mine")
    ok, said = expect_error(run, r"exists and was not made by stage1 prepare")
    kept = (folder / "notes.txt").exists() and (folder / "manifest.json").read_text() == "{}"
    return ok and kept, said + ("" if kept else " (the user's files were removed)")


def delimiter_tab_text(tmp: Path) -> tuple[bool, str]:
    bars = walk(DAYS * 1440, 1.14, 0)
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(line.replace(",", "\t") for line in csv_lines(bars)) + "\n")
    return expect_bars(*prepare(tmp, [path], "--delimiter", "\\t"), bars)


def delimiter_empty(tmp: Path) -> tuple[bool, str]:
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(csv_lines(walk(1440, 1.14, 0))) + "\n")
    return expect_error(prepare(tmp, [path], "--delimiter", "")[0], r"--delimiter: .*expected one character")


def instrument_path(tmp: Path) -> tuple[bool, str]:
    path = tmp / "EURUSD.csv"
    path.write_text("\n".join(csv_lines(walk(1440, 1.14, 0))) + "\n")
    outside = tmp.parent / "x"
    existed = outside.exists()
    run, _ = prepare(tmp, [path], "--instrument", "../../x")
    ok, said = expect_error(run, r"--instrument")
    return ok and outside.exists() == existed, said


def checkpoint_payload(tmp: Path) -> tuple[bool, str]:
    import torch

    marker = tmp / "ran"
    folder = tmp / "step00000003"
    folder.mkdir()

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    torch.save({"module": Payload()}, folder / "mp_rank_00_model_states.pt")
    try:
        check_folder(folder)
    except CheckpointError as error:
        return not marker.exists(), f"refused: {str(error)[:160]}"
    return False, "loaded"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--histdata", type=Path, default=REPO.parent / "shared" / "data" / "histdata")
    parser.add_argument("--bomb-gb", type=float, default=2.0, help="what the gzip bomb expands to")
    parser.add_argument("--cases", help="only the cases whose name matches this regular expression")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    month = _month(args.histdata)

    def on_month(case: Callable[[Path, np.ndarray], tuple[bool, str]]) -> Case | None:
        """A case on a real month of EURUSD; None (skipped) without the HistData folder."""
        return None if month is None else lambda tmp: case(tmp, month)

    cases: list[tuple[str, str, str, Case | None]] = [
        ("MetaTrader 5 export (tab, <DATE> <TIME>, dotted dates)", "one file", "bars", metatrader),
        ("Day and Hour columns", "one file", "bars", day_hour),
        ("long file of two instruments, a Name column", "one file", "error", symbol_refused),
        ("long file of two instruments, a sym column, --symbol EURUSD", "one file", "bars", symbol_chosen),
        ("bid and ask rows interleaved (a side column)", "one file", "bars", bid_ask_rows),
        ("one minute twice with other prices", "one file", "error", duplicate_minute),
        ("a repeated hour (exact repeated rows)", "one file", "bars", repeated_rows),
        ("zip of a EURUSD and a GBPUSD year", "archive", "bars", zip_two_instruments),
        ("that zip with --instrument FX", "archive", "error", zip_two_instruments_one_name),
        ("weekly parts sharing an identical day", "archive", "bars", weekly_parts_agree),
        ("weekly parts disagreeing on the shared day", "archive", "error", weekly_parts_disagree),
        ("no final newline, cut in the volume column", "cut line", "bars", cut_in_volume),
        ("no final newline, fewer fields than the header", "cut line", "bars", cut_fewer_fields),
        ("no final newline, prices without trailing zeros, cut", "cut line", "bars", cut_without_zeros),
        ("gzip bytes named .csv", "content", "bars", gzip_named_csv),
        ("UTF-16LE without a byte-order mark", "content", "bars", utf16_without_bom),
        ("Parquet with a time index and a timestamp column", "content", "bars", parquet_index_and_column),
        (
            f"gzip bomb ({args.bomb_gb:g} GB expanded)",
            "memory",
            "error",
            lambda t: gzip_bomb(t, args.bomb_gb),
        ),
        ("--bar-time end on start-stamped HistData", "bar time", "warned", on_month(bar_time_end_on_start)),
        ("end-stamped FX without --bar-time end", "bar time", "warned", on_month(end_stamped)),
        ("halves stamped differently", "bar time", "warned", on_month(halves_disagree)),
        ("start-stamped equity session with its 21:00 close row", "bar time", "bars", equity_session),
        ("prepare --force onto a folder the user made", "destructive", "kept", user_folder_force),
        ("--delimiter '\\t' (the two characters a shell passes)", "flags", "bars", delimiter_tab_text),
        ("--delimiter ''", "flags", "error", delimiter_empty),
        ("--instrument ../../x", "flags", "error", instrument_path),
        ("checkpoint pickle carrying a payload", "code execution", "error", checkpoint_payload),
    ]
    if args.cases:
        cases = [c for c in cases if re.search(args.cases, c[0])]
    outcomes = []
    for name, kind, expected, case in cases:
        tmp = Path(tempfile.mkdtemp(prefix="hostile_"))
        try:
            if case is None:
                outcome = Outcome(name, kind, expected, f"skipped: no HistData at {args.histdata}", None)
            else:
                ok, happened = case(tmp)
                outcome = Outcome(name, kind, expected, happened, ok)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        outcomes.append(outcome)
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[outcome.ok]
        print(f"{mark} {kind:<14} {name:<58} expected {expected:<6} | {outcome.happened}", flush=True)
    failed = [o for o in outcomes if o.ok is False]
    ran = [o for o in outcomes if o.ok is not None]
    print(f"\n{len(ran) - len(failed)} of {len(ran)} cases as expected ({len(outcomes) - len(ran)} skipped)")
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
