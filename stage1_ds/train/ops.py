"""DeepSpeed's compiled ops: which a run needs, whether each is built, can be built here, or cannot, and the
Adam that ZeRO uses when DeepSpeed's own cannot be had.

DeepSpeed compiles its ops just in time on first use: ``fused_adam`` (ZeRO-2 without offload; on a GPU
with ``nvcc``), ``cpu_adam`` (with ``offload_optimizer``; a C++ compiler) and, on CPU, the shared-memory
communication op. An image that ships PyTorch's CUDA wheels without a CUDA toolkit (or with another
version) fails at the engine build with "Error building extension 'fused_adam'", minutes into a run.
`check_op` finds that before launch; `choose_adam` then takes DeepSpeed's ``torch_adam`` path (PyTorch's
AdamW, fused on a GPU) instead, which needs no compiler, and says why.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.git_version_info import installed_ops
from torch.utils import cpp_extension

from stage1_ds.config import AdamOp


class OpState(StrEnum):
    PREBUILT = "prebuilt"  # installed with DeepSpeed (DS_BUILD_OPS)
    CACHED = "cached"  # compiled before, in the torch extensions cache
    BUILDABLE = "buildable"  # not built; this machine has what compiling it needs
    MISSING = "missing"  # cannot be built or loaded here


@dataclass(frozen=True)
class OpCheck:
    """One DeepSpeed op: its name (``fused_adam``), its builder's class name, its state, and in words where
    it is or why it cannot be built."""

    name: str
    builder: str
    state: OpState
    detail: str

    @property
    def usable(self) -> bool:
        return self.state != OpState.MISSING


def adam_builder(offload: bool) -> str:
    """The builder of the Adam op ZeRO-2 uses: ``cpu_adam`` with the optimizer offloaded, else ``fused_adam``."""
    return "CPUAdamBuilder" if offload else "FusedAdamBuilder"


def needed_builders(offload: bool) -> list[str]:
    """The op builders a run of this accelerator needs: its Adam, and on CPU the communication op (NCCL
    and other GPU backends come with PyTorch)."""
    builders = [adam_builder(offload)]
    if get_accelerator().device_name() == "cpu":
        builders.append("ShareMemCommBuilder")
    return builders


def extensions_dir() -> Path:
    """Where torch caches the ops it compiles (``TORCH_EXTENSIONS_DIR`` or its default, with torch's
    Python/CUDA version folder); torch's own function, so the folder is the one its builds use."""
    return Path(cpp_extension._get_build_directory("", verbose=False))


def compiler_problems(builder_name: str) -> list[str]:
    """What compiling the op would need and this machine lacks: ninja, a C++ compiler, and for a GPU op
    the CUDA toolkit's ``nvcc`` of ``CUDA_HOME`` (PyTorch's CUDA wheels do not bring it)."""
    problems = []
    if not cpp_extension.is_ninja_available():
        problems.append("ninja is not installed (pip install ninja)")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        problems.append("no C++ compiler (c++, g++ or clang++) on PATH")
    on_gpu = get_accelerator().device_name() != "cpu"
    if on_gpu and builder_name != "CPUAdamBuilder":
        home = cpp_extension.CUDA_HOME
        if home is None or not (Path(home) / "bin" / "nvcc").exists():
            problems.append(
                "no CUDA toolkit: nvcc not found (CUDA_HOME unset or without bin/nvcc); "
                f"torch was built with CUDA {torch.version.cuda}"
            )
    return problems


def check_op(builder_name: str) -> OpCheck:
    """The state of one op on this machine, without building it (a look at DeepSpeed's installed ops, its
    compatibility check, torch's extensions cache and the toolchain)."""
    builder = get_accelerator().create_op_builder(builder_name)
    if builder is None:
        return OpCheck(builder_name, builder_name, OpState.MISSING, "this accelerator has no such op")
    name = builder.name
    if installed_ops.get(name, False):
        return OpCheck(name, builder_name, OpState.PREBUILT, "installed with DeepSpeed")
    if not builder.is_compatible(verbose=False):
        reasons = "; ".join(str(line) for line in builder.error_log or [])
        return OpCheck(
            name,
            builder_name,
            OpState.MISSING,
            reasons or "DeepSpeed reports it incompatible with this machine",
        )
    cached = extensions_dir() / name / f"{name}.so"
    if cached.is_file():
        return OpCheck(name, builder_name, OpState.CACHED, f"compiled before: {cached}")
    problems = compiler_problems(builder_name)
    if problems:
        return OpCheck(name, builder_name, OpState.MISSING, "; ".join(problems))
    return OpCheck(name, builder_name, OpState.BUILDABLE, "compiled on first use (about a minute)")


@dataclass(frozen=True)
class AdamChoice:
    """The Adam ZeRO will use: ``op`` is ``fused_adam``, ``cpu_adam`` or ``torch_adam``; ``fallback`` when
    DeepSpeed's own op was wanted (``auto``) but cannot be had; ``reason`` in words."""

    op: str
    fallback: bool
    reason: str

    @property
    def torch_adam(self) -> bool:
        return self.op == "torch_adam"


def choose_adam(requested: AdamOp, offload: bool) -> AdamChoice:
    """The Adam of a run (see the module docstring): ``torch`` and ``deepspeed`` as asked; ``auto``
    DeepSpeed's op when `check_op` finds it usable, else torch's AdamW with the reason."""
    if requested == AdamOp.TORCH:
        return AdamChoice("torch_adam", False, "train.adam_op=torch")
    check = check_op(adam_builder(offload))
    if requested == AdamOp.DEEPSPEED:
        return AdamChoice(check.name, False, f"train.adam_op=deepspeed ({check.state.value}: {check.detail})")
    if check.usable:
        return AdamChoice(check.name, False, f"{check.state.value}: {check.detail}")
    return AdamChoice(
        "torch_adam",
        True,
        f"DeepSpeed's {check.name} cannot be built or loaded here ({check.detail}); PyTorch's AdamW is used "
        "instead (train.adam_op=deepspeed insists on the op)",
    )
