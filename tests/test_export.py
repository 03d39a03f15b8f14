"""ZeRO checkpoint -> one fp32 model, strict loading without DeepSpeed, evaluation, embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_train_config
from stage1_ds.config import Config, Phase, PhaseConfig, PositionBias, Precision
from stage1_ds.data.batch import Batch
from stage1_ds.data.sampler import WindowSampler
from stage1_ds.data.store import load_prepared, model_stats
from stage1_ds.data.windows import WindowDataset
from stage1_ds.encoding import encode
from stage1_ds.errors import CheckpointError, DataError
from stage1_ds.evaluation.reconstruction import (
    BASELINES,
    evaluate,
    format_report,
    train_mean_predictor,
    write_report,
)
from stage1_ds.export import convert
from stage1_ds.model.baselines import linear_interpolation
from stage1_ds.model.lora import lora_scaling
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model, load_export_config, load_export_stats
from stage1_ds.train.checkpoint import TrainState, checkpoint_dir, save_checkpoint, write_run_files
from stage1_ds.train.engine import build_ds_config, build_engine, init_distributed, release_engine


def _batch(folder: Path, config: Config, offset: int = 0) -> Batch:
    data = MaskedWindows(WindowDataset(folder, "train", config.data), config.model.masking, 8, seed=0)
    return data.batch(np.arange(4) * 41 + offset)


def _train_and_save(
    folder: Path, run_dir: Path, phase: Phase, precision: Precision, ds_config: str, time_aware: bool = False
):
    """Three steps of a real engine in ``phase``, a checkpoint, and the live module kept for comparison;
    ``time_aware``: with the time bias (and the timeframe-pair bias) and calendar inputs."""
    config = tiny_train_config(ds_config=ds_config, precision=precision, phases=[PhaseConfig(phase)])
    if time_aware:
        config.model.position_bias = PositionBias.TIME
        config.model.timeframe_pair_bias = True
        config.model.calendar = ["hour_of_week", "minute_of_hour"]
    init_distributed()
    torch.manual_seed(0)
    model = Stage1Model(config.model, config.data)
    model.set_phase(phase, config.model.lora)
    run_dir.mkdir(parents=True)
    write_run_files(run_dir, model, folder)
    bundle = build_engine(model, config, build_ds_config(config))
    if phase == Phase.LORA:
        with torch.no_grad():  # peft starts B at zero; make the adapters matter before training moves them
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3)
    for i in range(3):
        batch = _batch(folder, config, offset=i)
        loss = stage1_loss(bundle.engine(batch).reconstruction, batch, config.model.loss).total
        bundle.engine.backward(loss)
        bundle.engine.step()
    save_checkpoint(
        bundle.engine, run_dir, TrainState(global_step=3, batches_consumed=3), config, phase.value, 2
    )
    return config, bundle, model


@pytest.mark.parametrize(
    ("phase", "precision", "ds_config", "time_aware"),
    [
        (Phase.FROZEN, Precision.FP32, "ds_configs/zero2.json", False),
        (Phase.LORA, Precision.FP32, "ds_configs/zero2_offload.json", False),
        (Phase.FULL, Precision.FP32, "ds_configs/zero2_offload.json", False),
        (Phase.FULL, Precision.BF16, "ds_configs/zero2.json", False),
        (Phase.LORA, Precision.BF16, "ds_configs/zero2_offload.json", False),
        (Phase.LORA, Precision.FP32, "ds_configs/zero2_offload.json", True),
        (Phase.FULL, Precision.BF16, "ds_configs/zero2.json", True),
    ],
)
def test_export_reproduces_the_live_engine(
    synthetic_small: Path,
    tmp_path: Path,
    phase: Phase,
    precision: Precision,
    ds_config: str,
    time_aware: bool,
) -> None:
    config, bundle, model = _train_and_save(
        synthetic_small, tmp_path / "run", phase, precision, ds_config, time_aware
    )
    batch = _batch(synthetic_small, config, offset=99)
    module = bundle.engine.module.eval()
    with torch.no_grad():
        live = {tf: v.float() for tf, v in module(batch).reconstruction.items()}
    live_raw = {k: v.detach().clone() for k, v in module.state_dict().items()}
    live_state = {k: v.float() for k, v in live_raw.items()}
    release_engine(bundle, model)

    info = convert(tmp_path / "run", tmp_path / "export")
    assert info["phase"] == phase.value and info["global_step"] == 3 and info["dtype"] == "float32"
    exported = Stage1Model.from_pretrained(tmp_path / "export")
    state = exported.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values())
    assert not any("lora" in k for k in state)
    if precision == Precision.BF16:
        exported = exported.to(torch.bfloat16)
        if phase == Phase.FULL:  # the fp32 masters, rounded to bf16, are exactly the live weights
            assert all(torch.equal(v, live_raw[k]) for k, v in exported.state_dict().items())
    with torch.no_grad():
        got = {tf: v.float() for tf, v in exported(batch).reconstruction.items()}
    tolerance = 1e-5 if precision == Precision.FP32 else 5e-2  # bf16: ~3 significant digits per weight
    for tf in live:
        torch.testing.assert_close(got[tf], live[tf], atol=tolerance, rtol=tolerance)
        assert (got[tf] - live[tf]).abs().mean() < tolerance / 10
    if phase == Phase.LORA:  # base + B @ A * alpha / r, from the live module's own tensors
        scaling = lora_scaling(config.model.lora)
        prefix = "encoder.base_model.model.encoder.block.1.layer.0.SelfAttention.v"
        expected = (
            live_state[f"{prefix}.base_layer.weight"]
            + (live_state[f"{prefix}.lora_B.default.weight"] @ live_state[f"{prefix}.lora_A.default.weight"])
            * scaling
        )
        merged = state["encoder.encoder.block.1.layer.0.SelfAttention.v.weight"]
        torch.testing.assert_close(
            merged.to(expected.dtype), expected, atol=1e-2 if precision == Precision.BF16 else 1e-6, rtol=1e-2
        )
        assert not torch.equal(merged, live_state[f"{prefix}.base_layer.weight"])


def test_convert_refuses_to_overwrite_and_names_bad_checkpoints(
    synthetic_small: Path, tmp_path: Path
) -> None:
    _, bundle, model = _train_and_save(
        synthetic_small, tmp_path / "run", Phase.FULL, Precision.FP32, "ds_configs/zero2.json"
    )
    release_engine(bundle, model)
    run = tmp_path / "run"
    convert(run, tmp_path / "export")
    with pytest.raises(CheckpointError, match="already exists; pass --force"):
        convert(run, tmp_path / "export")
    with pytest.raises(
        CheckpointError, match=r"step00000099: no such checkpoint; available tags: \['step00000003'\]"
    ):
        convert(run, tmp_path / "other", tag="step00000099")
    (checkpoint_dir(run) / "step00000005").mkdir()
    with pytest.raises(CheckpointError, match=r"meta\.json: missing"):
        convert(run, tmp_path / "other", tag="step00000005")
    half = checkpoint_dir(run) / "step00000004"
    shutil.copytree(checkpoint_dir(run) / "step00000003", half)
    for shard in half.glob("*optim_states.pt"):
        shard.unlink()
    with pytest.raises(CheckpointError, match="half-written"):
        convert(run, tmp_path / "other", tag="step00000004")
    meta_path = checkpoint_dir(run) / "step00000003" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["model"]["patch_len"] = 4
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit the model its config describes"):
        convert(run, tmp_path / "other")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        convert(empty, tmp_path / "other")


def test_evaluate_reports_every_mode_timeframe_and_baseline(
    synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    model = Stage1Model.from_pretrained(trained_export)
    config = load_export_config(trained_export)
    report = evaluate(model, synthetic_small, config, split="test", batches=3, batch_size=16)
    assert set(report["modes"]) == {"spans", "time", "horizon"}
    for mode, result in report["modes"].items():
        assert set(result["timeframes"]) == {"m1", "m5", "m15", "m30", "h1", "h4"}
        scored = (
            result["timeframes"]
            if mode != "horizon"
            else {tf: result["timeframes"][tf] for tf in ("m1", "m5")}
        )
        for entry in [*scored.values(), result["overall"]]:
            for method in ("model", *BASELINES):
                assert entry[method]["masked_values"] > 0 and entry[method]["mse"] > 0, (mode, method)
            assert entry["ratio_to_best_baseline"] > 0
        for entry in scored.values():
            assert entry["best_baseline_scores"] == entry[entry["best_baseline"]]
        assert result["overall"]["best_baseline"] == "per_timeframe"
        assert 0 < result["masked_share"]["m1"] <= 1
    assert all(share == 0.0 for share in report["modes"]["time"]["recoverable_share"].values())
    direction = report["modes"]["horizon"]["direction"]["m1"]
    assert direction["n"] > 0 and direction["low"] <= direction["accuracy"] <= direction["high"]
    write_report(report, tmp_path / "r.json", tmp_path / "r.png")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert (
        saved["modes"]["time"]["overall"]["model"]["mse"]
        == report["modes"]["time"]["overall"]["model"]["mse"]
    )
    for mode in report["modes"]:
        assert (tmp_path / f"r_{mode}.png").stat().st_size > 0
        assert (tmp_path / f"r_{mode}_example.png").stat().st_size > 0
    text = format_report(report)
    assert "mode horizon" in text and "IN-SAMPLE" not in text
    for mode, result in report["modes"].items():  # one verdict per mode, its word the overall ratio's
        ratio = result["overall"]["ratio_to_best_baseline"]
        word = "better than" if ratio < 1 else "worse than"
        assert f"{mode}: the model is {word} the best baseline overall ({ratio:.3f} of its MSE" in text


def test_a_model_predicting_the_interpolation_scores_ratio_one(
    synthetic_small: Path, trained_export: Path
) -> None:
    report = evaluate(
        linear_interpolation, synthetic_small, load_export_config(trained_export), batches=2, batch_size=16
    )
    scored = [
        entry
        for result in report["modes"].values()
        for entry in [*result["timeframes"].values(), result["overall"]]
        if entry["model"]["masked_values"]  # a timeframe a mode masks nothing of has no ratio
    ]
    assert len(scored) >= 2 * 7, "every timeframe and the overall row of spans and time mode at least"
    for entry in scored:
        assert entry["ratio_to"]["linear_interpolation"] == 1.0
        assert entry["model"]["rmse_bps"] == entry["linear_interpolation"]["rmse_bps"]


def test_the_best_baseline_is_chosen_on_val_and_applied_to_test(
    synthetic_small: Path, trained_export: Path
) -> None:
    config = load_export_config(trained_export)
    val = evaluate(linear_interpolation, synthetic_small, config, split="val", batches=2, batch_size=16)
    test = evaluate(linear_interpolation, synthetic_small, config, split="test", batches=2, batch_size=16)
    assert test["best_baseline_chosen_on"] == "val"
    disagree = 0
    for mode, entry in test["modes"].items():
        for tf, scores in entry["timeframes"].items():
            on_val = min(BASELINES, key=lambda b: val["modes"][mode]["timeframes"][tf][b]["mse"])
            on_test = min(BASELINES, key=lambda b: scores[b]["mse"])
            assert scores["best_baseline"] == on_val, (mode, tf)
            disagree += on_val != on_test
    assert disagree > 0, "val and test disagree somewhere, so this test tells the two choices apart"


def test_the_train_mean_leaves_dropped_timeframes_out(synthetic_small: Path) -> None:
    config = tiny_train_config()
    config.data.keep_probability = {"h1": 0.5}
    predict = train_mean_predictor(synthetic_small, config, batches=4, batch_size=32)
    windows = WindowDataset(synthetic_small, "train", config.data, seed=config.seed)
    kept = []
    for ids in WindowSampler(len(windows), 32, seed=12345, num_batches=4):
        window = windows.batch(np.asarray(ids)).windows["h1"]
        kept.append(window.features[window.valid.any(dim=1)])
    batch = windows.batch(np.arange(2))
    torch.testing.assert_close(predict(batch)["h1"][0], torch.cat(kept).mean(0))


def test_evaluation_scales_with_the_models_statistics(
    synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(synthetic_small, other)
    stats = json.loads((other / "stats.json").read_text())
    stats["instruments"]["SYNTH"]["scale"]["h1"] *= 2
    (other / "stats.json").write_text(json.dumps(stats))
    model_stats_ = load_export_stats(trained_export)
    with pytest.raises(
        DataError, match=r"(?s)instrument SYNTH, h1: the model scales by .* by .*--allow-other-stats"
    ):
        model_stats(model_stats_, load_prepared(other), allow_other=False)
    used = model_stats(model_stats_, load_prepared(other), allow_other=True)
    assert used["instruments"]["SYNTH"]["scale"]["h1"] == model_stats_["instruments"]["SYNTH"]["scale"]["h1"]
    config = load_export_config(trained_export)
    ids = np.arange(4)
    scaled = WindowDataset(other, "test", config.data, stats=used).batch(ids).windows["h1"].features
    expected = WindowDataset(synthetic_small, "test", config.data).batch(ids).windows["h1"].features
    assert torch.equal(scaled, expected), "the model's scale, not the folder's"


def test_encode_gives_pooled_and_token_embeddings(synthetic_small: Path, trained_export: Path) -> None:
    model = Stage1Model.from_pretrained(trained_export)
    arrays = encode(model, synthetic_small, split="val", batch_size=8, max_batches=2)
    assert arrays["m1_pooled"].shape == (16, 32) and arrays["h4_tokens"].shape == (16, 2, 32)
    np.testing.assert_allclose(arrays["m1_pooled"], arrays["m1_tokens"].mean(1), rtol=1e-5, atol=1e-6)
    assert len(set(arrays["sample_id"].tolist())) == 16
    config = load_export_config(trained_export)  # raw arrays carry no bar times: a model of the index bias
    config.model.position_bias, config.model.timeframe_pair_bias = PositionBias.INDEX, False
    index_model = Stage1Model(config.model, config.data).eval()
    raw = {tf: np.random.default_rng(0).normal(size=(5, 16, 4)) for tf in index_model.timeframes}
    from_arrays = encode(index_model, features=raw, batch_size=2)
    assert from_arrays["h1_pooled"].shape == (5, 32) and np.isfinite(from_arrays["h1_pooled"]).all()
