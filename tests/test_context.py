"""Context windows (`data.context`): the other instruments' windows at a sample's anchor time, nothing of
any instrument at or after it, absent (never stale, never another split) where an instrument is closed."""

from __future__ import annotations

import shutil
from copy import deepcopy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model_config, tiny_train_config
from stage1_ds import Encoder
from stage1_ds.config import Config, DataConfig, Fusion, ModelConfig, PositionBias
from stage1_ds.data.batch import Batch
from stage1_ds.data.corpus import CorpusWindows, open_windows
from stage1_ds.data.ingest import InputFormat
from stage1_ds.data.prepare import PrepareOptions, merge_prepared, prepare_files
from stage1_ds.data.store import load_prepared
from stage1_ds.data.synthetic import generate_synthetic_m1
from stage1_ds.encoding import encode
from stage1_ds.errors import ConfigError, DataError
from stage1_ds.model.stage1 import Stage1Model, load_export_stats
from stage1_ds.timeframes import Timeframe

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
    with pytest.raises(ConfigError, match=r"data\.context: true needs model\.fusion: joint"):
        Config(data=DataConfig(context=True), model=ModelConfig(fusion=Fusion.PER_TIMEFRAME)).validate()
    Config(data=DataConfig(context=True)).validate()


def _context_model() -> Stage1Model:
    torch.manual_seed(0)
    model = Stage1Model(tiny_model_config(position_bias=PositionBias.TIME), CONTEXT)
    with torch.no_grad():  # the time bias starts at zero: give it values so that times matter
        assert model.embed.time_bias is not None
        model.embed.time_bias.distance.weight.normal_()
    return model.eval()


def _context_batch(market: tuple[Path, Path, Path]) -> Batch:
    first, second, _ = market
    batch = open_windows([first, second], "train", CONTEXT).batch(np.arange(0, 8000, 200))
    assert batch.context is not None and batch.context.present.all(dim=1).float().mean() > 0.5
    return batch


