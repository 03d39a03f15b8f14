"""`stage1 doctor`: what will break on this node, found before launch instead of at step 1.

One check per line, OK / WARN / FAIL, each FAIL and WARN with its fix: the accelerators, the versions of
the stack, the CUDA toolkit and ninja, every DeepSpeed op the run needs (built, buildable, or not, with the
fallback that will be used), ``/dev/shm`` against the data loader's need, free disk at the run folder
against ``keep_checkpoints`` checkpoints of this config, the pretrained weights in the local cache, the
prepared data, and the memory plan per GPU (`stage1_ds.train.memory`). A FAIL means the run cannot start
as configured: the command exits non-zero, and the launch scripts stop.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import deepspeed
import peft
import torch
import transformers
from deepspeed.accelerator import get_accelerator
from torch.utils import cpp_extension

from stage1_ds.config import AdamOp, Config
from stage1_ds.data.corpus import load_corpus
from stage1_ds.data.features import num_features
from stage1_ds.errors import Stage1Error
from stage1_ds.model import t5
from stage1_ds.train.engine import is_offloaded, read_ds_json, use_bf16
from stage1_ds.train.memory import GIB, PhasePlan, plan_memory
from stage1_ds.train.ops import OpState, adam_builder, check_op, needed_builders

#: DataLoader batches each worker process keeps ready (PyTorch's default prefetch factor).
PREFETCH = 2
#: Bytes per value of a batch in shared memory: features, times and maps are float32 / int64 at most.
VALUE_BYTES = 8
#: DeepSpeed's default reduce and all-gather bucket sizes (elements), where the JSON sets none.
DS_BUCKET = 5 * 10**8
#: The memory plan is checked against these GPUs when the node has none (docs/training.md's table).
REFERENCE_GPUS = {
    "80 GB (A100/H100)": 80 * 10**9,
    "96 GB (H100 NVL)": 96 * 10**9,
    "141 GB (H200)": 141 * 10**9,
}


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, its status, what was found, and the fix."""

    name: str
    status: Status
    found: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix and self.status != Status.OK else ""
        return f"{self.status.value:<5} {self.name:<22} {self.found}{fix}"


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: int  # bytes
    bf16: bool


def gpus() -> list[Gpu]:
    """The node's GPUs (empty on a CPU-only node)."""
    if not torch.cuda.is_available():
        return []
    found = []
    for k in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(k)
        found.append(Gpu(props.name, int(props.total_memory), torch.cuda.is_bf16_supported()))
    return found


def shm_bytes() -> int | None:
    """Size of ``/dev/shm`` (None where there is none)."""
    return shutil.disk_usage("/dev/shm").total if Path("/dev/shm").is_dir() else None


def free_bytes(path: Path) -> int:
    """Free disk where ``path`` is or would be created (its nearest existing folder)."""
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def check_accelerators(found: list[Gpu]) -> Check:
    if not found:
        return Check(
            "accelerators",
            Status.WARN,
            "no GPU: DeepSpeed's accelerator is the CPU (fp32, gloo); training works but slowly",
            "on a GPU node, check that torch sees the GPUs (torch.cuda.is_available(), CUDA_VISIBLE_DEVICES)",
        )
    names = sorted({g.name for g in found})
    memory = min(g.memory for g in found) / GIB
    status = Status.OK if all(g.bf16 for g in found) else Status.WARN
    return Check(
        "accelerators",
        status,
        f"{len(found)} x {', '.join(names)}, {memory:.0f} GiB each, bf16 {'yes' if status == Status.OK else 'no'}",
        "bf16 is needed for train.precision auto on GPUs (T5 overflows in fp16); set train.precision=fp32",
    )


def check_versions() -> Check:
    cuda = torch.version.cuda or "none"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "none"
    return Check(
        "versions",
        Status.OK,
        f"torch {torch.__version__} (CUDA {cuda}, NCCL {nccl}), deepspeed {deepspeed.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}",
    )


def check_toolchain(on_gpu: bool) -> Check:
    ninja = cpp_extension.is_ninja_available()
    home = cpp_extension.CUDA_HOME
    nvcc = home is not None and (Path(home) / "bin" / "nvcc").exists()
    found = f"ninja {'found' if ninja else 'missing'}; CUDA toolkit {'at ' + str(home) if nvcc else 'missing (no nvcc)'}"
    if ninja and (nvcc or not on_gpu):
        return Check("toolchain", Status.OK, found)
    return Check(
        "toolchain",
        Status.WARN,
        found,
        "DeepSpeed cannot compile ops here; the run uses what is already built or falls back (see ops). "
        "To compile: pip install ninja; a CUDA toolkit matching torch's CUDA, CUDA_HOME pointing at it",
    )


