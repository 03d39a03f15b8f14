"""The training loop end to end: phases, TensorBoard, checkpoints, resume, kills, bad losses, configs."""

from __future__ import annotations

import gc
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.engine import DeepSpeedEngine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, tiny_train_config
from stage1_ds.config import Config, LossConfig, Phase, PhaseConfig, load_config
from stage1_ds.data.batch import Batch
from stage1_ds.data.sampler import WindowSampler
from stage1_ds.data.windows import WindowDataset
from stage1_ds.errors import CheckpointError, ConfigError
from stage1_ds.model.losses import LossOutput
from stage1_ds.train import loop
from stage1_ds.train.checkpoint import checkpoint_dir, latest_tag, read_meta
from stage1_ds.train.engine import build_ds_config
from stage1_ds.train.schedule import lr_multiplier

STAGED = [
    PhaseConfig(Phase.FROZEN, until_step=3),
    PhaseConfig(Phase.LORA, until_step=6),
    PhaseConfig(Phase.FULL),
]


def _staged(max_steps: int, **train: object) -> Config:
    """Frozen, LoRA, full with dropout in the encoder and the adapters, two micro batches per step, and a
    DataLoader worker: what the t5-large configs do, at the tiny size."""
    config = tiny_train_config(
        max_steps=max_steps,
        phases=[PhaseConfig(p.name, p.until_step) for p in STAGED],
        gradient_accumulation_steps=2,
        **train,
    )
    config.model.encoder.dropout = config.model.lora.dropout = 0.1
    config.data.num_workers = 1
    return config


