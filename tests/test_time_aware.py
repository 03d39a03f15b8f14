"""The encoder knows when it is: the time bias measures minutes across timeframes (invariant to their order
and to a shift of every time), calendar inputs see the clock, and both train under every phase."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_model_config, tiny_train_config
from stage1_ds.config import DataConfig, Fusion, Phase, PhaseConfig, PositionBias
from stage1_ds.data.batch import Batch
from stage1_ds.data.windows import WindowDataset
from stage1_ds.model import t5
from stage1_ds.model.embed import patch_end_times
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.model.time_aware import LONGEST_MINUTES, TIME_BUCKETS, TimeBias, time_bucket
from stage1_ds.train.loop import train

WEEK, HOUR = 7 * 86400, 3600


def _model(position_bias: PositionBias, calendar: list[str] | None = None, seed: int = 0) -> Stage1Model:
    torch.manual_seed(seed)
    config = tiny_model_config(position_bias=position_bias, calendar=calendar or [])
    config.timeframe_pair_bias = position_bias == PositionBias.TIME
    model = Stage1Model(config, DataConfig(window_bars=16)).eval()
    if model.embed.time_bias is not None:  # trained-looking values instead of the zeros it starts from
        with torch.no_grad():
            for param in model.embed.time_bias.parameters():
                param.normal_(0, 1.0)
    return model


def _batch(folder: Path) -> Batch:
    return WindowDataset(folder, "train", DataConfig(window_bars=16)).batch(np.arange(6) * 97)


def _reordered(batch: Batch, order: list[str]) -> Batch:
    other = copy.copy(batch)
    other.windows = {tf: batch.windows[tf] for tf in order}
    return other


def _shifted(batch: Batch, seconds: int) -> Batch:
    other = copy.copy(batch)
    other.windows = {tf: copy.copy(w) for tf, w in batch.windows.items()}
    for window in other.windows.values():
        window.start_time = window.start_time + seconds
    return other


def _hidden(model: Stage1Model, batch: Batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(batch).hidden


def test_the_encoder_run_with_a_given_bias_is_t5s_own_forward_given_t5s_bias() -> None:
    """`t5.run_encoder` with a bias runs T5's blocks as T5 does: given T5's own index bias it reproduces
    T5's forward (padding included)."""
    torch.manual_seed(0)
    encoder = t5.build_encoder(tiny_model_config().encoder).eval()
    x = torch.randn(3, 10, t5.d_model(encoder))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, :4] = 0
    attention = encoder.encoder.block[0].layer[0].SelfAttention
    own = attention.compute_bias(10, 10, device=x.device).expand(3, -1, -1, -1)
    with torch.no_grad():
        expected = t5.run_encoder(encoder, x, mask)
        got = t5.run_encoder(encoder, x, mask, position_bias=own)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_with_the_time_bias_the_order_of_timeframes_changes_nothing_and_with_the_index_bias_it_does(
    synthetic_small: Path,
) -> None:
    batch = _batch(synthetic_small)
    order = list(batch.windows)
    reversed_order = _reordered(batch, order[::-1])
    time_model, index_model = _model(PositionBias.TIME), _model(PositionBias.INDEX)
    ours, theirs = _hidden(time_model, batch), _hidden(time_model, reversed_order)
    for tf in order:
        torch.testing.assert_close(ours[tf], theirs[tf], atol=1e-5, rtol=1e-5)
    ours, theirs = _hidden(index_model, batch), _hidden(index_model, reversed_order)
    assert any((ours[tf] - theirs[tf]).abs().max() > 1e-3 for tf in order), "index positions move with order"


def test_with_the_time_bias_a_shift_of_every_time_changes_nothing(synthetic_small: Path) -> None:
    batch, model = _batch(synthetic_small), _model(PositionBias.TIME)
    ours, theirs = _hidden(model, batch), _hidden(model, _shifted(batch, 3 * HOUR + 17 * 60))
    for tf in ours:
        torch.testing.assert_close(ours[tf], theirs[tf], atol=1e-5, rtol=1e-5)


