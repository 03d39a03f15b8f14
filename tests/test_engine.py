"""Real DeepSpeed ZeRO-2 engines on CPU: learning, phases of trainability, rebuilds, learning rates."""

from __future__ import annotations

import gc
import math
import resource
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

from conftest import tiny_train_config
from stage1_ds.config import AdamOp, Config, EncoderPreset, Phase, PhaseConfig, PositionBias, Precision
from stage1_ds.data.batch import Batch
from stage1_ds.data.windows import WindowDataset
from stage1_ds.errors import ConfigError
from stage1_ds.model.lora import adapter_parameters, lora_scaling, plain_name
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train.checkpoint import TrainState
from stage1_ds.train.engine import (
    EngineBundle,
    build_ds_config,
    build_engine,
    fp32_masters,
    init_distributed,
    optimizer_group_states,
    optimizer_moments,
    rebuild_engine,
    release_engine,
    set_learning_rates,
)
from stage1_ds.train.loop import train_step
from stage1_ds.train.schedule import lr_multiplier


def _batches(folder: Path, config: Config, count: int) -> list[Batch]:
    windows = WindowDataset(folder, "train", config.data, seed=0)
    data = MaskedWindows(windows, config.model.masking, config.model.patch_len, seed=0)
    size = config.train.micro_batch_size
    return [data.batch(np.arange(size) * 53 + i * 7) for i in range(count)]


def _engine(model: Stage1Model, config: Config, phase: Phase) -> EngineBundle:
    init_distributed()
    model.set_phase(phase, config.model.lora)
    return build_engine(model, config, build_ds_config(config))


def _step(bundle: EngineBundle, batch: Batch, config: Config) -> float:
    out = bundle.engine(batch)
    loss = stage1_loss(out.reconstruction, batch, config.model.loss).total
    bundle.engine.backward(loss)
    bundle.engine.step()
    return loss.item()


def _encoder_state(model: Stage1Model) -> dict[str, torch.Tensor]:
    """Base encoder weights by their names without peft's wrapper (adapters left out)."""
    return {
        plain_name(n): p.detach().clone()
        for n, p in model.named_parameters()
        if n.startswith("encoder.") and n not in adapter_parameters(model)
    }


@pytest.mark.parametrize("ds_config", ["ds_configs/zero2.json", "ds_configs/zero2_offload.json"])
def test_one_rank_zero2_loss_decreases(synthetic_small: Path, ds_config: str) -> None:
    config = tiny_train_config(ds_config=ds_config, max_steps=30)
    config.train.optimizer.lr_heads = config.train.optimizer.lr_stems = 3e-3
    batches = _batches(synthetic_small, config, 4)
    torch.manual_seed(0)
    model = Stage1Model(config.model, config.data)
    bundle = _engine(model, config, Phase.FULL)
    optimizer_name = type(bundle.engine.optimizer.optimizer).__name__
    assert optimizer_name == ("DeepSpeedCPUAdam" if "offload" in ds_config else "FusedAdam")
    losses = [_step(bundle, batches[i % 4], config) for i in range(30)]
    release_engine(bundle, model)
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses


def test_phases_freeze_adapt_and_train_the_encoder(synthetic_small: Path) -> None:
    config = tiny_train_config()
    batches = _batches(synthetic_small, config, 3)
    model = Stage1Model(config.model, config.data)

    before = _encoder_state(model)
    stems_before = model.embed.stems["m1"].weight.detach().clone()
    bundle = _engine(model, config, Phase.FROZEN)
    for batch in batches:
        _step(bundle, batch, config)
    release_engine(bundle, model)
    assert all(torch.equal(before[n], p) for n, p in _encoder_state(model).items()), (
        "frozen: T5 bit-identical"
    )
    assert not torch.equal(stems_before, model.embed.stems["m1"].weight)

    bundle = _engine(model, config, Phase.LORA)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    for batch in batches:
        _step(bundle, batch, config)
    release_engine(bundle, model)
    after_lora = _encoder_state(model)
    assert set(after_lora) == set(before)
    assert all(torch.equal(before[n], p) for n, p in after_lora.items()), "lora: base bit-identical"
    assert any(not torch.equal(lora_before[n], p) for n, p in model.named_parameters() if "lora_B" in n)

    bundle = _engine(model, config, Phase.FULL)
    merged = _encoder_state(model)
    for batch in batches:
        _step(bundle, batch, config)
    release_engine(bundle, model)
    moved = [
        n for n, p in _encoder_state(model).items() if not torch.equal(merged[n], p) and "shared" not in n
    ]
    assert len(moved) > 10, "full: the T5 base weights train"
    assert torch.equal(merged["encoder.shared.weight"], model.encoder.shared.weight), (
        "token embedding never trains"
    )