def _module_state(run_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    states = torch.load(checkpoint_dir(run_dir) / tag / "mp_rank_00_model_states.pt", weights_only=False)
    return states["module"]


@pytest.fixture(scope="module")
def staged_run(synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine steps through frozen, LoRA and full, checkpoints every 3 steps (shared by several tests)."""
    run_dir = tmp_path_factory.mktemp("staged_run")
    result = loop.train(_staged(9, keep_checkpoints=2), synthetic_small, run_dir)
    assert result.global_step == 9
    return run_dir


def test_tensorboard_has_the_curves_users_watch(staged_run: Path) -> None:
    events = EventAccumulator(str(staged_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "loss/total",
        "loss/reconstruction",
        "loss/cross",
        "loss/reconstruction/m1",
        "loss/reconstruction/h4",
        "loss/cross/m5",
        "loss/cross/h4",
        "lr/heads",
        "lr/stems",
        "phase",
        "params/trainable",
        "perf/samples_per_s",
        "perf/tokens_per_s",
        "memory/peak_rss_gb",
        "grad_norm",
        "val/loss/total",
        "val/loss/reconstruction/m15",
        "val/loss/cross",
    }
    assert expected <= tags, expected - tags
    # One run (no second one of DeepSpeed's own monitor), in optimizer steps, from the untrained model on.
    assert [p.name for p in (staged_run / "tensorboard").iterdir() if p.is_dir()] == []
    assert events.Scalars("val/loss/total")[0].step == 0
    assert max(e.step for e in events.Scalars("loss/total")) == 9, "steps, not samples"
    assert {"lr/lora", "lr/encoder_block_00", "lr/encoder_block_01"} <= tags
    phases = [e.value for e in events.Scalars("phase")]
    assert phases[0] == 0 and phases[-1] == 2 and sorted(phases) == phases
    trainable = [e.value for e in events.Scalars("params/trainable")]
    assert trainable[0] < trainable[4] < trainable[-1], "frozen < lora < full"
    assert "val/masked_window" in events.Tags()["images"]
    config = _staged(9)  # the lr a step used: base lr times the schedule at that step
    for event in events.Scalars("lr/heads"):
        multiplier = lr_multiplier(event.step - 1, config.train.optimizer, config.train.phases, 9)
        assert event.value == pytest.approx(config.train.optimizer.lr_heads * multiplier, rel=1e-6)


def test_checkpoints_are_complete_and_pruned(staged_run: Path) -> None:
    assert latest_tag(staged_run) == "step00000009"
    kept = sorted(p.name for p in checkpoint_dir(staged_run).iterdir() if p.is_dir())
    assert kept == ["step00000006", "step00000009"], "keep_checkpoints: 2"
    tag, meta = read_meta(staged_run)
    assert meta["phase"] == "full" and meta["global_step"] == 9 and meta["batches_consumed"] == 18
    assert meta["config"]["train"]["max_steps"] == 9
    assert not any("lora" in k for k in _module_state(staged_run, tag)), "LoRA merged in the full phase"
    assert (staged_run / "config.yaml").is_file()


def test_resume_across_a_phase_boundary_equals_the_uninterrupted_run(
    synthetic_small: Path, staged_run: Path, tmp_path: Path
) -> None:
    """Stop at step 5 (LoRA phase), resume to 9 (full from step 6): the same weights as nine steps at once,
    with dropout (the random state is restored exactly) and a DataLoader worker."""
    stopped = loop.train(_staged(9, keep_checkpoints=2), synthetic_small, tmp_path, stop_at_step=5)
    assert (stopped.global_step, stopped.stopped_by) == (5, "stop_at_step")
    assert read_meta(tmp_path)[1]["phase"] == "lora"
    resumed = loop.train(_staged(9, keep_checkpoints=2), synthetic_small, tmp_path, resume=True)
    assert (resumed.global_step, resumed.stopped_by) == (9, None)
    expected = _module_state(staged_run, "step00000009")
    got = _module_state(tmp_path, "step00000009")
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


def test_the_val_loss_before_training_after_a_resume_is_the_last_one_logged(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """Every evaluation reads the same fixed val batches, the one before training included."""
    config = tiny_train_config(max_steps=6, eval_every_steps=3, eval_batches=3)
    stopped = loop.train(config, synthetic_small, tmp_path, stop_at_step=3)
    resumed = loop.train(
        tiny_train_config(max_steps=6, eval_every_steps=3, eval_batches=3),
        synthetic_small,
        tmp_path,
        resume=True,
    )
    assert resumed.start_val_losses["val/loss/total"] == pytest.approx(
        stopped.val_losses["val/loss/total"], rel=1e-6
    )
    assert stopped.start_val_losses != stopped.val_losses, "training moved it"


def test_resume_refuses_an_architecture_change(
    synthetic_small: Path, staged_run: Path, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(staged_run, tmp_path / "run")
    config = _staged(12)
    config.data.timeframes = ["m1", "m5"]
    with pytest.raises(CheckpointError, match=r"architecture differs.*data\.timeframes"):
        loop.train(config, synthetic_small, tmp_path / "run", resume=True)


def test_a_non_finite_loss_stops_naming_the_step_and_checkpoint(
    synthetic_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_train_config(max_steps=9, max_bad_steps=1)
    windows = WindowDataset(synthetic_small, "train", config.data, seed=config.seed)
    sampler = WindowSampler(len(windows), config.train.micro_batch_size, seed=config.seed)
    poisoned = [sampler.batch_ids(b).tolist() for b in (4, 5)]  # the batches of steps 5 and 6
    real_loss = loop.stage1_loss

    def loss_of(
        predictions: dict[str, torch.Tensor],
        batch: Batch,
        loss_config: LossConfig,
        future_size: torch.Tensor | None = None,
    ) -> LossOutput:
        out = real_loss(predictions, batch, loss_config, future_size)
        if batch.sample_id.tolist() in poisoned:  # as if these windows made the model overflow
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(loop, "stage1_loss", loss_of)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    engines = _live_engines()
    with pytest.raises(
        loop.TrainingError,
        match=r"step 6: the loss or its gradients are not finite .*nan.* last good checkpoint: .*step00000003",
    ):
        loop.train(config, synthetic_small, tmp_path)
    assert {signum: signal.getsignal(signum) for signum in handlers} == handlers, "handlers restored"
    assert _live_engines() == engines, "the engine of the failed run was released"


def _live_engines() -> int:
    gc.collect()
    return sum(isinstance(o, DeepSpeedEngine) for o in gc.get_objects())


@pytest.mark.parametrize("failing", ["deepspeed_files", "latest"])
def test_a_crash_mid_save_leaves_the_last_complete_checkpoint(
    synthetic_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The save of step 4 dies while DeepSpeed writes its files, or just before `latest` would move:
    `latest` still names step 2, which resumes."""
    config = tiny_train_config(max_steps=4, save_every_steps=2)
    real_save, real_replace = torch.save, os.replace

    def save(obj: object, path: object, *args: object, **kwargs: object) -> None:
        if failing == "deepspeed_files" and "step00000004" in str(path):
            raise OSError("disk full")
        real_save(obj, path, *args, **kwargs)  # type: ignore[arg-type]

    def replace(src: object, dst: object) -> None:
        if failing == "latest" and str(dst).endswith("latest") and "4" in Path(str(src)).read_text():
            raise OSError("killed")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match=r"disk full|killed"):
        loop.train(config, synthetic_small, tmp_path)
    assert latest_tag(tmp_path) == "step00000002"
    monkeypatch.undo()
    resumed = loop.train(config, synthetic_small, tmp_path, resume=True)
    assert resumed.global_step == 4 and latest_tag(tmp_path) == "step00000004"


def test_every_shipped_config_validates() -> None:
    shipped = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.name for p in shipped} >= {
        "demo_cpu.yaml",
        "t5_large_lora.yaml",
        "t5_large_nofreeze.yaml",
        "t5_large_staged.yaml",
    }
    for path in shipped:
        config = load_config(path)
        assert path.read_text().startswith("# "), f"{path.name} starts with the command that runs it"
        assert "modes:" in path.read_text() and len(config.model.masking.modes) > 1, f"{path.name}: a mixture"
        build_ds_config(config)


def test_a_config_typo_fails_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        (REPO / "configs" / "demo_cpu.yaml").read_text().replace("micro_batch_size", "micro_bach_size")
    )
    with pytest.raises(ConfigError, match=r"train\.micro_bach_size: unknown key"):
        load_config(path)


def test_a_bf16_run_crosses_every_phase_boundary(synthetic_small: Path, tmp_path: Path) -> None:
    from stage1_ds.config import Precision

    result = loop.train(_staged(8, precision=Precision.BF16), synthetic_small, tmp_path)
    assert result.global_step == 8 and math.isfinite(result.last_losses["loss/total"])
    assert read_meta(tmp_path)[1]["phase"] == "full"
