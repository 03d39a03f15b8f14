"""DeepSpeed's compiled ops: what a run needs, their state, and the torch AdamW a run falls back to when
DeepSpeed's own Adam cannot be built (made to happen on CPU by having the builder report itself
incompatible)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deepspeed.accelerator import get_accelerator
from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, FusedAdamBuilder
from torch.utils import cpp_extension

from conftest import tiny_train_config
from stage1_ds.config import AdamOp, load_config, resolve_path
from stage1_ds.train import ops
from stage1_ds.train.engine import build_ds_config
from stage1_ds.train.loop import ADAM_RECORD, train


@pytest.fixture
def no_fused_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed's fused_adam and cpu_adam report themselves incompatible with this machine."""
    monkeypatch.setattr(FusedAdamBuilder, "is_compatible", lambda self, verbose=False: False)
    monkeypatch.setattr(CPUAdamBuilder, "is_compatible", lambda self, verbose=False: False)


def test_the_ops_a_cpu_run_needs_are_found_built() -> None:
    """make test builds them first (scripts/warm_ds_ops.py), so here they are in torch's cache."""
    assert ops.needed_builders(offload=False) == ["FusedAdamBuilder", "ShareMemCommBuilder"]
    assert ops.needed_builders(offload=True)[0] == "CPUAdamBuilder"
    for builder in ("FusedAdamBuilder", "CPUAdamBuilder", "ShareMemCommBuilder"):
        check = ops.check_op(builder)
        assert check.state == ops.OpState.CACHED and check.usable, check


def test_an_op_that_is_not_built_and_cannot_be_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing compiled there
    assert ops.check_op("FusedAdamBuilder").state == ops.OpState.BUILDABLE
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    check = ops.check_op("FusedAdamBuilder")
    assert check.state == ops.OpState.MISSING and "ninja" in check.detail


def test_on_a_gpu_without_a_cuda_toolkit_fused_adam_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch's CUDA wheels bring no nvcc; cpu_adam (offload) needs only a C++ compiler."""
    monkeypatch.setattr(get_accelerator(), "device_name", lambda *args: "cuda")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    problems = ops.compiler_problems("FusedAdamBuilder")
    assert any("nvcc" in p for p in problems)
    assert not any("nvcc" in p for p in ops.compiler_problems("CPUAdamBuilder"))


def test_auto_takes_torch_adam_only_when_the_op_cannot_be_had(no_fused_adam: None) -> None:
    fallback = ops.choose_adam(AdamOp.AUTO, offload=False)
    assert fallback.op == "torch_adam" and fallback.fallback and "fused_adam" in fallback.reason
    assert ops.choose_adam(AdamOp.DEEPSPEED, offload=False).op == "fused_adam"
    assert ops.choose_adam(AdamOp.DEEPSPEED, offload=True).op == "cpu_adam"
    forced = ops.choose_adam(AdamOp.TORCH, offload=False)
    assert forced.op == "torch_adam" and not forced.fallback


@pytest.mark.parametrize("ds_config", ["ds_configs/zero2.json", "ds_configs/zero2_offload.json"])
def test_the_deepspeed_config_asks_for_torch_adam_on_a_fallback(no_fused_adam: None, ds_config: str) -> None:
    ds = build_ds_config(tiny_train_config(ds_config=ds_config), None)
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds.get("zero_force_ds_cpu_optimizer", True) is ("offload" not in ds_config)


def test_auto_keeps_deepspeeds_op_where_it_is_built() -> None:
    ds = build_ds_config(tiny_train_config())
    assert "torch_adam" not in ds["optimizer"]["params"]


def _demo(steps: int, **train: object):
    config = load_config(resolve_path("configs/demo_cpu.yaml"), [f"train.max_steps={steps}"])
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


#: Losses of the same 20 demo steps with DeepSpeed's fused_adam and with torch's AdamW agree to this
#: relative tolerance (measured: 1.7e-3 at most over every loss component, train and val; the two
#: implementations round differently in float32, and 20 steps of training carry the differences on).
ADAM_TOLERANCE = 5e-3


def test_a_run_without_fused_adam_trains_the_same_steps_with_torch_adam(
    synthetic_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 steps of the demo config through all three phases (Adam's moments carried across both
    boundaries), once with the op and once with it reported incompatible."""
    native = train(_demo(20), synthetic_small, tmp_path / "native")
    assert json.loads((tmp_path / "native" / ADAM_RECORD).read_text())["op"] == "fused_adam"
    monkeypatch.setattr(FusedAdamBuilder, "is_compatible", lambda self, verbose=False: False)
    fallback = train(_demo(20), synthetic_small, tmp_path / "fallback")
    record = json.loads((tmp_path / "fallback" / ADAM_RECORD).read_text())
    assert record["op"] == "torch_adam" and record["fallback"] and "fused_adam" in record["reason"]
    assert fallback.global_step == native.global_step == 20
    for key, value in native.val_losses.items():
        assert fallback.val_losses[key] == pytest.approx(value, rel=ADAM_TOLERANCE), key
    for key, value in native.last_losses.items():
        assert fallback.last_losses[key] == pytest.approx(value, rel=ADAM_TOLERANCE), key
    assert fallback.val_losses != native.val_losses, "another implementation ran: not the same bits"
