"""Shared fixtures: real HistData files from ../shared/data, prepared folders built once per session."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch

from stage1_ds.config import (
    Config,
    DataConfig,
    EncoderConfig,
    EncoderPreset,
    LoraConfig,
    ModelConfig,
    OptimizerConfig,
    Phase,
    PhaseConfig,
    Precision,
    TrainConfig,
)
from stage1_ds.data.ingest import InputFormat
from stage1_ds.data.prepare import PrepareOptions, prepare_files, prepare_synthetic
from stage1_ds.data.synthetic import generate_synthetic_m1

REPO = Path(__file__).resolve().parent.parent
HISTDATA = REPO.parent / "shared" / "data" / "histdata"
EURUSD_2019 = HISTDATA / "HISTDATA_COM_ASCII_EURUSD_M12019.zip"


def load_module(path: Path) -> ModuleType:
    """A script or example of the repository (``REPO``-relative ``path``) imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, REPO / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_process_env() -> dict[str, str]:
    """This environment without the process-group variables this test process set for its own world of one,
    and with the repository importable (for the test workers)."""
    group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in group}
    env["PYTHONPATH"] = str(REPO)
    return env


def deepspeed_command(ranks: int, *args: str) -> list[str]:
    """The real `deepspeed` launcher starting ``ranks`` CPU processes on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = Path(sys.executable).parent / "deepspeed"
    return [str(launcher), "--num_gpus", str(ranks), "--master_port", str(port), *args]


def require_histdata() -> Path:
    if not EURUSD_2019.is_file():
        pytest.skip(
            f"real HistData files not found at {HISTDATA} (they live in ../shared/data beside the repo)"
        )
    return HISTDATA


@pytest.fixture(scope="session")
def eurusd_2019(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EURUSD 2019 prepared with the default options."""
    require_histdata()
    out = tmp_path_factory.mktemp("eurusd2019")
    prepare_files([EURUSD_2019], out)
    return out


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 days of the synthetic market, prepared for windows of up to 32 bars."""
    out = tmp_path_factory.mktemp("synthetic")
    prepare_synthetic(
        out, days=90, seed=7, options=PrepareOptions(window_bars=32, split_fractions=(0.6, 0.2, 0.2))
    )
    return out


@pytest.fixture(scope="session")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 days of another synthetic instrument, OTHER, prepared as `synthetic_small` is (which the
    `trained_export` model was trained on: it never saw OTHER)."""
    root = tmp_path_factory.mktemp("unseen")
    bars = generate_synthetic_m1(90, 11)
    frame = pd.DataFrame({"timestamp": bars.start, **{k: bars.ohlc[:, i] for i, k in enumerate("ohlc")}})
    frame.columns = ["timestamp", "open", "high", "low", "close"]
    frame.to_csv(root / "OTHER.csv", index=False)
    options = PrepareOptions(window_bars=32, split_fractions=(0.6, 0.2, 0.2))
    prepare_files([root / "OTHER.csv"], root / "data", InputFormat.CSV, options=options)
    return root / "data"


@pytest.fixture(scope="session")
def trained_export(synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained 12 steps (frozen to 4, then full) and exported to ``<run>/export``."""
    from stage1_ds.export import convert
    from stage1_ds.train.loop import train

    run = tmp_path_factory.mktemp("eval_run")
    config = tiny_train_config(
        max_steps=12, phases=[PhaseConfig(Phase.FROZEN, until_step=4), PhaseConfig(Phase.FULL)]
    )
    train(config, synthetic_small, run)
    convert(run, run / "export")
    return run / "export"


def tiny_model_config(**overrides: object) -> ModelConfig:
    """The tiny T5 preset without dropout, so outputs are deterministic."""
    config = ModelConfig(encoder=EncoderConfig(preset=EncoderPreset.TINY, dropout=0.0))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_train_config(ds_config: str = "ds_configs/zero2.json", **train: object) -> Config:
    """A tiny model on 16-bar windows with a config that trains in seconds on CPU."""
    config = Config(
        data=DataConfig(window_bars=16),
        model=tiny_model_config(),
        train=TrainConfig(
            max_steps=6,
            micro_batch_size=4,
            precision=Precision.FP32,
            ds_config=ds_config,
            phases=[PhaseConfig(Phase.FULL)],
            optimizer=OptimizerConfig(warmup_steps=0, lr_encoder_top=1e-3),
            log_every_steps=1,
            eval_every_steps=3,
            eval_batches=1,
            save_every_steps=3,
            image_every_steps=3,
        ),
    )
    config.model.lora = LoraConfig(rank=2, alpha=4, dropout=0.0)
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def encoder_inputs(model: torch.nn.Module, batch: object) -> list[torch.Tensor]:
    """Everything the shared encoder's first block receives for a batch (its input states, the attention
    mask and position bias T5 passes it, or the time bias and padding the model passes it)."""
    from stage1_ds.model.lora import base_model

    block = base_model(model.encoder).encoder.block[0]  # type: ignore[attr-defined]
    seen: list[torch.Tensor] = []

    def keep(_: object, args: tuple, kwargs: dict) -> None:
        seen.extend(v.clone() for v in [*args, *kwargs.values()] if isinstance(v, torch.Tensor))

    hook = block.register_forward_pre_hook(keep, with_kwargs=True)
    with torch.no_grad():
        model(batch)
    hook.remove()
    return seen
