"""Context windows (`data.context`): the other instruments' windows at a sample's anchor time, nothing of
any instrument at or after it, absent (never stale, never another split) where an instrument is closed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stage1_ds.config import Config, DataConfig
from stage1_ds.data.batch import Batch
from stage1_ds.data.corpus import CorpusWindows, open_windows
from stage1_ds.data.ingest import InputFormat
from stage1_ds.data.prepare import PrepareOptions, merge_prepared, prepare_files
from stage1_ds.data.store import load_prepared
from stage1_ds.data.synthetic import generate_synthetic_m1
from stage1_ds.data.timeframes import Timeframe
from stage1_ds.errors import ConfigError, DataError

OPTIONS = PrepareOptions(window_bars=16, split_fractions=(0.6, 0.2, 0.2))
CONTEXT = DataConfig(window_bars=16, context=True, context_max=2)


def _csv(folder: Path, name: str, seed: int, days: int) -> Path:
    bars = generate_synthetic_m1(days, seed)
    frame = pd.DataFrame({"timestamp": bars.start, **{k: bars.ohlc[:, i] for i, k in enumerate("ohlc")}})
    frame.columns = ["timestamp", "open", "high", "low", "close"]
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """AAA and BBB (40 days) in one folder, CCC (30 days: its splits end earlier) in another, and the
    folder that merging them gives."""
    root = tmp_path_factory.mktemp("market")
    first, second = root / "first", root / "second"
    prepare_files(
        [_csv(root, "AAA", 1, 40), _csv(root, "BBB", 2, 40)], first, InputFormat.CSV, options=OPTIONS
    )
    prepare_files([_csv(root, "CCC", 3, 30)], second, InputFormat.CSV, options=OPTIONS)
    merge_prepared([first, second], root / "merged")
    return first, second, root / "merged"


def _sample(windows: CorpusWindows, count: int = 300) -> tuple[np.ndarray, Batch]:
    ids = np.random.default_rng(0).choice(len(windows), count, replace=False)
    return ids, windows.batch(ids)


def test_context_windows_are_the_other_instruments_own_windows_as_of_the_anchor(
    market: tuple[Path, Path, Path],
) -> None:
    """Each slot holds another instrument's unmasked windows ending with its last bar that ends by t:
    bit for bit the windows of its own sample anchored there; every bar ends at or before t."""
    first, second, _ = market
    windows = open_windows([first, second], "val", CONTEXT)
    assert isinstance(windows, CorpusWindows)
    ids, batch = _sample(windows)
    context = batch.context
    assert context is not None and context.slots == 2
    own = dict(
        zip(
            zip(windows.anchor_instrument.tolist(), windows.anchor_time.tolist(), strict=True),
            range(len(windows)),
            strict=True,
        )
    )
    t = batch.anchor_time.numpy()
    compared = 0
    for b in range(len(ids)):
        for k in range(2):
            row = b * 2 + k
            if not context.present[b, k]:
                assert context.instrument[b, k] == -1
                for window in context.windows.values():
                    assert not window.valid[row].any() and not window.features[row].any()
                continue
            other = int(context.instrument[b, k])
            assert other != int(batch.instrument[b]), "an instrument is never its own context"
            region = windows.data_of(windows.instruments[other]).split(windows.instruments[other], "val")
            for name, window in context.windows.items():
                ends = window.start_time[row] + Timeframe(name).seconds
                assert window.valid[row].all() and bool((ends <= t[b]).all()), (b, k, name)
                inside = (window.start_time[row] >= region.history_start) & (ends <= region.end)
                assert bool(inside.all()), f"sample {b}: {name} context bars outside the other's val split"
            last_end = int(context.windows["m1"].start_time[row, -1]) + 60
            assert t[b] - last_end < 60 * CONTEXT.context_stale_minutes
            sample = own.get((other, last_end))
            if sample is None:  # that minute is no anchor of the other instrument (its split's first windows)
                continue
            theirs = windows.batch(np.array([sample]))
            for name, window in theirs.windows.items():
                assert torch.equal(context.windows[name].features[row], window.features[0]), (b, k, name)
                assert torch.equal(context.windows[name].start_time[row], window.start_time[0])
            compared += 1
    assert compared > 200
    # AAA and BBB trade on the same days; CCC's val split ends before theirs begins, so it has no context
    same_days = batch.instrument != windows.instruments.index("CCC")
    assert context.present.any(dim=1)[same_days].float().mean() > 0.9
    assert not context.present.any(dim=1)[~same_days].any()


def test_nothing_at_or_after_the_anchor_of_any_instrument_enters(
    market: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The probe's look-ahead test for context: every instrument's bars that end after a sample's anchor
    are changed (in a copy of the folders): its context is bit-identical; a bar before t changed is seen."""
    first, second, _ = market
    ids, batch = _sample(open_windows([first, second], "val", CONTEXT), 40)
    assert batch.context is not None
    copies = [tmp_path / "first", tmp_path / "second"]
    for source, copy in zip((first, second), copies, strict=True):
        shutil.copytree(source, copy)
    t = int(batch.anchor_time[17])
    for copy in copies:
        for tf in Timeframe:
            start = np.load(copy / "bars" / f"{tf.value}_start.npy")
            log_ohlc = np.load(copy / "bars" / f"{tf.value}_log_ohlc.npy", mmap_mode="r+")
            log_ohlc[start + tf.seconds > t] += 0.01  # every instrument's bars that end after t
            log_ohlc.flush()
    changed = open_windows(copies, "val", CONTEXT).batch(ids)
    assert changed.context is not None
    for name, window in batch.context.windows.items():
        assert torch.equal(changed.context.windows[name].features[34:36], window.features[34:36]), name
        assert torch.equal(changed.context.windows[name].valid[34:36], window.valid[34:36])
    assert batch.context.present[17].any()
    for copy in copies:
        log_ohlc = np.load(copy / "bars" / "m1_log_ohlc.npy", mmap_mode="r+")
        start = np.load(copy / "bars" / "m1_start.npy")
        log_ohlc[(start + 60 <= t) & (start + 600 > t)] *= 1.001  # the last ten minutes before t
        log_ohlc.flush()
    seen = open_windows(copies, "val", CONTEXT).batch(ids)
    assert seen.context is not None
    assert not torch.equal(
        seen.context.windows["m1"].features[34:36], batch.context.windows["m1"].features[34:36]
    )


