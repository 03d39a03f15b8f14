"""Data at scale: prepare one instrument at a time in worker processes with the same output for any number
of workers, synthetic markets of many instruments, and merging folders prepared apart."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stage1_ds.data.ingest import InputFormat
from stage1_ds.data.prepare import PrepareOptions, merge_prepared, prepare_files, prepare_synthetic
from stage1_ds.data.store import load_prepared
from stage1_ds.data.synthetic import generate_synthetic_m1
from stage1_ds.errors import DataError

SMALL = PrepareOptions(window_bars=16, split_fractions=(0.6, 0.2, 0.2))


def _same_folder(a: Path, b: Path) -> None:
    """Every array bit for bit, the statistics, and the manifest but for when and where it was written."""
    names = sorted(p.name for p in (a / "bars").iterdir())
    assert names == sorted(p.name for p in (b / "bars").iterdir())
    for name in names:
        assert (a / "bars" / name).read_bytes() == (b / "bars" / name).read_bytes(), name
    assert json.loads((a / "stats.json").read_text()) == json.loads((b / "stats.json").read_text())
    ours, theirs = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    for manifest in (ours, theirs):
        for key in ("created_utc", "code_version", "merged_from"):
            manifest.pop(key, None)
    assert ours == theirs


def test_any_number_of_workers_writes_the_same_folder(tmp_path: Path) -> None:
    for workers in (1, 2):
        options = PrepareOptions(window_bars=16, split_fractions=(0.6, 0.2, 0.2), workers=workers)
        prepare_synthetic(tmp_path / f"w{workers}", days=30, seed=5, options=options, instruments=3)
    _same_folder(tmp_path / "w1", tmp_path / "w2")
    assert not (tmp_path / "w2" / "parts.partial").exists(), "the per-instrument parts are cleaned up"


def test_synthetic_instruments_differ_in_seed_volatility_and_price(tmp_path: Path) -> None:
    manifest = prepare_synthetic(tmp_path / "three", days=30, seed=5, options=SMALL, instruments=3)
    assert list(manifest["instruments"]) == ["SYNTH000", "SYNTH001", "SYNTH002"]
    assert manifest["synthetic_params"] == {"days": 30, "seed": 5, "instruments": 3}
    bars = [generate_synthetic_m1(30, 5, k) for k in range(3)]
    levels = [float(np.median(b.ohlc[:, 3])) for b in bars]
    volatility = [float(np.std(np.diff(np.log(b.ohlc[:, 3])))) for b in bars]
    assert len({round(v, 3) for v in levels}) == 3 and len({round(v, 7) for v in volatility}) == 3
    np.testing.assert_array_equal(generate_synthetic_m1(30, 5, 1).ohlc, bars[1].ohlc)
    np.testing.assert_array_equal(generate_synthetic_m1(30, 5).ohlc, generate_synthetic_m1(30, 5).ohlc)


def _csv(tmp_path: Path, name: str, seed: int) -> Path:
    bars = generate_synthetic_m1(40, seed)
    path = tmp_path / f"{name}.csv"
    frame = pd.DataFrame(bars.ohlc, columns=["open", "high", "low", "close"])
    frame.insert(0, "timestamp", bars.start)
    frame["volume"] = bars.volume
    frame.to_csv(path, index=False)
    return path


def test_merging_folders_prepared_apart_equals_preparing_together(tmp_path: Path) -> None:
    x, y = _csv(tmp_path, "xxx", 1), _csv(tmp_path, "yyy", 2)
    prepare_files([x], tmp_path / "a", InputFormat.CSV, options=SMALL)
    prepare_files([y], tmp_path / "b", InputFormat.CSV, options=SMALL)
    prepare_files([x, y], tmp_path / "together", InputFormat.CSV, options=SMALL)
    manifest = merge_prepared([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert manifest["merged_from"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    _same_folder(tmp_path / "merged", tmp_path / "together")
    assert load_prepared(tmp_path / "merged").instruments == ["XXX", "YYY"]


def test_merging_refuses_folders_that_do_not_fit_together(tmp_path: Path) -> None:
    x, y = _csv(tmp_path, "xxx", 1), _csv(tmp_path, "yyy", 2)
    prepare_files([x], tmp_path / "a", InputFormat.CSV, options=SMALL)
    prepare_files(
        [y],
        tmp_path / "b32",
        InputFormat.CSV,
        options=PrepareOptions(window_bars=32, split_fractions=(0.6, 0.2, 0.2)),
    )
    with pytest.raises(DataError, match=r"b32: prepared with other options .*window_bars: 16 in .*, 32"):
        merge_prepared([tmp_path / "a", tmp_path / "b32"], tmp_path / "out")
    with pytest.raises(
        DataError, match=r"instrument XXX is in .* and .*: prepare all files of an instrument together"
    ):
        merge_prepared([tmp_path / "a", tmp_path / "a"], tmp_path / "out")
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    del stats["instruments"]["XXX"]["sufficient"]
    (tmp_path / "a" / "stats.json").write_text(json.dumps(stats))
    prepare_files([y], tmp_path / "b", InputFormat.CSV, options=SMALL)
    with pytest.raises(DataError, match=r"instrument XXX has no sufficient statistics .* prepare it again"):
        merge_prepared([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


def test_merging_copies_in_blocks_where_the_kernel_cannot_and_names_a_short_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = _csv(tmp_path, "xxx", 1), _csv(tmp_path, "yyy", 2)
    prepare_files([x], tmp_path / "a", InputFormat.CSV, options=SMALL)
    prepare_files([y], tmp_path / "b", InputFormat.CSV, options=SMALL)
    merge_prepared([tmp_path / "a", tmp_path / "b"], tmp_path / "kernel")
    if hasattr(os, "copy_file_range"):
        real, started = os.copy_file_range, []

        def stops_after_a_start(src: int, dst: int, count: int, *offsets: int) -> int:
            # the kernel copies part of a file, then refuses (as across file systems on older kernels)
            if started:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            started.append(count)
            return real(src, dst, min(count, 100), *offsets)

        monkeypatch.setattr(os, "copy_file_range", stops_after_a_start)
        merge_prepared([tmp_path / "a", tmp_path / "b"], tmp_path / "partly")
        _same_folder(tmp_path / "kernel", tmp_path / "partly")
    monkeypatch.delattr(os, "copy_file_range", raising=False)  # as on macOS
    merge_prepared([tmp_path / "a", tmp_path / "b"], tmp_path / "blocks")
    _same_folder(tmp_path / "kernel", tmp_path / "blocks")
    short = tmp_path / "b" / "bars" / "m5_ohlc.npy"
    short.write_bytes(short.read_bytes()[:-64])
    with pytest.raises(
        DataError, match=r"b/bars/m5_ohlc\.npy: not a complete array .* prepare the folder again"
    ):
        merge_prepared([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


def test_a_bad_row_in_a_worker_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    good, bad = _csv(tmp_path, "xxx", 1), _csv(tmp_path, "yyy", 2)
    lines = bad.read_text().splitlines()
    lines[7] = lines[7].replace(",", ",-", 1)  # a negative open price on line 8
    bad.write_text("\n".join(lines) + "\n")
    options = PrepareOptions(window_bars=16, split_fractions=(0.6, 0.2, 0.2), workers=2)
    with pytest.raises(DataError, match=r"yyy\.csv.* line 8"):
        prepare_files([good, bad], tmp_path / "out", InputFormat.CSV, options=options)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_script_without_a_main_guard_gets_told_why_its_workers_died(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from pathlib import Path\n"
        "from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic\n"
        f"prepare_synthetic(Path({str(tmp_path / 'out')!r}), days=20, seed=0, "
        "options=PrepareOptions(window_bars=16, workers=2), instruments=2)\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "a worker process stopped abruptly" in run.stderr and '__name__ == "__main__"' in run.stderr
