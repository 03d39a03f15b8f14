"""The inputs users bring: compressed and zipped CSV, Parquet, exchange kline dumps, whole-file splits,
clocks converted to UTC, and where buckets start."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stage1_ds.config import DataConfig, MaskingConfig
from stage1_ds.data.ingest import InputFormat, OnBadRows, SourceFile, read_source
from stage1_ds.data.prepare import PrepareOptions, prepare_files
from stage1_ds.data.store import load_prepared
from stage1_ds.data.synthetic import generate_synthetic_m1
from stage1_ds.data.windows import WindowDataset
from stage1_ds.errors import DataError
from stage1_ds.timeframes import Timeframe

START = 1_704_189_600  # 2024-01-02T10:00:00Z


def _rows(minutes: int, seed: int = 0, start: int = START) -> pd.DataFrame:
    """Consistent 1-minute OHLCV rows from the synthetic market, on a clock starting at ``start``."""
    bars = generate_synthetic_m1(max(2, minutes // 1440 + 2), seed)
    n = min(minutes, len(bars))
    return pd.DataFrame(
        {
            "timestamp": start + 60 * np.arange(n),
            "open": bars.ohlc[:n, 0],
            "high": bars.ohlc[:n, 1],
            "low": bars.ohlc[:n, 2],
            "close": bars.ohlc[:n, 3],
            "volume": bars.volume[:n],
        }
    )


def _csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False)


def _read(path: Path, fmt: InputFormat = InputFormat.CSV, timezone: str | None = None):
    return read_source(SourceFile(path, "TEST", fmt), OnBadRows.ERROR, timezone=timezone)


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst"])
def test_compressed_csv_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    import zstandard

    frame = _rows(500)
    text = _csv_text(frame).encode()
    compress = {
        ".csv.gz": gzip.compress,
        ".csv.bz2": bz2.compress,
        ".csv.xz": lzma.compress,
        ".csv.zst": zstandard.ZstdCompressor().compress,
    }[suffix]
    path = tmp_path / f"bars{suffix}"
    path.write_bytes(compress(text))
    rows, report = _read(path)
    np.testing.assert_array_equal(rows.start, frame["timestamp"].to_numpy())
    np.testing.assert_allclose(rows.ohlc, frame[["open", "high", "low", "close"]].to_numpy())
    assert report.rows_kept == 500 and report.clock.startswith("UTC")


def test_a_zip_of_two_csvs_is_one_instrument(tmp_path: Path) -> None:
    frame = _rows(600)
    path = tmp_path / "BTCUSD.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("part1.csv", _csv_text(frame.iloc[:300]))
        archive.writestr("part2.csv", _csv_text(frame.iloc[300:]))
        archive.writestr("readme.txt", "not data")
    rows, report = _read(path)
    assert report.rows_read == 600
    np.testing.assert_array_equal(np.sort(rows.start), frame["timestamp"].to_numpy())


def test_parquet_reads_named_columns(tmp_path: Path) -> None:
    frame = _rows(400)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], unit="s", utc=True).dt.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    rows, report = _read(path)
    assert report.rows_kept == 400 and rows.start[0] == START and rows.volume.sum() > 0


def test_binance_kline_dumps_with_and_without_header_in_ms_and_us(tmp_path: Path) -> None:
    frame = _rows(300)
    for unit, scale in (("ms", 1000), ("us", 1_000_000)):
        lines = [
            f"{t * scale},{o},{h},{low},{c},{v},{(t + 59) * scale + scale - 1},0,10,0,0,0"
            for t, o, h, low, c, v in frame.itertuples(index=False)
        ]
        for header in (
            "",
            "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n",
        ):
            path = tmp_path / f"BTCUSDT-1m-{unit}-{bool(header)}.csv"
            path.write_text(header + "\n".join(lines) + "\n")
            rows, _ = _read(path, InputFormat.BINANCE)
            np.testing.assert_array_equal(rows.start, frame["timestamp"].to_numpy())
            np.testing.assert_allclose(rows.volume, frame["volume"].to_numpy())
    out = prepare_files(
        [path],
        tmp_path / "prepared",
        InputFormat.BINANCE,
        options=PrepareOptions(window_bars=2, split_fractions=(1.0, 0.0, 0.0)),
    )
    assert list(out["instruments"]) == ["BTCUSDT"] and out["instruments"]["BTCUSDT"]["has_volume"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bars.csv.gz", b"not gzip at all", r"bars\.csv\.gz: not readable as \.gz compressed data"),
        ("bars.zip", b"PK not a zip", r"bars\.zip: not readable as a zip archive"),
        ("bars.parquet", b"PAR1 nonsense", r"bars\.parquet: not a readable Parquet file"),
        (
            "bars.csv",
            "timestamp,open\n1,\u20ac2\n".encode("cp1252"),
            r"bars\.csv: not UTF-8 text .*save it as UTF-8",
        ),
        ("bars.csv.xz", b"\xfd7zXZ broken", r"bars\.csv\.xz: not readable as \.xz compressed data"),
    ],
)
def test_an_unreadable_file_is_named_with_the_reason(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        _read(path)


def _prepare_csv(tmp_path: Path, frame: pd.DataFrame, name: str, **options: object) -> Path:
    path = tmp_path / f"{name}.csv"
    path.write_text(_csv_text(frame))
    out = tmp_path / f"{name}_prepared"
    prepare_files([path], out, InputFormat.CSV, name.upper(), PrepareOptions(**options))  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("split", [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.8, 0.0, 0.2)])
def test_splits_may_be_empty_and_only_non_empty_ones_get_a_gap(tmp_path: Path, split: tuple) -> None:
    out = _prepare_csv(tmp_path, _rows(20 * 1440), "whole", split_fractions=split, window_bars=16)
    data = load_prepared(out)
    ranges = {s: data.split("WHOLE", s) for s in ("train", "val", "test")}
    non_empty = [s for s, r in ranges.items() if not r.empty]
    assert non_empty == [s for s, f in zip(("train", "val", "test"), split, strict=True) if f > 0]
    for name in non_empty:
        lead_in = ranges[name].anchor_start - ranges[name].history_start
        if name == "train":
            assert lead_in == 0, "train needs no gap"
        else:
            assert lead_in > 0, "a val or test split starts with a gap, even with nothing before it"
    fitted_on = data.stats["instruments"]["WHOLE"]["fitted_on"]
    assert fitted_on == ("train" if "train" in non_empty else "lead_in")
    WindowDataset(out, non_empty[-1], DataConfig(window_bars=16))
    empty = next((s for s, r in ranges.items() if r.empty), None)
    if empty:
        with pytest.raises(DataError, match=rf"the {empty} split is empty \(prepared with --split"):
            WindowDataset(out, empty, DataConfig(window_bars=16))


def test_new_york_time_is_converted_so_that_h1_bars_land_on_utc_hours(tmp_path: Path) -> None:
    """09:00 in New York on 2 January 2024 is 14:00 UTC; in Kolkata (UTC+5:30) 09:00 is 03:30 UTC, so its
    h1 bars land on whole UTC hours only after conversion."""
    for zone, local_start, utc_hour in (
        ("America/New_York", "2024-01-02T09:00:00", 14),
        ("Asia/Kolkata", "2024-01-02T09:00:00", 3),
    ):
        frame = _rows(3 * 1440)
        local = pd.date_range(local_start, periods=len(frame), freq="min")
        frame["timestamp"] = local.strftime("%Y-%m-%d %H:%M:%S")
        name = zone.split("/")[1].lower()
        out = _prepare_csv(
            tmp_path, frame, name, timezone=zone, window_bars=8, split_fractions=(1.0, 0.0, 0.0)
        )
        data = load_prepared(out)
        h1 = np.asarray(data.bars[Timeframe.H1].start)
        assert (h1 % 3600 == 0).all()
        m1 = np.asarray(data.bars[Timeframe.M1].start)
        assert np.datetime64(int(m1[0]), "s").astype(object).hour == utc_hour
        source = data.manifest["instruments"][name.upper()]["sources"][0]
        assert source["clock"] == f"UTC (converted from {zone})" and data.manifest["timezone"] == zone


def test_a_time_that_does_not_exist_on_the_clock_is_a_bad_row(tmp_path: Path) -> None:
    frame = _rows(5)
    frame["timestamp"] = [
        "2024-03-10 01:58:00",
        "2024-03-10 01:59:00",
        "2024-03-10 02:30:00",
        "2024-03-10 03:00:00",
        "2024-03-10 03:01:00",
    ]
    path = tmp_path / "dst.csv"
    path.write_text(_csv_text(frame))
    with pytest.raises(
        DataError, match=r"dst\.csv, line 4: malformed timestamp, or not a unique time in America/New_York"
    ):
        _read(path, timezone="America/New_York")


def test_buckets_start_at_the_origin_and_still_nest(tmp_path: Path) -> None:
    out = _prepare_csv(
        tmp_path,
        _rows(10 * 1440),
        "origin",
        bucket_origin_minutes=22 * 60,
        window_bars=8,
        split_fractions=(1.0, 0.0, 0.0),
    )
    data = load_prepared(out)
    h4 = np.asarray(data.bars[Timeframe.H4].start)
    assert set(((h4 // 3600) % 24).tolist()) <= {22, 2, 6, 10, 14, 18}
    assert json.loads((out / "manifest.json").read_text())["bucket_origin_seconds"] == 22 * 3600
    windows = WindowDataset(out, "train", DataConfig(window_bars=8))
    batch = windows.batch(np.arange(0, len(windows), max(1, len(windows) // 16)))
    for fine, coarse in (("m1", "m5"), ("h1", "h4")):
        parent = batch.windows[fine].parent_index
        assert parent is not None and (parent >= 0).any()
        coarse_start = batch.windows[coarse].start_time.gather(1, parent.clamp(min=0))
        inside = (batch.windows[fine].start_time >= coarse_start) & (
            batch.windows[fine].start_time < coarse_start + Timeframe(coarse).seconds
        )
        assert inside[parent >= 0].all(), "every finer bar sits in its coarser bucket"


VOLUME = DataConfig(window_bars=32, channels=["ohlc", "volume"])


def test_volume_needs_real_volume(eurusd_2019: Path) -> None:
    with pytest.raises(
        DataError, match=r"instrument\(s\) \['EURUSD'\] have no traded volume .* data\.channels"
    ):
        WindowDataset(eurusd_2019, "train", VOLUME)


def test_volume_is_a_fifth_feature_whose_coarser_bars_sum_their_finer_ones_exactly(
    synthetic_small: Path,
) -> None:
    from stage1_ds.model.losses import aggregate_to_parent, cross_timeframe_terms, unscaled
    from stage1_ds.model.masking import MaskedWindows

    windows = WindowDataset(synthetic_small, "train", VOLUME)
    batch = MaskedWindows(windows, MaskingConfig(), 8, seed=0).batch(np.arange(32) * 97)
    for window in batch.windows.values():
        assert window.features.shape[-1] == 5 and (window.features[..., 4] >= 0).all()
    truth = {tf: w.features.clone() for tf, w in batch.windows.items()}
    terms = cross_timeframe_terms(truth, batch)
    assert set(terms) == {"m5", "m15", "m30", "h1", "h4"}
    assert all(t.count > 0 and t.value.item() == 0.0 for t in terms.values()), "exactly 0 on true bars"
    m1, m5 = batch.windows["m1"], batch.windows["m5"]
    summed, has = aggregate_to_parent(unscaled(m1.features, m1), m1.parent_index, 32)  # type: ignore[arg-type]
    assert has.any() and torch.equal(summed[has][:, 4], unscaled(m5.features, m5)[has][:, 4])
    wrong = dict(truth)
    wrong["m1"] = truth["m1"].clone()
    wrong["m1"][..., 4] *= 1.5
    assert cross_timeframe_terms(wrong, batch)["m5"].value.item() > 0


def test_masked_volume_reaches_no_input(synthetic_small: Path, tmp_path: Path) -> None:
    from stage1_ds.model.masking import MaskedWindows

    folder = tmp_path / "data"
    shutil.copytree(synthetic_small, folder)
    ids = np.array([1234])
    config = MaskingConfig(modes={"time": 1.0})
    before = MaskedWindows(WindowDataset(folder, "train", VOLUME), config, 8, seed=0).batch(ids)
    dataset = WindowDataset(folder, "train", VOLUME)
    for name, window in before.windows.items():
        rows = dataset.rows(ids, Timeframe(name))[window.mask.numpy()]  # type: ignore[union-attr]
        units = np.load(folder / "bars" / f"{name}_units.npy", mmap_mode="r+")
        units[rows] = units[rows] * 3 + 7
        units.flush()
    after = MaskedWindows(WindowDataset(folder, "train", VOLUME), config, 8, seed=0).batch(ids)
    assert any(window.mask.any() for window in before.windows.values())  # type: ignore[union-attr]
    for name, window in before.windows.items():
        visible = ~window.mask  # type: ignore[operator]
        assert torch.equal(window.features[visible], after.windows[name].features[visible]), name
        if window.mask.any():  # type: ignore[union-attr]
            assert not torch.equal(
                window.features[..., 4][window.mask], after.windows[name].features[..., 4][window.mask]
            )


def test_a_volume_model_trains_with_the_volume_loss_and_logs_its_curves(
    synthetic_small: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import tiny_train_config
    from stage1_ds.train.loop import train

    config = tiny_train_config(max_steps=3)
    config.data.channels = ["ohlc", "volume"]
    with caplog.at_level(logging.INFO):
        result = train(config, synthetic_small, tmp_path / "run")
    assert result.global_step == 3 and np.isfinite(result.last_losses["loss/total"])
    assert result.val_losses["val/loss/cross/m5"] > 0
    assert (
        result.val_losses["val/loss/reconstruction/volume"] > 0
        and result.val_losses["val/loss/cross/volume"] > 0
    )
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert {"loss/reconstruction/volume", "loss/cross/volume", "val/loss/cross/volume"} <= set(
        events.Tags()["scalars"]
    )
    started = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("data read: ") for m in started) and any(
        m.startswith("engine ready (") for m in started
    )


def test_more_unreadable_inputs_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_zip = tmp_path / "notes.zip"
    with zipfile.ZipFile(empty_zip, "w") as archive:
        archive.writestr("notes.md", "no data")
    with pytest.raises(DataError, match=r"notes\.zip: zip holds no CSV file"):
        _read(empty_zip)
    short = tmp_path / "BTCUSDT-1m.csv"
    short.write_text("1704189600000,1,2,0.5,1.5\n")
    with pytest.raises(DataError, match=r"BTCUSDT-1m\.csv: 5 columns, expected the kline layout"):
        _read(short, InputFormat.BINANCE)
    frame = _rows(10)
    frame.to_parquet(tmp_path / "bars.parquet")
    (tmp_path / "bars.csv.zst").write_bytes(b"\x28\xb5\x2f\xfd whatever")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if the optional packages were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(
        DataError,
        match=r"bars\.parquet: reading Parquet needs the pyarrow package: pip install 'stage1_ds\[formats\]'",
    ):
        _read(tmp_path / "bars.parquet")
    with pytest.raises(
        DataError, match=r"bars\.csv\.zst: reading zstd-compressed files needs the zstandard package"
    ):
        _read(tmp_path / "bars.csv.zst")


def test_a_split_shorter_than_the_gap_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"instrument SHORT: the val split .* is no longer than the gap"):
        _prepare_csv(tmp_path, _rows(20 * 1440), "short", split_fractions=(0.98, 0.01, 0.01), window_bars=16)


def test_a_whole_file_test_split_is_evaluated_by_a_trained_model(
    trained_export: Path, tmp_path: Path
) -> None:
    """New data for a trained model: a folder that is all test, the model's own statistics for a new
    instrument allowed, the baselines that need no train split."""
    from stage1_ds.cli import main

    out = _prepare_csv(
        tmp_path, _rows(12 * 1440, seed=3), "fresh", split_fractions=(0.0, 0.0, 1.0), window_bars=16
    )
    args = ["--model", str(trained_export), "--data", str(out), "--mode", "time", "--batches", "1"]
    # FRESH is not in the model's statistics: the folder's own, fitted on the bars before its first anchor.
    assert main(["evaluate", *args, "--json", str(tmp_path / "r.json")]) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["stats_source"] == "folder"
    stats, split = json.loads((out / "stats.json").read_text()), load_prepared(out).split("FRESH", "test")
    assert (
        stats["instruments"]["FRESH"]["fitted_on"] == "lead_in" and split.anchor_start > split.history_start
    )
    old_style = {**stats["instruments"]["FRESH"], "fitted_on": "test"}  # prepared before lead-ins
    (out / "stats.json").write_text(json.dumps({**stats, "instruments": {"FRESH": old_style}}))
    assert main(["evaluate", *args, "--json", str(tmp_path / "r2.json")]) == 2, "fitted on the scored split"
    assert main(["evaluate", *args, "--json", str(tmp_path / "r2.json"), "--allow-other-stats"]) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    report = saved["modes"]["time"]
    assert "train_mean" not in report["overall"] and report["overall"]["model"]["masked_values"] > 0
    assert saved["best_baseline_chosen_on"] == "test", "no val split: chosen on the split scored, and said"