def test_the_calendar_sees_the_clock_a_week_later_the_same(synthetic_small: Path) -> None:
    batch, model = _batch(synthetic_small), _model(PositionBias.TIME, ["hour_of_week", "minute_of_hour"])
    ours = _hidden(model, batch)
    week_later, hour_later = _hidden(model, _shifted(batch, WEEK)), _hidden(model, _shifted(batch, HOUR))
    window = batch.windows["h1"]
    ends = patch_end_times(window.start_time, window.valid, HOUR, model.config.patch_len)
    calendar = model.embed.calendar
    assert calendar is not None
    with torch.no_grad():
        moved = calendar(ends + HOUR) - calendar(ends)
    assert (moved.abs().amax(-1) > 0).all(), "an hour later changes the calendar input of every token"
    for tf in ours:
        torch.testing.assert_close(ours[tf], week_later[tf], atol=1e-5, rtol=1e-5)
        assert (ours[tf] - hour_later[tf]).abs().max() > 1e-4, tf


def test_per_timeframe_fusion_runs_each_timeframe_alone_with_the_time_bias(synthetic_small: Path) -> None:
    """With ``per_timeframe`` fusion the time bias measures minutes within each timeframe's own sequence:
    each timeframe's output is the joint model's output for a batch holding that timeframe alone (the
    padding to the longest sequence changes nothing), and a shift of every time changes nothing."""
    batch, model = _batch(synthetic_small), _model(PositionBias.TIME)
    joint = _hidden(model, batch)
    model.config.fusion = Fusion.PER_TIMEFRAME
    separate = _hidden(model, batch)
    for tf in batch.windows:
        alone = copy.copy(batch)
        alone.windows = {tf: batch.windows[tf]}
        model.config.fusion = Fusion.JOINT
        expected = _hidden(model, alone)[tf]
        model.config.fusion = Fusion.PER_TIMEFRAME
        torch.testing.assert_close(separate[tf], expected, atol=1e-5, rtol=1e-5)
        assert (separate[tf] - joint[tf]).abs().max() > 1e-4, "joint attention sees the other timeframes"
    shifted = _hidden(model, _shifted(batch, 5 * HOUR))
    for tf in separate:
        torch.testing.assert_close(separate[tf], shifted[tf], atol=1e-5, rtol=1e-5)


def test_a_dropped_timeframe_leaves_the_others_attention_geometry_unchanged() -> None:
    bias = TimeBias(heads=2, timeframes=3, pairwise=True)
    with torch.no_grad():
        for param in bias.parameters():
            param.normal_()
    ends = torch.tensor([[600, 1200, 1800, 3600, 7200, 14400]]) + 1_700_000_000
    timeframe = torch.tensor([[0, 0, 1, 1, 2, 2]])
    full = bias(ends, timeframe)
    kept = torch.tensor([0, 1, 4, 5])  # timeframe 1 dropped
    torch.testing.assert_close(bias(ends[:, kept], timeframe[:, kept]), full[:, :, kept][:, :, :, kept])