def check_ops(config: Config, ds: dict[str, Any]) -> list[Check]:
    offload = is_offloaded(ds)
    checks = []
    for builder in needed_builders(offload):
        op = check_op(builder)
        found = f"{op.name}: {op.state.value} ({op.detail})"
        if op.state != OpState.MISSING:
            checks.append(Check(f"op {op.name}", Status.OK, found))
        elif builder == adam_builder(offload) and config.train.adam_op != AdamOp.DEEPSPEED:
            checks.append(
                Check(
                    f"op {op.name}",
                    Status.WARN,
                    found + "; the run falls back to PyTorch's AdamW (torch_adam)",
                    "nothing to do, or provide the toolchain to use DeepSpeed's op",
                )
            )
        else:
            fix = (
                "set train.adam_op=auto (falls back to torch's AdamW) or provide the toolchain"
                if builder == adam_builder(offload)
                else "provide the toolchain (ninja, a C++ compiler)"
            )
            checks.append(Check(f"op {op.name}", Status.FAIL, found, fix))
    return checks


def sample_bytes(config: Config) -> int:
    """Bytes of one sample's batch tensors (every timeframe's window: features, validity, times, maps)."""
    values = sum(
        config.data.bars(tf) * (num_features(config.data.volume) + 4) for tf in config.data.timeframes
    )
    return values * VALUE_BYTES


def check_shm(config: Config, ranks_per_node: int, size: int | None) -> Check:
    workers = config.data.num_workers
    need = ranks_per_node * workers * PREFETCH * config.train.micro_batch_size * sample_bytes(config)
    if workers == 0:
        return Check("/dev/shm", Status.OK, "data.num_workers 0: batches are built in the training process")
    if size is None:
        return Check("/dev/shm", Status.FAIL, "no /dev/shm", "data.num_workers=0, or mount a shared memory")
    found = (
        f"{size / 2**20:,.0f} MiB; the loaders need about {need / 2**20:,.0f} MiB ({ranks_per_node} ranks x "
        f"{workers} workers x {PREFETCH} batches of {config.train.micro_batch_size})"
    )
    if size < need:
        return Check(
            "/dev/shm",
            Status.FAIL,
            found,
            "docker run --shm-size=8g (or --ipc=host), or fewer data.num_workers",
        )
    if size < 4 * need:
        return Check(
            "/dev/shm", Status.WARN, found, "little headroom: docker run --shm-size=8g (or --ipc=host)"
        )
    return Check("/dev/shm", Status.OK, found)


def checkpoint_bytes(weights: int, trainable: int, bf16: bool) -> int:
    """One checkpoint of a phase: the module's weights in the training dtype, and the optimizer's fp32
    master weights and two Adam moments of every trainable weight (the shards of all ranks together)."""
    return (2 if bf16 else 4) * weights + 12 * trainable


def check_disk(run_dir: Path, keep: int, largest_checkpoint: int, free: int) -> Check:
    need = (keep + 1) * largest_checkpoint  # the newest is written before the oldest is pruned
    found = (
        f"{free / GIB:,.1f} GiB free at {run_dir}; {keep} checkpoints kept (+1 while saving) of up to "
        f"{largest_checkpoint / GIB:,.2f} GiB need {need / GIB:,.1f} GiB"
    )
    if free < need:
        return Check("disk", Status.FAIL, found, "free space, another --out, or fewer train.keep_checkpoints")
    if free < 2 * need:
        return Check("disk", Status.WARN, found, "exports and logs need room too")
    return Check("disk", Status.OK, found)


def check_pretrained(config: Config) -> Check:
    found, where = t5.find_pretrained(config.model.encoder)
    if found:
        return Check("pretrained", Status.OK, where)
    return Check(
        "pretrained",
        Status.FAIL,
        where,
        "download it where there is internet (huggingface-cli download ID) and copy the cache to HF_HOME "
        "here, or give model.encoder.pretrained a local save_pretrained folder",
    )


def check_data(data: list[Path]) -> Check:
    try:
        datas = load_corpus(data)
    except Stage1Error as error:
        return Check(
            "data", Status.FAIL, str(error), "prepare the data again with this version: stage1 prepare"
        )
    instruments = sorted({name for d in datas for name in d.instruments})
    return Check(
        "data",
        Status.OK,
        f"{len(datas)} folder(s), format version {datas[0].manifest['format_version']}, statistics of "
        f"{len(instruments)} instrument(s) fitted on train: {', '.join(instruments[:6])}"
        + (" ..." if len(instruments) > 6 else ""),
    )


