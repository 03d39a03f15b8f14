"""`stage1_ds.Encoder`: embeddings from raw 1-minute bars equal `stage1 encode` of a prepared folder, read no
bar after the decision time, and stream as they batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model_config
from stage1_ds import Encoder
from stage1_ds.config import DataConfig
from stage1_ds.data.corpus import corpus_record
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
from stage1_ds.data.store import PreparedData, load_prepared
from stage1_ds.encoding import encode
from stage1_ds.errors import CheckpointError, DataError
from stage1_ds.model.stage1 import Stage1Model, load_export_stats
from stage1_ds.timeframes import Timeframe


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 days of the synthetic market prepared for 16-bar windows (the trained export's length)."""
    out = tmp_path_factory.mktemp("encoder_month")
    prepare_synthetic(
        out, days=40, seed=7, options=PrepareOptions(window_bars=16, split_fractions=(0.6, 0.2, 0.2))
    )
    return out


def _epoch(index: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray((index - pd.Timestamp(0)) // pd.Timedelta(seconds=1))


def _raw(data: PreparedData, name: str = "SYNTH") -> pd.DataFrame:
    """The folder's cleaned 1-minute bars of ``name`` as a user's DataFrame (times as the index)."""
    begin, end = data.rows(name, Timeframe.M1)
    m1 = data.bars[Timeframe.M1]
    ohlc = np.asarray(m1.ohlc[begin:end])
    return pd.DataFrame(
        {
            "open": ohlc[:, 0],
            "high": ohlc[:, 1],
            "low": ohlc[:, 2],
            "close": ohlc[:, 3],
            "volume": m1.volume[begin:end],
        },
        index=pd.to_datetime(np.asarray(m1.start[begin:end]), unit="s"),
    )


def test_embed_equals_encode_on_every_anchor_of_a_test_split(month: Path, trained_export: Path) -> None:
    encoder = Encoder.from_pretrained(trained_export, device="cpu")
    expected = encode(encoder.model, month, "test", stats=load_export_stats(trained_export))
    got = encoder.embed(_raw(load_prepared(month)), at=expected["anchor_time"])
    assert len(expected["anchor_time"]) > 1000
    assert set(got) == set(encoder.model.timeframes)
    for tf, values in got.items():
        assert values.shape == expected[f"{tf}_pooled"].shape
        np.testing.assert_allclose(values, expected[f"{tf}_pooled"], atol=1e-5, rtol=0)
    tokens = encoder.embed(
        _raw(load_prepared(month)), at=expected["anchor_time"][:64], pooled=False, timeframes=["h1"]
    )
    np.testing.assert_allclose(tokens["h1"], expected["h1_tokens"][:64], atol=1e-5, rtol=0)


def test_a_volume_model_embeds_raw_bars_as_its_prepared_folder(synthetic_small: Path) -> None:
    """Volume in the instrument's units (the folder's data record) and the volume reference of the windows."""
    data_config = DataConfig(window_bars=32, channels=["ohlc", "volume"])
    torch.manual_seed(0)
    model = Stage1Model(tiny_model_config(), data_config).eval()
    data = load_prepared(synthetic_small)
    encoder = Encoder(model, data.stats, corpus_record([data]), device="cpu")
    expected = encode(model, synthetic_small, "val", max_batches=2)
    got = encoder.embed(_raw(data), at=expected["anchor_time"])
    for tf, values in got.items():
        np.testing.assert_allclose(values, expected[f"{tf}_pooled"], atol=1e-5, rtol=0)


def test_bars_after_the_decision_time_change_nothing_and_bars_before_it_do(
    month: Path, trained_export: Path
) -> None:
    encoder = Encoder.from_pretrained(trained_export, device="cpu")
    frame = _raw(load_prepared(month))
    at = frame.index[-3000] + pd.Timedelta(minutes=1)  # the end of that bar
    past = frame[frame.index + pd.Timedelta(minutes=1) <= at]
    now = encoder.embed(past)  # at: the last bar's end
    with_future = encoder.embed(frame, at=at)
    between = encoder.embed(frame, at=at + pd.Timedelta(seconds=59))  # still before the next bar's end
    for tf in now:
        assert np.array_equal(now[tf], with_future[tf]) and np.array_equal(now[tf], between[tf]), tf
    without = encoder.embed(past.drop(past.index[-10]), at=at)
    assert not np.array_equal(without["m1"], now["m1"])


def test_streaming_minute_by_minute_equals_one_batched_call(month: Path, trained_export: Path) -> None:
    encoder = Encoder.from_pretrained(trained_export, device="cpu")
    frame = _raw(load_prepared(month)).iloc[: 12 * 1440]
    stream = [encoder.embed(frame.iloc[:k]) for k in range(len(frame) - 39, len(frame) + 1)]
    times = frame.index[-40:] + pd.Timedelta(minutes=1)
    batched = encoder.embed(frame, at=times)
    for tf in batched:  # one window per call against 40 per call: the same to float32 rounding
        np.testing.assert_allclose(np.concatenate([s[tf] for s in stream]), batched[tf], atol=1e-5, rtol=0)


def test_an_unseen_instrument_is_scaled_from_its_own_history_as_prepare_scales_a_train_split(
    synthetic_small: Path, trained_export: Path
) -> None:
    """Given SYNTH's train split as the history of a new instrument, `add_instrument` fits exactly the
    scales `prepare` fitted on it (which the model was trained with)."""
    encoder = Encoder.from_pretrained(trained_export, device="cpu")
    data = load_prepared(synthetic_small)
    frame = _raw(data)
    with pytest.raises(
        DataError, match=r"'EURCHF': the model was not trained on it .*add_instrument\('EURCHF'"
    ):
        encoder.embed(frame, instrument="EURCHF")
    train = data.split("SYNTH", "train")
    encoder.add_instrument("EURCHF", frame[_epoch(frame.index) + 60 <= train.end])
    assert encoder._stats["EURCHF"]["scale"] == data.stats["instruments"]["SYNTH"]["scale"]
    assert encoder.instruments == ["SYNTH", "EURCHF"]
    assert encoder.embed(frame, instrument="EURCHF")["h4"].shape == (1, encoder.d_model)


def test_times_in_any_zone_and_a_dict_of_arrays_read_alike(month: Path, trained_export: Path) -> None:
    encoder = Encoder.from_pretrained(trained_export, device="cpu")
    frame = _raw(load_prepared(month)).iloc[: 10 * 1440]
    utc = encoder.embed(frame)
    new_york = frame.tz_localize("UTC").tz_convert("America/New_York")
    arrays = {"time": _epoch(frame.index), **{c: frame[c].to_numpy() for c in frame.columns}}
    column = frame.reset_index(names="timestamp")
    end = (frame.index[-1] + pd.Timedelta(minutes=1)).tz_localize("UTC")
    at_new_york = encoder.embed(frame, at=[end.tz_convert("America/New_York")])
    for other in (encoder.embed(new_york), encoder.embed(arrays), encoder.embed(column), at_new_york):
        assert all(np.array_equal(utc[tf], other[tf]) for tf in utc)


def test_bad_bars_and_short_history_are_named(month: Path, trained_export: Path) -> None:
    encoder = Encoder.from_pretrained(trained_export, device="cpu")
    frame = _raw(load_prepared(month)).iloc[: 10 * 1440].copy()
    broken = frame.copy()
    broken.iloc[100, broken.columns.get_loc("high")] = broken["low"].iloc[100] / 2
    with pytest.raises(DataError, match=r"SYNTH: bar 100 \(.*\): OHLC violation"):
        encoder.embed(broken)
    with pytest.raises(DataError, match=r"bars lack \['close'\]"):
        encoder.embed(frame.drop(columns="close"))
    early = frame.index[2 * 1440]  # m15 to h1 have 16 bars by then, h4 not
    with pytest.raises(
        DataError, match=r"too little history before it: \d+ h4 bars of the 16 its window"
    ) as error:
        encoder.embed(frame, at=early)
    assert "m5" not in str(error.value), "only the short timeframes are named"
    first = str(error.value).rsplit("full windows of every timeframe in the bars given: ", 1)[1]
    assert encoder.embed(frame, at=pd.Timestamp(first))["h4"].shape == (1, encoder.d_model), "it is the first"
    with pytest.raises(DataError, match=r"h1 bars .*h4 bars .*never hold full windows"):
        encoder.embed(frame.iloc[:600], at=frame.index[500])  # several timeframes short at once
    assert encoder.min_history_minutes == 17 * 240  # a 16-bar h4 window and the bar in progress
    with pytest.raises(DataError, match=r"before the end of the first 1-minute bar"):
        encoder.embed(frame, at=frame.index[0])


def test_a_model_of_utc_bars_refuses_naive_times_unless_told_their_zone(
    month: Path, trained_export: Path, tmp_path: Path
) -> None:
    """Naive times read as UTC would be hours off for a model whose data were converted to UTC: refused,
    naming the model's clock; with the zone given (or aware times) the bars embed alike."""
    export = tmp_path / "utc_export"
    shutil.copytree(trained_export, export)
    record = json.loads((export / "data.json").read_text())
    (export / "data.json").write_text(
        json.dumps({**record, "timezone": "America/New_York", "synthetic": False})
    )
    encoder = Encoder.from_pretrained(export, device="cpu")
    assert encoder.clock == "UTC (converted from America/New_York)"
    new_york = _raw(load_prepared(month)).iloc[: 10 * 1440].tz_localize("UTC").tz_convert("America/New_York")
    naive = new_york.tz_localize(None)
    with pytest.raises(
        DataError, match=r"naive times .*trained on bars in UTC \(converted from America/New_York\)"
    ):
        encoder.embed(naive)
    with pytest.raises(DataError, match=r"naive times"):
        encoder.add_instrument("OTHER", naive)
    told = encoder.embed(naive, timezone="America/New_York")
    aware = encoder.embed(new_york)
    assert all(np.array_equal(told[tf], aware[tf]) for tf in aware)


def test_from_pretrained_by_id_reads_the_local_hub_cache(trained_export: Path, tmp_path: Path) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--stage1-tests--tiny-encoder"
    shutil.copytree(trained_export, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    by_id = Encoder.from_pretrained("stage1-tests/tiny-encoder", device="cpu", cache_dir=tmp_path / "hub")
    by_path = Encoder.from_pretrained(trained_export, device="cpu")
    state, expected = by_id.model.state_dict(), by_path.model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    with pytest.raises(
        CheckpointError, match=r"'stage1-tests/elsewhere' is neither an export folder nor a model"
    ):
        Encoder.from_pretrained("stage1-tests/elsewhere", cache_dir=tmp_path / "hub")


def test_the_readme_stage2_lines_run(month: Path, trained_export: Path) -> None:
    """The README's lines for a Stage-2 author, with this test's export (trained on SYNTH) for theirs."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = readme.split("## For a Stage-2 model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"exports/eurusd"', repr(str(trained_export))).replace('"EURUSD"', '"SYNTH"')
    frame = _raw(load_prepared(month))
    namespace = {"bars": frame, "gbpusd_history": frame.iloc[: 20 * 1440]}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["now"]["h4"].shape == (1, namespace["encoder"].d_model)
    assert namespace["history"]["m1"].shape == (10, namespace["encoder"].d_model)
    assert namespace["tokens"]["m1"].shape[:2] == (1, 2)  # 16 bars in patches of 8
    assert "GBPUSD" in namespace["encoder"].instruments


def test_an_export_without_a_data_record_says_what_it_assumes(
    trained_export: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = Stage1Model.from_pretrained(trained_export)
    with caplog.at_level("WARNING"):
        encoder = Encoder(model, load_export_stats(trained_export), None, device="cpu")
    assert "no data record (data.json" in caplog.text and encoder.bucket_origin == 0


def test_bars_stamped_at_their_end_embed_as_the_same_bars_stamped_at_their_start(
    month: Path, trained_export: Path
) -> None:
    frame = _raw(load_prepared(month)).iloc[: 10 * 1440]
    end = (frame.index[-1] + pd.Timedelta(minutes=1)).tz_localize("UTC")
    starts = Encoder.from_pretrained(trained_export, device="cpu").embed(frame, at=[end])
    end_stamped = frame.set_axis(frame.index + pd.Timedelta(minutes=1))
    ends = Encoder.from_pretrained(trained_export, device="cpu", bar_time="end").embed(end_stamped, at=[end])
    assert all(np.array_equal(starts[tf], ends[tf]) for tf in starts)
    shifted = Encoder.from_pretrained(trained_export, device="cpu").embed(end_stamped, at=[end])
    assert not all(np.array_equal(starts[tf], shifted[tf]) for tf in starts), "taken as starts: other bars"
