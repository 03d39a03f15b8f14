"""Stage1Model: one shared T5 encoder, masking that cannot leak, shapes, LoRA, pretrained loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Stack

from conftest import encoder_inputs, fresh_process_env, tiny_model_config
from stage1_ds.config import (
    DataConfig,
    EncoderConfig,
    EncoderPreset,
    Fusion,
    LoraConfig,
    MaskingConfig,
    ModelConfig,
    Phase,
)
from stage1_ds.data.batch import Batch
from stage1_ds.data.windows import WindowDataset
from stage1_ds.errors import ConfigError
from stage1_ds.model import t5
from stage1_ds.model.lora import adapter_parameters, is_adapter_key, lora_scaling, merge_lora_state_dict
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model, parameter_report

DATA = DataConfig(window_bars=32, window_bars_per_timeframe={"m5": 24, "h4": 20})


def _batch(folder: Path, data: DataConfig, size: int, masking: MaskingConfig | None = None) -> Batch:
    windows = WindowDataset(folder, "train", data, seed=1)
    return MaskedWindows(windows, masking or MaskingConfig(), patch_len=8, seed=2).batch(np.arange(size) * 37)


def _count_encoders(model: torch.nn.Module) -> int:
    return sum(isinstance(m, T5Stack) for m in model.modules())


@pytest.mark.parametrize("fusion", [Fusion.JOINT, Fusion.PER_TIMEFRAME])
@pytest.mark.parametrize("size", [1, 7])
def test_forward_shapes_and_gradients_with_dropped_timeframes(
    synthetic_small: Path, fusion: Fusion, size: int
) -> None:
    data = DataConfig(
        window_bars=32,
        window_bars_per_timeframe=DATA.window_bars_per_timeframe,
        keep_probability={"m30": 0.5, "h1": 0.0},
    )
    batch = _batch(synthetic_small, data, size, MaskingConfig(modes={"spans": 1.0}))  # every stem sees bars
    model = Stage1Model(tiny_model_config(fusion=fusion), data)
    model.set_phase(Phase.FULL)
    out = model(batch)
    for tf, window in batch.windows.items():
        assert out.reconstruction[tf].shape == window.features.shape
        assert out.reconstruction[tf].isfinite().all()
    assert out.hidden["h4"].shape == (size, 3, 32)  # 20 bars in patches of 8: 3 tokens
    sum(o.sum() for o in out.reconstruction.values()).backward()
    for prefix in ("embed.stems.m1", "embed.time_bias", "encoder.encoder.block.0", "heads.heads.h4"):
        grads = [  # T5's index bias is unused beside the time bias (and frozen in every phase)
            p.grad
            for n, p in model.named_parameters()
            if n.startswith(prefix) and "relative_attention" not in n
        ]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), prefix
    assert _count_encoders(model) == 1


def test_one_encoder_for_every_sampling_and_fusion(synthetic_small: Path) -> None:
    counts = set()
    for fusion in Fusion:
        for timeframes in (["m1"], ["m1", "m5", "m15", "m30", "h1", "h4"]):
            model = Stage1Model(
                tiny_model_config(fusion=fusion), DataConfig(timeframes=timeframes, window_bars=32)
            )
            assert _count_encoders(model) == 1
            counts.add(parameter_report(model)["encoder"]["total"])
    assert len(counts) == 1, "the encoder is the same size whatever the timeframes"


def test_t5_large_preset_counts_the_encoder_once() -> None:
    config = ModelConfig(encoder=EncoderConfig(preset=EncoderPreset.T5_LARGE))
    with torch.device("meta"):
        model = Stage1Model(config, DataConfig())
    report = parameter_report(model)
    # The published t5-large encoder without its 32128 x 1024 token embedding (never used: inputs_embeds).
    assert report["encoder"]["total"] == 334_939_648 - 32128 * 1024
    assert report["all"]["total"] < 1.1 * 334_939_648
    assert _count_encoders(model) == 1


def test_masked_values_do_not_reach_the_encoder(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DATA, 4)
    model = Stage1Model(tiny_model_config(), DATA).eval()
    seen = encoder_inputs(model, batch)
    with torch.no_grad():
        before = model(batch).reconstruction
        for window in batch.windows.values():
            assert window.mask is not None and window.mask.any()
            window.features[window.mask] = torch.randn(int(window.mask.sum()), 4) * 100
        after = model(batch).reconstruction
    again = encoder_inputs(model, batch)
    assert len(seen) == len(again) >= 2 and all(torch.equal(a, b) for a, b in zip(seen, again, strict=True))
    for tf in before:
        assert torch.equal(before[tf], after[tf])


def test_lora_phase_trains_only_adapters_in_the_encoder(synthetic_small: Path) -> None:
    model = Stage1Model(tiny_model_config(), DATA)
    model.set_phase(Phase.LORA, LoraConfig(rank=2, alpha=4, dropout=0.0))
    encoder_trainable = [
        n for n, p in model.named_parameters() if p.requires_grad and n.startswith("encoder.")
    ]
    adapters = adapter_parameters(model)
    assert encoder_trainable and set(encoder_trainable) == adapters
    assert all(is_adapter_key(n) for n in adapters), "peft's layout of adapter keys, which checkpoints keep"
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("embed.", "heads.")))
    report = parameter_report(model)
    assert report["lora"]["trainable"] == report["lora"]["total"] > 0
    assert report["encoder"]["trainable"] == 0
    model.set_phase(Phase.FROZEN)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("encoder."))


def test_merged_state_dict_reproduces_the_lora_model(synthetic_small: Path) -> None:
    batch = _batch(synthetic_small, DATA, 3)
    lora = LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q", "v", "wi"])
    model = Stage1Model(tiny_model_config(), DATA)
    model.add_lora(lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # peft initialises B to zero; make the adapters matter
        expected = model(batch).reconstruction
    merged = merge_lora_state_dict(model.state_dict(), lora_scaling(lora))
    assert not any("lora" in k or "base_layer" in k for k in merged)
    plain = Stage1Model(tiny_model_config(), DATA)
    plain.load_state_dict(merged, strict=True)
    with torch.no_grad():
        got = plain(batch).reconstruction
    for tf in expected:
        torch.testing.assert_close(got[tf], expected[tf], atol=1e-5, rtol=1e-5)
    # The live merge (used at the start of the full phase) agrees with the pure one.
    model.merge_lora()
    assert set(model.state_dict()) == set(merged)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, merged[key], atol=1e-6, rtol=1e-6)


def test_a_lora_target_that_matches_nothing_lists_the_valid_names() -> None:
    model = Stage1Model(tiny_model_config(), DATA)
    with pytest.raises(
        ConfigError, match=r"\['qq'\] match no layer; valid names: \['k', 'o', 'q', 'v', 'wi', 'wo'\]"
    ):
        model.add_lora(LoraConfig(target_modules=["q", "qq"]))


def test_pretrained_tiny_t5_loads_from_a_local_folder(tmp_path: Path) -> None:
    saved = T5EncoderModel(t5.preset_config(EncoderPreset.TINY, dropout=0.0))
    with torch.no_grad():
        saved.encoder.block[1].layer[0].SelfAttention.q.weight.fill_(0.123)
    saved.save_pretrained(tmp_path / "tiny_t5")
    config = tiny_model_config()
    config.encoder.pretrained = str(tmp_path / "tiny_t5")
    model = Stage1Model(config, DATA)
    loaded = model.encoder.encoder.block[1].layer[0].SelfAttention.q.weight
    assert torch.all(loaded == 0.123)
    assert model.encoder.shared.weight.shape[0] == 1, "the token embedding is dropped on load"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "is not a folder"),
        (lambda p: p.mkdir(), "has no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text('{"model_type": "bert"}')), "expected 't5'"),
    ],
)
def test_bad_pretrained_folders_are_clear_errors(tmp_path: Path, setup, message: str) -> None:
    path = tmp_path / "weights"
    setup(path)
    config = tiny_model_config()
    config.encoder.pretrained = str(path)
    with pytest.raises(ConfigError, match=message):
        Stage1Model(config, DATA)


def _saved_tiny_t5(folder: Path) -> T5EncoderModel:
    saved = T5EncoderModel(t5.preset_config(EncoderPreset.TINY, dropout=0.0))
    with torch.no_grad():
        saved.encoder.block[1].layer[0].SelfAttention.q.weight.fill_(0.321)
    saved.save_pretrained(folder)
    return saved


def test_pretrained_t5_loads_by_model_id_from_the_hub_cache_offline(tmp_path: Path) -> None:
    """A model laid out as transformers' cache keeps it (HF_HOME/hub/models--org--name/snapshots/<rev>),
    loaded by its id in a process with HF_HUB_OFFLINE=1: nothing is downloaded."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--stage1-tests--tiny-t5"
    _saved_tiny_t5(repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    script = (
        "from stage1_ds.config import EncoderConfig\n"
        "from stage1_ds.model import t5\n"
        "encoder = t5.build_encoder(EncoderConfig(pretrained='stage1-tests/tiny-t5', dropout=0.0))\n"
        "print(float(encoder.encoder.block[1].layer[0].SelfAttention.q.weight.mean()))\n"
        "t5.build_encoder(EncoderConfig(pretrained='stage1-tests/not-cached'))\n"
    )
    env = {**fresh_process_env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert float(result.stdout.strip().splitlines()[0]) == pytest.approx(0.321, abs=1e-6), result.stderr[
        -2000:
    ]
    assert (
        "'stage1-tests/not-cached' is neither a local folder nor a model in the Hugging Face cache"
        in result.stderr
    )


def test_pretrained_t5_encoder_loads_from_a_prefixed_safetensors_file(tmp_path: Path) -> None:
    """A time-series model built on a T5 encoder keeps its weights under a prefix, beside other weights."""
    saved = _saved_tiny_t5(tmp_path / "plain")
    state = {f"model.{k}": v for k, v in saved.state_dict().items() if k.startswith("encoder.")}
    state["model.head.weight"] = torch.zeros(3, 3)
    save_file(
        {k: v.contiguous() for k, v in state.items() if "embed_tokens" not in k},
        str(tmp_path / "ts.safetensors"),
    )
    config = tiny_model_config()
    config.encoder.pretrained = str(tmp_path / "ts.safetensors")
    config.encoder.pretrained_prefix = "model.encoder."
    model = Stage1Model(config, DATA)
    assert torch.all(model.encoder.encoder.block[1].layer[0].SelfAttention.q.weight == 0.321)
    config.encoder.pretrained_prefix = "model.decoder."
    with pytest.raises(
        ConfigError, match=r"under prefix 'model\.decoder\.' lacks .* set model\.encoder\.pretrained_prefix"
    ):
        Stage1Model(config, DATA)
