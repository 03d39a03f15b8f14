"""DeepSpeed engines: the merged config, the distributed environment, building, rebuilding and fully
releasing engines, and the universal checkpoints that let a run change its number of ranks.

ZeRO-2 fixes the trainable set when an engine is built, so every phase of trainability gets its own
engine. Releasing one completely (so memory stays flat over rebuilds) takes more than ``destroy()``: the
engine stays reachable through the forward hooks it put on the module and through attributes ZeRO sets on
each parameter; `release_engine` removes both. `rebuild_engine` carries across a phase boundary what is
still valid: the fp32 master weights of bf16 runs (LoRA folded into the merged weights in fp32) and Adam's
moments and step count of every parameter group that trains on both sides.
"""

from __future__ import annotations

import argparse
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
from deepspeed.checkpoint import ds_to_universal
from deepspeed.utils import (
    lazy_init_hp_params_optimizer_state,
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
)
from torch import nn

from stage1_ds.config import Config, Phase, Precision, resolve_path
from stage1_ds.errors import ConfigError
from stage1_ds.model import t5
from stage1_ds.model.lora import has_lora, lora_scaling, merge_lora_state_dict, plain_name
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train.ops import AdamChoice, choose_adam
from stage1_ds.train.param_groups import ParamGroup, build_param_groups

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
#: The ZeRO stage this project is built for: the rank-0-only image forward, `release_engine` and the
#: master/moment carry-over across phases assume unpartitioned module weights.
ZERO_STAGE = 2

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


def is_offloaded(ds: dict[str, Any]) -> bool:
    """Whether a DeepSpeed config offloads the optimizer (and so uses ``cpu_adam``)."""
    return "offload_optimizer" in ds.get("zero_optimization", {})


def read_ds_json(config: Config) -> dict[str, Any]:
    """The DeepSpeed JSON named by ``train.ds_config``, as written.

    Raises:
        ConfigError: the JSON is missing or unreadable.
    """
    path = resolve_path(config.train.ds_config)
    if not path.is_file():
        raise ConfigError(f"train.ds_config: {path} not found (expected e.g. ds_configs/zero2.json)")
    try:
        return dict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ConfigError(f"train.ds_config: {path}: not valid JSON: {error}") from None


def build_ds_config(config: Config, adam: AdamChoice | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON named by ``train.ds_config``, plus batch sizes, accumulation, clipping, precision
    and the Adam implementation (``adam``; None: `choose_adam` of ``train.adam_op``) from the project's
    config. DeepSpeed's own TensorBoard monitor stays off: the project's writer logs every curve a user
    watches in optimizer steps (`stage1_ds.train.metrics`), where DeepSpeed's would add a second run of
    group 0's lr counted in samples.

    Raises:
        ConfigError: the JSON is missing, unreadable, or sets a key the project's config owns.
    """
    path = resolve_path(config.train.ds_config)
    ds = read_ds_json(config)
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
    stage = ds.get("zero_optimization", {}).get("stage")
    if stage != ZERO_STAGE:
        raise ConfigError(
            f"train.ds_config: {path} sets zero_optimization.stage {stage}, expected {ZERO_STAGE} "
            "(this project trains with ZeRO-2: optimizer state and gradients partitioned, weights whole)"
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
    adam = adam or choose_adam(train.adam_op, is_offloaded(ds))
    if adam.torch_adam:  # ZeRO builds torch.optim.AdamW: no op to compile
        ds["optimizer"]["params"]["torch_adam"] = True
        if is_offloaded(ds):  # else ZeRO-Offload insists on DeepSpeed's cpu_adam
            ds["zero_force_ds_cpu_optimizer"] = False
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


def build_engine(model: Stage1Model, config: Config, ds_config: dict[str, Any]) -> EngineBundle:
    """A DeepSpeed engine over the model's current trainable set (call ``model.set_phase`` first).

    Every named group goes to DeepSpeed's optimizer as its own param group with its own base lr; before
    each step the loop sets every group's lr to base x the schedule's multiplier of the global step
    (`set_learning_rates`), so the ratios between groups hold and a skipped step cannot shift the schedule.
    """
    groups = build_param_groups(model, config.train.optimizer, t5.num_blocks(model.encoder))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[g.to_optimizer_group() for g in groups], config=ds_config
    )
    return EngineBundle(engine=engine, groups=groups)


def set_learning_rates(bundle: EngineBundle, factor: float) -> None:
    """Every group's lr to its base lr times ``factor`` (the schedule's multiplier of the coming step)."""
    base = {group.name: group.lr for group in bundle.groups}
    for live in bundle.engine.optimizer.param_groups:
        live["lr"] = base[live["name"]] * factor


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
    """Put saved fp32 masters into a new engine for the parameters it trains that kept their shape, and
    their rounding into the module's own (bf16) copy, which the next forward uses; returns how many were
    restored. Collective under ZeRO: every rank calls it."""
    restored = 0
    for name, param in model.named_parameters():
        value = masters.get(plain_name(name))
        if value is not None and param.requires_grad and value.shape == param.shape:
            safe_set_full_fp32_param(param, value.to(param.device))
            with torch.no_grad():
                param.copy_(value.to(device=param.device, dtype=param.dtype))
            restored += 1
    return restored


def fold_adapter_masters(
    model: Stage1Model, masters: dict[str, torch.Tensor], scaling: float
) -> dict[str, torch.Tensor]:
    """The fp32 masters a LoRA -> full boundary should start from: each adapted weight becomes
    ``fp32(W) + B @ A * scaling`` with A and B from their fp32 masters (W is frozen in the LoRA phase, so its
    fp32 value is its module value). peft's own merge works in the module's dtype; in bf16 most of a
    small update ``B @ A`` would round away."""
    state = {name: param.detach().float().cpu() for name, param in model.named_parameters()}
    state.update({name: masters[plain_name(name)] for name in state if plain_name(name) in masters})
    return merge_lora_state_dict(state, scaling)


@dataclass
class GroupState:
    """Adam's state of one named parameter group on this rank (its ZeRO partition): ``step``, ``exp_avg``,
    ``exp_avg_sq``, and the names of the group's parameters it belongs to."""

    names: list[str]
    state: dict[str, Any]