def _states(model: Stage1Model, batch: Batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(batch).hidden


def test_the_model_reads_present_context_and_nothing_of_an_absent_slot(
    market: tuple[Path, Path, Path],
) -> None:
    """The target's states change with a present context instrument's bars; an absent slot's values, and
    the order of the slots (no instrument identity), change nothing; no context at all is an empty market."""
    model, batch = _context_model(), _context_batch(market)
    assert batch.context is not None
    states = _states(model, batch)
    assert set(states) == set(batch.windows) and states["m1"].shape[0] == batch.size
    both = batch.context.present.all(dim=1)

    moved = deepcopy(batch)
    assert moved.context is not None
    moved.context.windows["h1"].features[1::2] *= 3.0  # slot 1 of every sample
    changed = _states(model, moved)
    assert not torch.allclose(changed["m1"][both], states["m1"][both], atol=1e-5)

    absent = deepcopy(batch)
    assert absent.context is not None
    absent.context.present[:, 1] = False
    dropped = _states(model, absent)
    absent.context.windows["h1"].features[1::2] = 100.0  # an absent slot's values
    assert torch.equal(_states(model, absent)["m1"], dropped["m1"])
    assert not torch.allclose(dropped["m1"][both], states["m1"][both], atol=1e-5)

    swapped = deepcopy(batch)
    assert swapped.context is not None
    order = torch.arange(batch.size * 2).reshape(-1, 2).flip(1).flatten()
    for window in swapped.context.windows.values():
        for name in ("features", "valid", "start_time", "scale"):
            setattr(window, name, getattr(window, name)[order])
    swapped.context.present = swapped.context.present.flip(1)
    for tf, value in _states(model, swapped).items():
        torch.testing.assert_close(value, states[tf], atol=2e-5, rtol=1e-4)

    empty = deepcopy(batch)
    assert empty.context is not None
    empty.context.present[:] = False
    without = deepcopy(batch)
    without.context = None
    torch.testing.assert_close(_states(model, without)["m1"], _states(model, empty)["m1"], atol=1e-6, rtol=0)


def test_context_summaries_sit_in_time_and_a_model_without_context_ignores_it(
    market: tuple[Path, Path, Path],
) -> None:
    """The time bias measures minutes to a context instrument's last bar: moving its bar times moves the
    target's states; a model built without context reads none, and builds no context parameters."""
    model, batch = _context_model(), _context_batch(market)
    assert batch.context is not None
    late = deepcopy(batch)
    assert late.context is not None
    for window in late.context.windows.values():
        window.start_time -= 6 * 3600
    both = batch.context.present.all(dim=1)
    assert not torch.allclose(_states(model, late)["m1"][both], _states(model, batch)["m1"][both], atol=1e-5)

    torch.manual_seed(0)
    plain = Stage1Model(tiny_model_config(), DataConfig(window_bars=16)).eval()
    assert not plain.reads_context and model.reads_context
    assert not any(".context." in name for name, _ in plain.named_parameters())
    without = deepcopy(batch)
    without.context = None
    torch.testing.assert_close(_states(plain, batch)["m1"], _states(plain, without)["m1"], atol=0, rtol=0)


@pytest.fixture(scope="module")
def context_export(market: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained with context (DeepSpeed ZeRO-2, CPU, 3 steps) on the two folders, exported."""
    from stage1_ds.export import convert
    from stage1_ds.train.loop import train

    first, second, _ = market
    run = tmp_path_factory.mktemp("context_run")
    config = tiny_train_config(max_steps=3, eval_every_steps=3, save_every_steps=3, image_every_steps=3)
    config.data.context, config.data.context_max = True, 2
    config.model.position_bias = PositionBias.TIME
    train(config, [first, second], run)
    convert(run, run / "export")
    return run / "export"


def _raw(folder: Path, name: str, end: int | None = None) -> pd.DataFrame:
    """An instrument's cleaned 1-minute bars from its folder as a user's DataFrame, those starting before
    ``end`` (seconds) only when given."""
    data = load_prepared(folder)
    begin, stop = data.rows(name, Timeframe.M1)
    m1 = data.bars[Timeframe.M1]
    start, ohlc = np.asarray(m1.start[begin:stop]), np.asarray(m1.ohlc[begin:stop])
    keep = slice(None) if end is None else start < end
    return pd.DataFrame(
        {"time": start[keep], **{c: ohlc[keep, i] for i, c in enumerate(("open", "high", "low", "close"))}}
    )


def test_embed_with_context_equals_encode_and_reads_no_bar_after_t(
    market: tuple[Path, Path, Path], context_export: Path
) -> None:
    """A model trained with context: `Encoder.embed(bars, context={name: bars})` equals `stage1 encode` of
    the corpus (its context served by the data pipeline), the others' bars after each decision time change
    nothing, a bar before it does, and leaving the market out changes the embeddings."""
    first, second, _ = market
    encoder = Encoder.from_pretrained(context_export, device="cpu")
    assert encoder.model.reads_context
    expected = encode(
        encoder.model, [first, second], "train", max_batches=3, stats=load_export_stats(context_export)
    )
    own = expected["instrument"] == 0  # AAA: its first train anchors
    at = expected["anchor_time"][own]
    # The pipeline serves each other instrument from its train split: give the raw bars up to its end.
    ends = {name: load_prepared(folder).split(name, "train").end for name, folder in _owners(market).items()}
    context = {name: _raw(_owners(market)[name], name, ends[name]) for name in ("BBB", "CCC")}
    got = encoder.embed(_raw(first, "AAA"), at=at, instrument="AAA", context=context)
    for tf, values in got.items():
        np.testing.assert_allclose(values, expected[f"{tf}_pooled"][own], atol=1e-5, rtol=0)

    t = int(at[100])
    later = {
        name: frame.assign(close=np.where(frame.time + 60 > t, frame.close * 1.01, frame.close))
        for name, frame in context.items()
    }
    for frame in later.values():
        frame["high"] = np.maximum(frame.high, frame.close)
    now = encoder.embed(_raw(first, "AAA"), at=[t], instrument="AAA", context=context)
    assert all(
        np.array_equal(encoder.embed(_raw(first, "AAA"), at=[t], instrument="AAA", context=later)[tf], v)
        for tf, v in now.items()
    )
    earlier = {
        name: frame.assign(close=np.where(frame.time + 600 > t, frame.close * 1.001, frame.close))
        for name, frame in context.items()
    }
    for frame in earlier.values():
        frame["high"] = np.maximum(frame.high, frame.close)
        frame["low"] = np.minimum(frame.low, frame.close)
    assert not np.array_equal(
        encoder.embed(_raw(first, "AAA"), at=[t], instrument="AAA", context=earlier)["m1"], now["m1"]
    )
    # BBB absent: bars too few for its h4 window, or none in the hour before t: as if not given at all
    ccc_only = encoder.embed(_raw(first, "AAA"), at=[t], instrument="AAA", context={"CCC": context["CCC"]})
    bbb = context["BBB"]
    for absent in (bbb[bbb.time > t - 86400], bbb[bbb.time + 2 * 3600 <= t]):
        got = encoder.embed(_raw(first, "AAA"), at=[t], instrument="AAA", context={**context, "BBB": absent})
        for tf, value in ccc_only.items():
            np.testing.assert_allclose(got[tf], value, atol=1e-6, rtol=0)
    assert not np.allclose(ccc_only["m1"], now["m1"], atol=1e-5)
    alone = encoder.embed(_raw(first, "AAA"), at=[t], instrument="AAA")
    assert not np.allclose(alone["m1"], now["m1"], atol=1e-5)


def _owners(market: tuple[Path, Path, Path]) -> dict[str, Path]:
    first, second, _ = market
    return {"AAA": first, "BBB": first, "CCC": second}