def test_an_instrument_without_a_recent_bar_or_outside_its_split_is_absent(
    market: tuple[Path, Path, Path],
) -> None:
    """With a one-minute staleness an instrument is present exactly where its bar of the minute before t
    exists; CCC's splits end ten days before the others': late AAA / BBB samples have no CCC from another
    split."""
    first, second, _ = market
    strict = DataConfig(window_bars=16, context=True, context_max=2, context_stale_minutes=1)
    windows = open_windows([first, second], "train", strict)
    ids, batch = _sample(windows, 400)
    assert batch.context is not None
    names = windows.instruments
    starts = {name: _m1_starts(windows, name) for name in names}
    ccc = load_prepared(second).split("CCC", "train")
    t = batch.anchor_time.numpy()
    for b in range(len(ids)):
        slots = {int(i) for i in batch.context.instrument[b] if i >= 0}
        target = names[int(batch.instrument[b])]
        for j, name in enumerate(names):
            if name == target:
                continue
            traded = (t[b] - 60) in starts[name]
            in_split = name != "CCC" or t[b] - 60 < ccc.end
            full = t[b] - 60 >= starts[name][0] + 7 * 86400  # 16 h4 bars and a weekend, with room
            if (j in slots) and not (traded and in_split):
                pytest.fail(f"sample {b}: {name} present without a bar at t - 1 min or outside its split")
            if traded and in_split and full:
                assert j in slots, f"sample {b}: {name} traded the minute before t and is missing"
    late = t - 60 >= ccc.end
    assert late.sum() > 20, "samples after CCC's train split ended"
    assert not (batch.context.instrument.numpy()[late] == names.index("CCC")).any()


def _m1_starts(windows: CorpusWindows, name: str) -> np.ndarray:
    data = windows.data_of(name)
    begin, end = data.rows(name, Timeframe.M1)
    return np.asarray(data.bars[Timeframe.M1].start[begin:end])


def test_the_first_present_instruments_fill_the_slots_and_a_list_narrows_them(
    market: tuple[Path, Path, Path],
) -> None:
    first, second, merged = market
    one = open_windows([first, second], "train", DataConfig(window_bars=16, context=True, context_max=1))
    ids, batch = _sample(one)
    full = open_windows([first, second], "train", CONTEXT).batch(ids)
    assert batch.context is not None and full.context is not None
    assert torch.equal(batch.context.instrument[:, 0], full.context.instrument[:, 0]), "corpus order"
    assert (full.context.instrument[:, 1] >= 0).any(), "some samples have two others trading"
    only = DataConfig(window_bars=16, context=True, context_instruments=["CCC"], context_max=3)
    narrowed = open_windows(merged, "train", only).batch(ids)
    assert narrowed.context is not None
    assert set(narrowed.context.instrument.flatten().tolist()) == {-1, 2}
    with pytest.raises(DataError, match=r"data.context_instruments: \['DDD'\] are not in the data"):
        open_windows(merged, "val", DataConfig(window_bars=16, context=True, context_instruments=["DDD"]))


def test_one_folder_and_a_corpus_of_its_parts_serve_the_same_context(market: tuple[Path, Path, Path]) -> None:
    first, second, merged = market
    ids, corpus = _sample(open_windows([first, second], "test", CONTEXT))
    whole = open_windows(merged, "test", CONTEXT).batch(ids)
    again = open_windows([first, second], "test", CONTEXT).batch(ids)
    assert corpus.context is not None and whole.context is not None and again.context is not None
    for ours, theirs in ((corpus.context, whole.context), (corpus.context, again.context)):
        assert torch.equal(ours.present, theirs.present) and torch.equal(ours.instrument, theirs.instrument)
        for name, window in ours.windows.items():
            for field in ("features", "valid", "start_time", "parent_index", "scale"):
                a, b = getattr(window, field), getattr(theirs.windows[name], field)
                assert (a is None and b is None) or torch.equal(a, b), (name, field)


def test_context_keys_are_checked() -> None:
    problems = DataConfig(context_max=0, context_stale_minutes=0, context_instruments=["A", "A"]).check(
        "data"
    )
    assert any(p.startswith("data.context_max: 0") for p in problems)
    assert any(p.startswith("data.context_stale_minutes: 0") for p in problems)
    assert any(p.startswith("data.context_instruments:") for p in problems)
    with pytest.raises(ConfigError, match=r"data\.context: true, but the model does not read context"):
        Config(data=DataConfig(context=True)).validate()
