"""`stage1 doctor`: each check on this node, and each failure it exists for, made to happen: no CUDA
toolkit, DeepSpeed's Adam that cannot be built, a small /dev/shm, a full disk, weights not in the cache,
and GPUs too small for the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from deepspeed.ops.op_builder.cpu import FusedAdamBuilder
from huggingface_hub import constants
from torch.utils import cpp_extension

from conftest import REPO, tiny_train_config
from stage1_ds import doctor
from stage1_ds.cli import main
from stage1_ds.config import AdamOp, load_config, resolve_path
from stage1_ds.doctor import Gpu, Status
from stage1_ds.train.engine import read_ds_json
from stage1_ds.train.memory import GIB, meta_batch, meta_model, plan_memory, saved_activation_bytes

STAGED = str(REPO / "configs" / "t5_large_staged.yaml")


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_on_this_node_nothing_stops_the_demo(synthetic_small: Path, tmp_path: Path) -> None:
    config = load_config(resolve_path("configs/demo_cpu.yaml"))
    checks, table = doctor.run_doctor(config, [synthetic_small], tmp_path / "run", None, 1)
    found = _by_name(checks)
    assert {"accelerators", "versions", "toolchain", "op fused_adam", "op deepspeed_shm_comm"} <= set(found)
    assert {"/dev/shm", "pretrained", "memory", "disk", "data"} <= set(found)
    assert all(c.status != Status.FAIL for c in checks), [c.line() for c in checks]
    assert found["accelerators"].status == Status.WARN  # no GPU here
    assert "frozen" in table and "141 GB (H200)" in table


def test_without_a_cuda_toolkit_on_a_gpu_node_the_toolchain_warns() -> None:
    original = cpp_extension.CUDA_HOME
    try:
        cpp_extension.CUDA_HOME = None
        check = doctor.check_toolchain(on_gpu=True)
    finally:
        cpp_extension.CUDA_HOME = original
    assert check.status == Status.WARN and "no nvcc" in check.found and "CUDA_HOME" in check.fix


def test_an_adam_op_that_cannot_be_built_warns_with_the_fallback_or_fails_when_insisted_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(FusedAdamBuilder, "is_compatible", lambda self, verbose=False: False)
    config = tiny_train_config()
    auto = _by_name(doctor.check_ops(config, read_ds_json(config)))["op fused_adam"]
    assert auto.status == Status.WARN and "torch_adam" in auto.found
    config.train.adam_op = AdamOp.DEEPSPEED
    insisted = _by_name(doctor.check_ops(config, read_ds_json(config)))["op fused_adam"]
    assert insisted.status == Status.FAIL and "train.adam_op=auto" in insisted.fix


def test_a_small_dev_shm_fails_the_loader_workers() -> None:
    config = load_config(resolve_path(STAGED))
    assert config.data.num_workers > 0
    small = doctor.check_shm(config, ranks_per_node=8, size=64 * 2**20)  # docker's default
    assert small.status == Status.FAIL and "--shm-size" in small.fix
    assert doctor.check_shm(config, 8, 64 * 2**30).status == Status.OK
    config.data.num_workers = 0
    assert doctor.check_shm(config, 8, 64 * 2**20).status == Status.OK


def test_a_full_disk_fails_before_the_first_checkpoint(tmp_path: Path) -> None:
    full = doctor.check_disk(tmp_path, keep=3, largest_checkpoint=4 * GIB, free=10 * GIB)
    assert full.status == Status.FAIL and "16.0 GiB" in full.found and "keep_checkpoints" in full.fix
    assert doctor.check_disk(tmp_path, 3, 4 * GIB, 100 * GIB).status == Status.OK


def test_weights_by_model_id_must_be_in_the_local_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from transformers import T5Config, T5EncoderModel

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--stage1-tests--tiny-t5"
    T5EncoderModel(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)).save_pretrained(
        repo / "snapshots" / revision
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = load_config(resolve_path(STAGED))
    config.model.encoder.pretrained = "stage1-tests/tiny-t5"
    assert doctor.check_pretrained(config).status == Status.OK
    config.model.encoder.pretrained = "stage1-tests/not-cached"
    missing = doctor.check_pretrained(config)
    assert missing.status == Status.FAIL and "not in the Hugging Face cache" in missing.found
    config.model.encoder.pretrained = str(tmp_path / "no-such-folder")
    assert doctor.check_pretrained(config).status == Status.FAIL


def test_gpus_too_small_for_the_plan_fail_and_the_command_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(doctor, "gpus", lambda: [Gpu("Small GPU", 24 * GIB, True)] * 8)
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--config", STAGED, "--gpus", "8", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    memory = next(c for c in report["checks"] if c["name"] == "memory")
    assert not report["ok"] and memory["status"] == "FAIL" and "micro_batch_size" in memory["fix"]
    monkeypatch.setattr(doctor, "gpus", lambda: [Gpu("Large GPU", 141 * 10**9, True)] * 8)
    assert main(["doctor", "--config", STAGED, "--gpus", "8", "--json", str(out)]) == 0


def test_the_planned_activations_are_what_a_real_forward_saves(synthetic_small: Path) -> None:
    """The meta-device count (no memory) equals the bytes autograd saves in a real forward on CPU."""
    from stage1_ds.data.windows import WindowDataset
    from stage1_ds.model.masking import MaskedWindows
    from stage1_ds.model.stage1 import Stage1Model

    config = load_config(resolve_path("configs/demo_cpu.yaml"), ["train.phases=[{name: full}]"])
    size = 8
    planned = saved_activation_bytes(meta_model(config), meta_batch(config, size), config)
    plan = plan_memory(config, False, 1, False, 0)[0]
    assert plan.activations_fixed + size * plan.activations_per_sample == planned
    windows = WindowDataset(synthetic_small, "train", config.data, seed=0)
    batch = MaskedWindows(windows, config.model.masking, config.model.patch_len, seed=0).batch(
        torch.arange(size).numpy() * 31
    )
    model = Stage1Model(config.model, config.data)
    model.set_phase(config.train.phases[0].name)
    assert saved_activation_bytes(model, batch, config) == planned
