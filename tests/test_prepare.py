"""`stage1 prepare` on real HistData files: cleaning, derived bars, splits, manifest."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from conftest import EURUSD_2019, REPO, require_histdata
from stage1_ds.data.store import load_prepared
from stage1_ds.timeframes import TIMEFRAMES, Timeframe

PREPARE = [sys.executable, "-m", "stage1_ds", "prepare"]


def _raw_rows(path: Path) -> list[tuple[int, float, float, float, float]]:
    """An independent, plain-Python reading of a HistData zip on its clock (New York time, converted to UTC
    by the standard library), de-duplicated keeping the first."""
    new_york = ZoneInfo("America/New_York")
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".csv"))
        text = io.TextIOWrapper(archive.open(name), encoding="ascii")
        seen, rows = set(), []
        for line in text:
            stamp, o, h, low, c, _ = line.strip().split(";")
            local = datetime.strptime(stamp, "%Y%m%d %H%M%S").replace(tzinfo=new_york)
            t = int(local.timestamp())
            if t not in seen:
                seen.add(t)
                rows.append((t, float(o), float(h), float(low), float(c)))
    return sorted(rows)


def test_when_eurusd_2019_prepared_then_duplicate_hour_dropped_and_reported(eurusd_2019: Path) -> None:
    data = load_prepared(eurusd_2019)
    record = data.manifest["instruments"]["EURUSD"]
    assert record["duplicates_dropped"] == 60
    assert record["out_of_order_rows"] == 1
    start = np.asarray(data.bars[Timeframe.M1].start)
    assert np.all(np.diff(start) > 0)
    assert (
        record["sources"][0]["sha256"]
        and record["sources"][0]["rows_read"] == record["rows"]["m1"]["total"] + 60
    )


def test_derived_bars_equal_an_independent_aggregation(eurusd_2019: Path) -> None:
    rows = _raw_rows(EURUSD_2019)
    data = load_prepared(eurusd_2019)
    assert len(rows) == len(data.bars[Timeframe.M1])
    for tf in TIMEFRAMES[1:]:
        buckets: dict[int, list[tuple[int, float, float, float, float]]] = defaultdict(list)
        for row in rows:
            buckets[row[0] - row[0] % tf.seconds].append(row)
        expected_start = np.array(sorted(buckets))
        expected = np.array(
            [
                [b[0][1], max(r[2] for r in b), min(r[3] for r in b), b[-1][4]]
                for b in (buckets[k] for k in expected_start)
            ]
        )
        bars = data.bars[tf]
        assert len(bars) == len(expected_start), tf
        np.testing.assert_array_equal(bars.start, expected_start)
        np.testing.assert_array_equal(bars.ohlc, expected)
        np.testing.assert_array_equal(bars.count, [len(buckets[k]) for k in expected_start])


def test_spot_checked_bars_match_hand_computed_values(eurusd_2019: Path) -> None:
    data = load_prepared(eurusd_2019)
    # The first five minutes of 2019 in the file (New York time, 22:02 UTC): 17:02, 17:03, 17:04 fall in the
    # 17:00 (22:00 UTC) m5 bucket.
    #   20190101 170200;1.145980;1.145990;1.145980;1.145980
    #   20190101 170300;1.145980;1.146070;1.145980;1.146070
    #   20190101 170400;1.146070;1.146070;1.146060;1.146060
    m5 = data.bars[Timeframe.M5]
    assert np.datetime64(int(m5.start[0]), "s") == np.datetime64("2019-01-01T22:00:00")
    np.testing.assert_array_equal(m5.ohlc[0], [1.14598, 1.14607, 1.14598, 1.14606])
    assert m5.count[0] == 3
    # h4 bars start on multiples of 4 hours of the data clock (UTC); the first covers 20:00-24:00.
    h4 = data.bars[Timeframe.H4]
    assert np.datetime64(int(h4.start[0]), "s") == np.datetime64("2019-01-01T20:00:00")
    assert h4.count[0] == int(np.sum(data.bars[Timeframe.M1].start < h4.start[0] + 4 * 3600))


def test_splits_are_in_time_order_with_a_gap_and_row_counts(eurusd_2019: Path) -> None:
    record = load_prepared(eurusd_2019).manifest["instruments"]["EURUSD"]
    train, val, test = (record["splits"][s] for s in ("train", "val", "test"))
    assert train["end"] == val["history_start"] and val["end"] == test["history_start"]
    assert val["anchor_start"] - val["history_start"] == record["gap_seconds"]
    # The gap is at least the nominal span of 128 h4 bars (21.3 days); weekends make it longer.
    assert record["gap_seconds"] >= 128 * 4 * 3600
    for tf in ("m1", "h4"):
        counts = record["rows"][tf]
        assert counts["train"] + counts["val"] + counts["test"] <= counts["total"]
        assert min(counts["train"], counts["val"], counts["test"]) > 0


def test_all_shared_histdata_files_prepare_as_four_instruments(tmp_path: Path) -> None:
    histdata = require_histdata()
    out = tmp_path / "all"
    result = subprocess.run(
        [
            *PREPARE,
            "--input",
            str(histdata),
            "--out",
            str(out),
            "--timezone",
            "as-given",
        ],  # the reference's clock
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["instruments"]) == ["AUDUSD", "EURUSD", "GBPUSD", "USDCAD"]
    eurusd = manifest["instruments"]["EURUSD"]
    assert len(eurusd["sources"]) == 2  # 2018 and 2019 concatenated
    assert eurusd["time_range_utc"][0].startswith("2018-01-0")
    assert eurusd["time_range_utc"][1].startswith("2019-12-31")
    assert "EURUSD" in result.stdout and "h4" in result.stdout
    # Bit for bit what prepare wrote before it worked one instrument at a time in worker processes
    # (tests/data/shared_histdata_prepared.json: hashes of every array, the statistics and the manifest,
    # written by the in-memory version of commit e235074).
    # The log prices are np.log of the prices, whose last bit depends on the CPU (numpy's AVX-512 log and
    # the libm one differ in the last place): they are checked against the prices, not a stored hash.
    reference = json.loads((REPO / "tests" / "data" / "shared_histdata_prepared.json").read_text())
    for name, digest in reference["arrays"].items():
        if name.endswith("_log_ohlc.npy"):
            prices = np.load(out / "bars" / name.replace("_log_ohlc", "_ohlc"))
            assert np.array_equal(np.load(out / "bars" / name), np.log(prices)), name
            continue
        assert hashlib.sha256((out / "bars" / name).read_bytes()).hexdigest() == digest, name
    assert sorted(p.name for p in (out / "bars").iterdir()) == sorted(reference["arrays"])
    stats = json.loads((out / "stats.json").read_text())
    for record in stats["instruments"].values():
        assert set(record.pop("sufficient")) == {"m1", "m5", "m15", "m30", "h1", "h4"}
    expected = reference["stats"]
    for name, record in stats["instruments"].items():  # statistics of log prices (see above)
        wanted = expected["instruments"][name]
        assert record["rms_log_change"] == pytest.approx(wanted["rms_log_change"], rel=1e-12), name
        assert {**record, "rms_log_change": None} == {**wanted, "rms_log_change": None}, name
    assert {**stats, "instruments": None} == {**expected, "instruments": None}
    for key in ("created_utc", "code_version"):
        manifest.pop(key)
    for record in manifest["instruments"].values():
        for source in record["sources"]:
            source["path"] = Path(source["path"]).name
    assert manifest == reference["manifest"]
    assert "timestamps kept as given" in result.stderr and "(naive, as given)" in result.stdout


def test_histdata_is_read_on_its_documented_clock_and_every_range_names_its_clock(tmp_path: Path) -> None:
    """Without --timezone, HistData's New York times are converted to UTC, said in one line with the flags
    that choose otherwise; the summary names the clock of each range."""
    require_histdata()
    out = tmp_path / "eurusd"
    command = [*PREPARE, "--input", str(EURUSD_2019), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "New York time" in line]
    assert len(said) == 1 and "--timezone ZONE" in said[0] and "--timezone as-given" in said[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["timezone"] == "America/New_York"
    assert (
        manifest["instruments"]["EURUSD"]["time_range_utc"][0] == "2019-01-01T22:02:00"
    )  # 17:02 in New York
    assert "(UTC, converted from America/New_York)" in result.stdout


def test_prepare_refuses_to_overwrite_without_force(
    synthetic_small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stage1_ds.cli import main

    before = {p: p.stat().st_mtime_ns for p in synthetic_small.rglob("*")}
    assert main(["prepare", "--synthetic", "--days", "30", "--out", str(synthetic_small)]) == 2
    assert f"{synthetic_small}: already holds prepared data; pass --force" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in synthetic_small.rglob("*")} == before, "nothing was touched"


def test_synthetic_market_is_deterministic_and_labelled(tmp_path: Path) -> None:
    from stage1_ds.data.synthetic import generate_synthetic_m1

    a, b = generate_synthetic_m1(10, seed=3), generate_synthetic_m1(10, seed=3)
    np.testing.assert_array_equal(a.ohlc, b.ohlc)
    assert not np.array_equal(a.ohlc, generate_synthetic_m1(10, seed=4).ohlc)
    o, h, low, c = a.ohlc.T
    assert np.all(h >= np.maximum(o, c)) and np.all(low <= np.minimum(o, c)) and np.all(a.ohlc > 0)
    weekday = (a.start // 86400 + 3) % 7
    assert not np.any(weekday == 5), "no bars on Saturday: weekend gaps"
    returns = np.diff(np.log(c))
    kurtosis = np.mean((returns - returns.mean()) ** 4) / np.var(returns) ** 2
    assert kurtosis > 4, "fat tails"


def test_synthetic_manifest_says_synthetic(synthetic_small: Path) -> None:
    manifest = load_prepared(synthetic_small).manifest
    assert manifest["synthetic"] is True and manifest["synthetic_params"] == {"days": 90, "seed": 7}