def optimizer_group_states(bundle: EngineBundle) -> dict[str, GroupState]:
    """This rank's Adam state of every group that has taken a step, by group name."""
    zero = bundle.engine.optimizer
    states = {}
    for group, partition in zip(bundle.groups, zero.single_partition_of_fp32_groups, strict=True):
        state = zero.optimizer.state.get(partition)
        if state:
            states[group.name] = GroupState(list(group.names), dict(state))
    return states


def restore_group_states(bundle: EngineBundle, states: dict[str, GroupState]) -> list[str]:
    """Give a new engine the Adam state of every group that trains the same parameters as before (same
    name, same parameters, same partition); returns the names of the groups that continue."""
    zero = bundle.engine.optimizer
    carried = []
    for group, partition in zip(bundle.groups, zero.single_partition_of_fp32_groups, strict=True):
        old = states.get(group.name)
        if old is None or old.names != group.names or old.state["exp_avg"].shape != partition.shape:
            continue
        zero.optimizer.state[partition] = dict(old.state)
        carried.append(group.name)
    return carried


def optimizer_moments(model: nn.Module, bundle: EngineBundle) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Adam's (exp_avg, exp_avg_sq) of every trainable parameter that has them, whole, by plain name.
    Collective under ZeRO: every rank calls it."""
    zero = bundle.engine.optimizer
    stepped: set[int] = set()  # parameters of groups that have Adam state: the same set on every rank
    for i, partition in enumerate(zero.single_partition_of_fp32_groups):
        if zero.optimizer.state.get(partition):
            # DeepSpeed links parameters to their optimizer state once, after the first group's first step,
            # when later groups have no state yet; linking again sees every group's.
            lazy_init_hp_params_optimizer_state(zero.bit16_groups[i], partition, zero.optimizer.state)
            stepped.update(id(p) for p in zero.bit16_groups[i])
    return {
        plain_name(name): (
            safe_get_full_optimizer_state(param, "exp_avg").detach().cpu(),
            safe_get_full_optimizer_state(param, "exp_avg_sq").detach().cpu(),
        )
        for name, param in model.named_parameters()
        if id(param) in stepped
    }


def rebuild_engine(
    bundle: EngineBundle, model: Stage1Model, config: Config, ds_config: dict[str, Any], phase: Phase
) -> tuple[EngineBundle, list[str]]:
    """Release ``bundle`` and build the engine of ``phase`` on the same module (LoRA added or merged).

    Carried over: in bf16 runs the fp32 masters of every weight that trains on both sides (a LoRA -> full
    boundary folds the adapters into the merged weights in fp32, `fold_adapter_masters`); in every run the
    Adam moments and step count of each group that trains the same parameters on both sides (stems and
    heads). Groups that are new (LoRA adapters, the T5 blocks when they unfreeze) start with fresh Adam
    state, which is why phases after the first re-warm their learning rates by default.

    Returns:
        The new bundle and the names of the groups whose Adam state continues.
    """
    masters = fp32_masters(model) if ds_config["bf16"]["enabled"] else {}
    if masters and phase == Phase.FULL and has_lora(model.encoder):
        masters = fold_adapter_masters(model, masters, lora_scaling(config.model.lora))
    states = optimizer_group_states(bundle)
    release_engine(bundle, model)
    model.set_phase(phase, config.model.lora)
    bundle = build_engine(model, config, ds_config)
    restore_fp32_masters(model, masters)
    return bundle, restore_group_states(bundle, states)


def release_engine(bundle: EngineBundle, model: nn.Module) -> None:
    """Release an engine completely so that a new one can be built on the same module, memory flat. A
    bundle that was released already is left as it is."""
    engine = bundle.engine
    if engine is None:
        return
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


#: Under a run's checkpoints folder: universal copies of checkpoints, made when the number of ranks changes.
UNIVERSAL_DIR = "universal"


def universal_checkpoint(checkpoints: Path, tag: str) -> Path:
    """The universal copy of checkpoint ``tag`` (any number of ranks can load it with its optimizer state),
    made by rank 0 with DeepSpeed's ``ds_to_universal`` on first use; returns the folder that holds it under
    the same tag. Collective: every rank calls it, and it returns when the copy is complete."""
    load_dir = checkpoints / UNIVERSAL_DIR
    if torch.distributed.get_rank() == 0 and not (load_dir / tag / "zero").is_dir():
        staging = load_dir / f"{tag}.partial"
        args = argparse.Namespace(
            input_folder=str(checkpoints / tag),
            output_folder=str(staging),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # the universal-checkpoint marker Megatron models carry
        )
        ds_to_universal.main(args)
        staging.rename(load_dir / tag)  # whole or not at all
    torch.distributed.barrier()
    return load_dir