def test_time_buckets_are_exact_at_zero_signed_and_monotone_in_distance() -> None:
    minutes = torch.tensor([0, 1, 2, 5, 60, 240, 1440, 10080, LONGEST_MINUTES, 10 * LONGEST_MINUTES])
    ahead, behind = time_bucket(minutes), time_bucket(-minutes)
    assert ahead[0] == behind[0] == 0
    assert (torch.diff(ahead) >= 0).all() and ahead[-1] == TIME_BUCKETS // 2 - 1
    assert (behind[1:] == ahead[1:] + TIME_BUCKETS // 2).all()
    assert len(set(ahead[1:8].tolist())) == 7, "an hour, four hours, a day and a week apart are told apart"


def test_time_aware_training_moves_the_bias_in_every_phase_and_never_t5s_index_bias(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """Frozen, then LoRA, then full, under ZeRO-2 with CPU offload: the time bias and calendar train from
    the first (frozen) phase, T5's unused index bias never moves, and the run resumes as it should."""
    config = tiny_train_config(
        ds_config="ds_configs/zero2_offload.json",
        max_steps=6,
        phases=[
            PhaseConfig(Phase.FROZEN, until_step=2),
            PhaseConfig(Phase.LORA, until_step=4),
            PhaseConfig(Phase.FULL),
        ],
    )
    config.model.position_bias = PositionBias.TIME
    config.model.timeframe_pair_bias = True
    config.model.calendar = ["hour_of_week"]
    torch.manual_seed(0)
    before = Stage1Model(config.model, config.data).state_dict()
    result = train(config, synthetic_small, tmp_path / "run", stop_at_step=2)
    assert result.global_step == 2
    from stage1_ds.export import convert

    convert(tmp_path / "run", tmp_path / "frozen")
    frozen = Stage1Model.from_pretrained(tmp_path / "frozen").state_dict()
    assert not torch.equal(
        frozen["embed.time_bias.distance.weight"], before["embed.time_bias.distance.weight"]
    )
    index_bias = "encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    train(config, synthetic_small, tmp_path / "run")
    convert(tmp_path / "run", tmp_path / "full")
    full = Stage1Model.from_pretrained(tmp_path / "full").state_dict()
    assert torch.equal(full[index_bias], before[index_bias]), "unused, frozen"
    assert not torch.equal(
        full["encoder.encoder.block.1.layer.1.DenseReluDense.wo.weight"],
        frozen["encoder.encoder.block.1.layer.1.DenseReluDense.wo.weight"],
    )
    assert not torch.equal(
        full["embed.calendar.tables.hour_of_week.weight"], before["embed.calendar.tables.hour_of_week.weight"]
    )


def test_earlier_exports_and_configs_still_load_with_the_index_bias(
    trained_export: Path, tmp_path: Path
) -> None:
    """An export written before these keys existed (index bias, no calendar): its config has no
    position_bias, timeframe_pair_bias or calendar, and it loads strictly as the model it was, whatever
    today's defaults (the time bias)."""
    import shutil

    import yaml
    from safetensors.torch import save_file

    from stage1_ds.model.stage1 import ENCODER_PREFIX, EXPORT_WEIGHTS

    older = tmp_path / "older_export"
    shutil.copytree(trained_export, older)
    raw = yaml.safe_load((older / "config.yaml").read_text())
    for key in ("position_bias", "timeframe_pair_bias", "calendar"):
        raw["model"].pop(key)
    (older / "config.yaml").write_text(yaml.safe_dump(raw))
    state = Stage1Model.from_pretrained(trained_export).state_dict()
    index_state = {k: v for k, v in state.items() if not k.startswith("embed.time_bias")}
    save_file(t5.untie(index_state, ENCODER_PREFIX), str(older / EXPORT_WEIGHTS))
    model = Stage1Model.from_pretrained(older)
    assert model.config.position_bias == PositionBias.INDEX and model.embed.time_bias is None
    assert Stage1Model.from_pretrained(trained_export).config.position_bias == PositionBias.TIME


@pytest.mark.parametrize("bad", [["model.position_bias=minutes"], ["model.calendar=[weekday]"]])
def test_time_aware_configs_that_cannot_work_are_named(bad: list[str]) -> None:
    from stage1_ds.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"model\.(position_bias|calendar)"):
        load_config(None, bad)


def test_raw_feature_arrays_cannot_feed_a_model_that_reads_bar_times() -> None:
    from stage1_ds.encoding import encode
    from stage1_ds.errors import ConfigError

    features = {tf: np.zeros((2, 16, 4), dtype=np.float32) for tf in ("m1", "m5", "m15", "m30", "h1", "h4")}
    with pytest.raises(ConfigError, match="reads bar times"):
        encode(_model(PositionBias.TIME), features=features)
    assert encode(_model(PositionBias.INDEX), features=features)["m1_pooled"].shape[0] == 2
