"""DeepSpeed engines: the merged config, the distributed environment, building and fully releasing engines.

ZeRO-2 fixes the trainable set when an engine is built, so every phase of trainability gets its own
engine. Releasing one completely (so memory stays flat over rebuilds) takes more than ``destroy()``: the
engine stays reachable through the forward hooks it put on the module and through attributes ZeRO sets on
each parameter; `release_engine` removes both.
"""

from __future__ import annotations

import gc
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
from torch import nn

from stage1_ds.config import Config, Precision, resolve_path
from stage1_ds.errors import ConfigError
from stage1_ds.model import t5
from stage1_ds.model.lora import plain_name
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train.param_groups import ParamGroup, build_param_groups
from stage1_ds.train.schedule import lr_multiplier

#: Keys the project's config owns; a DeepSpeed JSON that sets any of them is refused.
PROJECT_OWNED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16",
    "fp16",
    "tensorboard",
    "scheduler",
)
PROJECT_OWNED_OPTIMIZER_PARAMS = ("lr", "weight_decay")

#: Attributes ZeRO-2 sets on each parameter; each keeps the optimizer (and so the engine) alive.
_ZERO_PARAM_ATTRIBUTES = (
    "_zero_optimizer",
    "_hp_mapping",
    "get_full_hp_param",
    "get_full_hp_grad",
    "set_full_hp_param",
    "set_full_hp_grad",
    "load_hp_checkpoint_state",
)


def use_bf16(precision: Precision) -> bool:
    """bf16 when asked, or on ``auto`` when the accelerator is a GPU that supports it (fp32 on CPU)."""
    if precision == Precision.BF16:
        return True
    if precision == Precision.FP32:
        return False
    accelerator = get_accelerator()
    return accelerator.device_name() != "cpu" and accelerator.is_bf16_supported()


def build_ds_config(config: Config, tensorboard_dir: Path | None) -> dict[str, Any]:
    """The DeepSpeed JSON named by ``train.ds_config``, plus batch sizes, accumulation, clipping, precision
    and the TensorBoard path from the project's config.

    Raises:
        ConfigError: the JSON is missing, unreadable, or sets a key the project's config owns.
    """
    path = resolve_path(config.train.ds_config)
    if not path.is_file():
        raise ConfigError(f"train.ds_config: {path} not found (expected e.g. ds_configs/zero2.json)")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"train.ds_config: {path}: not valid JSON: {error}") from None
    owned = [key for key in PROJECT_OWNED_KEYS if key in ds]
    owned += [
        f"optimizer.params.{k}"
        for k in PROJECT_OWNED_OPTIMIZER_PARAMS
        if k in ds.get("optimizer", {}).get("params", {})
    ]
    if owned:
        raise ConfigError(
            f"train.ds_config: {path} sets {owned}; these come from the project config "
            "(train.micro_batch_size, train.gradient_accumulation_steps, train.gradient_clipping, "
            "train.precision, train.optimizer.*), so remove them from the JSON"
        )
    train = config.train
    ds["train_micro_batch_size_per_gpu"] = train.micro_batch_size
    ds["gradient_accumulation_steps"] = train.gradient_accumulation_steps
    ds["gradient_clipping"] = train.gradient_clipping
    ds["bf16"] = {"enabled": use_bf16(train.precision)}
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    ds["optimizer"].setdefault("params", {})
    ds["optimizer"]["params"]["lr"] = train.optimizer.lr_heads  # a default; every group sets its own
    ds["optimizer"]["params"]["weight_decay"] = train.optimizer.weight_decay
    if tensorboard_dir is not None:
        ds["tensorboard"] = {"enabled": True, "output_path": str(tensorboard_dir), "job_name": "deepspeed"}
    return ds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed() -> tuple[int, int]:
    """Join (or, for a plain ``python`` run, create) the process group; return (rank, world size).

    Launchers (deepspeed, torchrun, SLURM via the launch scripts) set RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT; a single process without them gets a world of one on a free local port
    (without them DeepSpeed would try MPI discovery and fail).
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if get_accelerator().device_name() != "cpu":
        get_accelerator().set_device(int(os.environ["LOCAL_RANK"]))  # before NCCL binds to a device
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def device() -> torch.device:
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return torch.device("cpu")
    return torch.device(accelerator.device_name(int(os.environ.get("LOCAL_RANK", "0"))))


@dataclass
class EngineBundle:
    """An engine with what was built alongside it."""

    engine: Any
    groups: list[ParamGroup]


def build_engine(
    model: Stage1Model, config: Config, ds_config: dict[str, Any], first_step: int
) -> EngineBundle:
    """A DeepSpeed engine over the model's current trainable set (call ``model.set_phase`` first).

    Every named group goes to DeepSpeed's optimizer as its own param group with its own lr; a client
    LambdaLR multiplies every group's base lr by `lr_multiplier` of the global step, so the ratios between
    groups hold at every step. ``first_step`` is the global step of the engine's first optimizer step.
    """
    groups = build_param_groups(model, config.train.optimizer, t5.num_blocks(model.encoder))
    train = config.train

    def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda k: lr_multiplier(first_step + k, train.optimizer, train.phases, train.max_steps),
        )

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[g.to_optimizer_group() for g in groups],
        config=ds_config,
        lr_scheduler=scheduler,
    )
    return EngineBundle(engine=engine, groups=groups)


def fp32_masters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The optimizer's fp32 master weights of every trainable parameter, by name without peft's wrapper.

    In bf16 runs the module holds bf16 copies; a new engine would rebuild its masters from those, rounding
    every weight once per phase boundary. Collective under ZeRO: every rank calls it.
    """
    masters = {}
    for name, param in model.named_parameters():
        value = safe_get_full_fp32_param(param)
        if value is not None:
            masters[plain_name(name)] = value.detach().cpu()
    return masters


def restore_fp32_masters(model: nn.Module, masters: dict[str, torch.Tensor]) -> int:
    """Put saved fp32 masters into a new engine for the parameters it trains that kept their shape; returns
    how many were restored. Collective under ZeRO: every rank calls it."""
    restored = 0
    for name, param in model.named_parameters():
        value = masters.get(plain_name(name))
        if value is not None and param.requires_grad and value.shape == param.shape:
            safe_set_full_fp32_param(param, value.to(param.device))
            restored += 1
    return restored


def release_engine(bundle: EngineBundle, model: nn.Module) -> None:
    """Release an engine completely so that a new one can be built on the same module, memory flat."""
    engine = bundle.engine
    engine.destroy()
    for handle in (engine.module_forward_pre_hook, engine.module_forward_post_hook):
        if handle is not None:
            handle.remove()
    for param in model.parameters():
        for attribute in _ZERO_PARAM_ATTRIBUTES:
            if attribute in param.__dict__:
                delattr(param, attribute)
        param.grad = None
    bundle.engine = None
    bundle.groups = []
    gc.collect()