def check_memory(plans: list[PhasePlan], micro: int, found: list[Gpu], summary: str) -> tuple[Check, str]:
    """The plan per phase against the smallest GPU (or against `REFERENCE_GPUS` on a node without one);
    returns the check and the table."""
    targets = {found[0].name: min(g.memory for g in found)} if found else REFERENCE_GPUS
    table = [f"{'phase':<8}{'states GiB':>11}{'act/sample MiB':>16}{'total GiB':>11}  largest micro batch"]
    short = []
    for plan in plans:
        fits = {name: plan.largest_micro_batch(size) for name, size in targets.items()}
        table.append(
            f"{plan.phase:<8}{plan.model_states / GIB:>11.2f}{plan.activations_per_sample / 2**20:>16.1f}"
            f"{plan.total / GIB:>11.1f}  " + ", ".join(f"{n}: {b}" for n, b in fits.items())
        )
        short += [
            f"phase {plan.phase} needs {plan.total / GIB:.1f} GiB at micro batch {micro} on {name} "
            f"(largest that fits: {largest})"
            for name, largest in fits.items()
            if largest < micro
        ]
    found_line = summary + ("" if found else " (no GPU here: see the table for the reference GPUs)")
    if short and found:
        fix = (
            "a smaller train.micro_batch_size with more train.gradient_accumulation_steps, or "
            "ds_configs/zero2_offload.json"
        )
        return Check("memory", Status.FAIL, f"{found_line}; {short[0]}", fix), "\n".join(table)
    return Check("memory", Status.OK, found_line), "\n".join(table)


def run_doctor(
    config: Config | None,
    data: list[Path] | None,
    run_dir: Path | None,
    ranks_per_node: int | None,
    nodes: int,
) -> tuple[list[Check], str]:
    """Every check of the module docstring that the arguments allow; returns the checks and the memory
    table (empty without a config)."""
    found = gpus()
    on_gpu = get_accelerator().device_name() != "cpu"
    checks = [check_accelerators(found), check_versions(), check_toolchain(on_gpu)]
    table = ""
    if config is not None:
        ds = read_ds_json(config)
        per_node = ranks_per_node or max(len(found), 1)
        world, offload = per_node * nodes, is_offloaded(ds)
        bf16 = use_bf16(config.train.precision) or not found  # from a CPU node, plan the GPU run's bf16
        zero = ds.get("zero_optimization", {})
        buckets = int(zero.get("reduce_bucket_size", DS_BUCKET)) + int(
            zero.get("allgather_bucket_size", DS_BUCKET)
        )
        plans = plan_memory(config, bf16, world, offload, buckets)
        checks += check_ops(config, ds)
        checks.append(check_shm(config, per_node, shm_bytes()))
        checks.append(check_pretrained(config))
        micro = config.train.micro_batch_size
        summary = (
            f"micro batch {micro}, {world} rank(s), bf16 {bf16}, optimizer offload {offload}; planned per GPU: "
            + ", ".join(f"{p.phase} {p.total / GIB:.1f} GiB" for p in plans)
        )
        memory, table = check_memory(plans, micro, found, summary)
        checks.append(memory)
        if run_dir is not None:
            largest = max(checkpoint_bytes(p.weights, p.trainable, bf16) for p in plans)
            checks.append(check_disk(run_dir, config.train.keep_checkpoints, largest, free_bytes(run_dir)))
    if data:
        checks.append(check_data(data))
    return checks, table


def format_checks(checks: list[Check], table: str) -> str:
    lines = [check.line() for check in checks]
    if table:
        lines += ["", "memory per GPU (estimates until measured on the device):", table]
    failed = [c.name for c in checks if c.status == Status.FAIL]
    lines += ["", f"cannot start: {', '.join(failed)}" if failed else "nothing found that stops a launch"]
    return "\n".join(lines)


def checks_json(checks: list[Check], table: str) -> dict[str, Any]:
    return {
        "checks": [{**asdict(c), "status": c.status.value} for c in checks],
        "memory_table": table,
        "ok": all(c.status != Status.FAIL for c in checks),
        "environment": {
            k: os.environ[k] for k in ("CUDA_HOME", "HF_HOME", "TORCH_EXTENSIONS_DIR") if k in os.environ
        },
    }
