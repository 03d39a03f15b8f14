"""The typed config: YAML, dotted overrides, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from stage1_ds.config import Config, DataConfig, LossConfig, config_to_dict, load_config
from stage1_ds.errors import ConfigError


def test_defaults_validate() -> None:
    config = load_config()
    assert config.data.timeframes == ["m1", "m5", "m15", "m30", "h1", "h4"]
    assert config.data.bars("h4") == 128


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  window_bars: 64\n")
    config = load_config(path, ["data.timeframes=[m1, h1]", "data.keep_probability.h1=0.5", "seed=3"])
    assert config.data.window_bars == 64 and config.data.timeframes == ["m1", "h1"]
    assert config.data.keep("h1") == 0.5 and config.seed == 3
    assert config_to_dict(config)["data"]["window_bars"] == 64


def test_every_problem_is_reported_together_with_choices(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "data:\n  windw_bars: 64\n  timeframes: [m1, m7]\n  keep_probability: {h1: 1.5}\n"
        "  instrument_sampling: even\n  instrument_temperature: 0\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "data.windw_bars: unknown key" in message and "window_bars" in message
    assert "data.timeframes: unknown ['m7']" in message and "h4" in message
    assert "data.keep_probability.h1" in message
    assert "data.instrument_sampling" in message and "temperature" in message


def test_wrong_types_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.window_bars: expected an integer, got 'many'"):
        load_config(None, ["data.window_bars=many"])
    with pytest.raises(ConfigError, match=r"expected key\.sub=value"):
        load_config(None, ["seed"])


def test_a_config_built_in_code_is_validated_before_training(tmp_path: Path) -> None:
    from stage1_ds.train.loop import train

    config = Config(data=DataConfig(window_bars=0, keep_probability={"h1": 1.5}))
    with pytest.raises(ConfigError) as info:
        train(config, tmp_path / "no_data_needed", tmp_path / "run")
    assert "data.window_bars: 0" in str(info.value) and "data.keep_probability.h1: 1.5" in str(info.value)
    assert not (tmp_path / "run").exists(), "nothing is started for an invalid config"


def test_timeframe_weights_must_name_timeframes_the_model_sees() -> None:
    with pytest.raises(ConfigError, match=r"model\.loss\.timeframe_weights\.h4: not one of data\.timeframes"):
        load_config(None, ["data.timeframes=[m1, h1]", "model.loss.timeframe_weights.h4=2.0"])
    config = load_config(None, ["data.timeframes=[m1, h1]", "model.loss.timeframe_weights.h1=2.0"])
    config.model.loss.timeframe_weights["m5"] = 1.0  # changed in code after loading
    with pytest.raises(ConfigError, match=r"timeframe_weights\.m5"):
        config.validate()


def test_a_snapshot_with_a_renamed_key_still_loads(tmp_path: Path) -> None:
    # configs saved in checkpoints and exports before `model.encoder.pretrained_path` became `pretrained`
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  encoder:\n    pretrained_path: weights/t5\n    preset: tiny\n")
    config = load_config(path)
    assert config.model.encoder.pretrained == "weights/t5" and config.model.encoder.preset == "tiny"
    both = ["model.encoder.pretrained_path=a", "model.encoder.pretrained=b"]
    with pytest.raises(ConfigError, match=r"pretrained_path is the old name of model\.encoder\.pretrained"):
        load_config(None, both)


def test_the_instrument_temperature_must_be_above_zero() -> None:
    assert DataConfig(instrument_temperature=0).check("data") == [
        "data.instrument_temperature: 0, expected a number above 0"
    ]


def test_the_range_weight_is_off_by_default_and_must_not_be_negative() -> None:
    assert LossConfig().range_weight == 0.0
    assert LossConfig(range_weight=-0.5).check("model.loss") == [
        "model.loss.range_weight: -0.5, expected >= 0"
    ]