def test_engine_rebuilds_release_everything(synthetic_small: Path) -> None:
    config = tiny_train_config()
    config.model.encoder.preset = EncoderPreset.MINI  # large enough for a leaked optimizer to show in RSS
    batch = _batches(synthetic_small, config, 1)[0]
    model = Stage1Model(config.model, config.data)
    rss, engines = [], []
    for i in range(6):
        bundle = _engine(model, config, Phase.FULL if i % 2 else Phase.LORA)
        _step(bundle, batch, config)
        engines.append(weakref.ref(bundle.engine))
        release_engine(bundle, model)
        gc.collect()
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    assert all(ref() is None for ref in engines), "a released engine is still reachable"
    assert rss[-1] - rss[1] < 40, f"peak RSS grew over rebuilds: {rss} MB"


def test_group_lrs_follow_the_schedule_and_layer_decay(synthetic_small: Path) -> None:
    config = tiny_train_config(max_steps=20)
    config.model.position_bias = PositionBias.INDEX  # T5's shared index bias, trained at the top lr
    opt = config.train.optimizer
    opt.warmup_steps, opt.weight_decay, opt.layer_decay = 4, 0.0, 0.5
    opt.lr_heads, opt.lr_stems, opt.lr_encoder_top = 2e-3, 1e-3, 4e-4
    batches = _batches(synthetic_small, config, 2)
    model = Stage1Model(config.model, config.data)
    bundle = _engine(model, config, Phase.FULL)
    groups = {g.name: g for g in bundle.groups}
    assert groups["encoder_block_01"].lr == pytest.approx(4e-4)  # the top of two blocks
    assert groups["encoder_block_00"].lr == pytest.approx(2e-4)
    assert groups["heads"].lr == pytest.approx(2e-3) and groups["stems"].lr == pytest.approx(1e-3)
    assert groups["heads/no_decay"].weight_decay == 0.0
    # T5's relative position bias sits in block 0 but every block uses it: the top lr, not block 0's.
    bias = "encoder.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert bias in groups["encoder_other/no_decay"].names and groups["encoder_other/no_decay"].lr == 4e-4

    # The first Adam update of every weight is lr * g / (|g| + eps): about lr in size, where g is not tiny.
    names = {id(p): n for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first_lr = lr_multiplier(0, opt, config.train.phases, config.train.max_steps)
    set_learning_rates(bundle, first_lr)
    _step(bundle, batches[0], config)
    for group in bundle.groups:
        steps = [(p.detach() - before[names[id(p)]]).abs().max().item() for p in group.params]
        assert max(steps) == pytest.approx(group.lr * first_lr, rel=1e-3), group.name
    release_engine(bundle, model)


def test_ds_config_refuses_keys_the_project_owns(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        '{"zero_optimization": {"stage": 2}, "train_batch_size": 64, "optimizer": {"params": {"lr": 1}}}'
    )
    config = tiny_train_config(ds_config=str(path))
    with pytest.raises(ConfigError, match=r"sets \['train_batch_size', 'optimizer.params.lr'\]"):
        build_ds_config(config)
    merged = build_ds_config(tiny_train_config(gradient_accumulation_steps=3))
    assert merged["gradient_accumulation_steps"] == 3 and merged["train_micro_batch_size_per_gpu"] == 4
    assert merged["bf16"] == {"enabled": False} and merged["zero_optimization"]["stage"] == 2
    assert not merged.get("tensorboard", {}).get("enabled", False), "DeepSpeed's own monitor stays off"
    path.write_text('{"zero_optimization": {"stage": 2}, "tensorboard": {"enabled": true}}')
    with pytest.raises(ConfigError, match=r"sets \['tensorboard'\]"):
        build_ds_config(config)


def test_phase_list_rewarmup_in_schedule() -> None:
    config = tiny_train_config(max_steps=100)
    config.train.phases = [
        PhaseConfig(Phase.FROZEN, until_step=50),
        PhaseConfig(Phase.FULL, rewarmup_steps=10),
    ]
    opt = config.train.optimizer
    without = lr_multiplier(50, opt, [PhaseConfig(Phase.FROZEN, until_step=50), PhaseConfig(Phase.FULL)], 100)
    assert lr_multiplier(50, opt, config.train.phases, 100) == pytest.approx(without / 10)
    assert lr_multiplier(60, opt, config.train.phases, 100) == pytest.approx(
        lr_multiplier(60, opt, [PhaseConfig(Phase.FROZEN, until_step=50), PhaseConfig(Phase.FULL)], 100)
    )


@pytest.mark.parametrize("adam_op", [AdamOp.AUTO, AdamOp.TORCH])
def test_bf16_phase_rebuilds_keep_the_fp32_master_weights(synthetic_small: Path, adam_op: AdamOp) -> None:
    from stage1_ds.train.engine import restore_fp32_masters

    config = tiny_train_config(precision=Precision.BF16, adam_op=adam_op)
    batches = _batches(synthetic_small, config, 3)
    model = Stage1Model(config.model, config.data)
    bundle = _engine(model, config, Phase.FROZEN)
    for batch in batches:
        _step(bundle, batch, config)
    masters = fp32_masters(model)
    stem = masters["embed.stems.m1.weight"]
    assert not torch.equal(stem, stem.bfloat16().float()), "the masters hold more than bf16 precision"
    release_engine(bundle, model)
    bundle = _engine(model, config, Phase.LORA)
    rebuilt = safe_get_full_fp32_param(model.embed.stems["m1"].weight)
    assert torch.equal(rebuilt.cpu(), stem.bfloat16().float()), "a new engine starts from the bf16 weights"
    assert restore_fp32_masters(model, masters) == len(
        [p for p in model.parameters() if p.requires_grad]
    ) - len(adapter_parameters(model))
    assert torch.equal(safe_get_full_fp32_param(model.embed.stems["m1"].weight).cpu(), stem)
    release_engine(bundle, model)


def _adam_state(model: Stage1Model, bundle: EngineBundle) -> dict[str, torch.Tensor]:
    """Weights, fp32 masters, Adam moments and step counts, by name."""
    state = {f"weight:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state.update({f"master:{n}": v for n, v in fp32_masters(model).items()})
    for name, (exp_avg, exp_avg_sq) in optimizer_moments(model, bundle).items():
        state[f"exp_avg:{name}"], state[f"exp_avg_sq:{name}"] = exp_avg, exp_avg_sq
    for group, saved in optimizer_group_states(bundle).items():
        state[f"step:{group}"] = torch.tensor(float(saved.state["step"]))
    return state


@pytest.mark.parametrize("ds_config", ["ds_configs/zero2.json", "ds_configs/zero2_offload.json"])
def test_a_step_with_a_non_finite_loss_changes_nothing(synthetic_small: Path, ds_config: str) -> None:
    config = tiny_train_config(ds_config=ds_config, gradient_accumulation_steps=2)
    good = _batches(synthetic_small, config, 6)
    corrupt = _batches(synthetic_small, config, 1)[0]
    corrupt.windows["h1"].features[corrupt.windows["h1"].mask] = float("nan")  # a bad target
    model = Stage1Model(config.model, config.data)
    bundle = _engine(model, config, Phase.FULL)
    state = TrainState()
    for i in range(2):
        train_step(bundle.engine, iter(good[2 * i : 2 * i + 2]), config, torch.device("cpu"), state)
        assert bundle.engine.was_step_applied()
    before = _adam_state(model, bundle)
    assert any(k.startswith("exp_avg:") for k in before) and before["step:heads"] == 2
    losses, bad = train_step(bundle.engine, iter([good[4], corrupt]), config, torch.device("cpu"), state)
    assert not bundle.engine.was_step_applied() and len(bad) == 1 and math.isnan(bad[0])
    assert losses["loss/total"] > 0, "the finite micro batch is still reported"
    after = _adam_state(model, bundle)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"a skipped step moved {changed[:5]}"
    train_step(bundle.engine, iter(good[4:6]), config, torch.device("cpu"), state)
    assert bundle.engine.was_step_applied(), "the next good step is applied"
    release_engine(bundle, model)


@pytest.mark.parametrize("adam_op", [AdamOp.AUTO, AdamOp.TORCH])
def test_continuing_groups_keep_their_adam_state_across_a_phase_boundary(
    synthetic_small: Path, adam_op: AdamOp
) -> None:
    config = tiny_train_config(adam_op=adam_op)
    batches = _batches(synthetic_small, config, 4)
    model = Stage1Model(config.model, config.data)
    ds_config = build_ds_config(config)
    bundle = _engine(model, config, Phase.FROZEN)
    assert isinstance(bundle.engine.optimizer.optimizer, torch.optim.AdamW) == (adam_op == AdamOp.TORCH)
    for batch in batches[:3]:
        _step(bundle, batch, config)
    frozen = optimizer_group_states(bundle)
    bundle, continuing = rebuild_engine(bundle, model, config, ds_config, Phase.LORA)
    assert set(continuing) == {"stems", "stems/no_decay", "heads", "heads/no_decay"}
    carried = optimizer_group_states(bundle)
    assert set(carried) == set(continuing), "the LoRA group has no state before its first step"
    for name in continuing:
        assert carried[name].state["step"] == 3
        assert torch.equal(carried[name].state["exp_avg"], frozen[name].state["exp_avg"])
    _step(bundle, batches[3], config)
    after = optimizer_group_states(bundle)
    assert after["stems"].state["step"] == 4 and after["lora"].state["step"] == 1
    release_engine(bundle, model)


def test_bf16_lora_to_full_boundary_folds_the_update_in_fp32(synthetic_small: Path) -> None:
    config = tiny_train_config(precision=Precision.BF16)
    scaling = lora_scaling(config.model.lora)
    batches = _batches(synthetic_small, config, 2)
    model = Stage1Model(config.model, config.data)
    ds_config = build_ds_config(config)
    bundle = _engine(model, config, Phase.LORA)
    with torch.no_grad():  # peft starts B at zero; a small update, as after real training
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1e-3)
        for param in model.parameters():
            if param.requires_grad:
                safe_set_full_fp32_param(param, param.detach().float())
    for batch in batches:
        _step(bundle, batch, config)
    masters = fp32_masters(model)
    prefix = "encoder.encoder.block.1.layer.0.SelfAttention.v"
    a, b = masters[f"{prefix}.lora_A.default.weight"], masters[f"{prefix}.lora_B.default.weight"]
    base = dict(model.named_parameters())[f"encoder.base_model.model.{prefix[8:]}.base_layer.weight"]
    expected = base.detach().float() + (b.double() @ a.double()).float() * scaling
    bundle, _ = rebuild_engine(bundle, model, config, ds_config, Phase.FULL)
    weight = dict(model.named_parameters())[f"{prefix}.weight"]
    merged = safe_get_full_fp32_param(weight).cpu()
    torch.testing.assert_close(merged, expected, atol=1e-7, rtol=1e-6)
    update = expected - base.detach().float()
    kept = ((merged - base.detach().float()) - update).abs() <= 1e-3 * update.abs()
    assert kept.float().mean() > 0.99, "the LoRA update survives the merge (peft's bf16 merge loses most)"
    assert torch.equal(weight.detach(), merged.to(torch.bfloat16)), "the module holds the rounded master"
    release_engine(bundle, model)


def test_zero3_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "zero3.json"
    path.write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError, match=r"zero3\.json sets zero_optimization\.stage 3, expected 2"):
        build_ds_config(tiny_train_config(ds_config=str(path)), None)
