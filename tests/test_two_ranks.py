"""Two ranks through the real `deepspeed` launcher on CPU: ranks agree, ZeRO-2 partitions the optimizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_train_config
from stage1_ds.config import Phase
from stage1_ds.data.windows import WindowDataset
from stage1_ds.export import convert
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model, load_export_config
from stage1_ds.train.checkpoint import checkpoint_dir, read_meta
from stage1_ds.train.engine import build_ds_config, build_engine, init_distributed, release_engine


def _launch(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in group}
    env["PYTHONPATH"] = str(REPO)
    deepspeed = Path(sys.executable).parent / "deepspeed"
    port = 29500 + os.getpid() % 1000
    command = [str(deepspeed), "--num_gpus", "2", "--master_port", str(port), *args]
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _one_rank_with_accumulation(data_dir: Path, ds_config: str, steps: list[list[list[int]]]) -> Stage1Model:
    """The same model, one rank, gradient accumulation over the ranks' micro batches of each step."""
    config = tiny_train_config(ds_config=ds_config, gradient_accumulation_steps=len(steps[0]))
    init_distributed()
    torch.manual_seed(0)
    model = Stage1Model(config.model, config.data)
    model.set_phase(Phase.FULL)
    bundle = build_engine(model, config, build_ds_config(config, None), 0)
    data = MaskedWindows(WindowDataset(data_dir, "train", config.data), config.model.masking, 8, seed=0)
    for micro_batches in steps:
        for ids in micro_batches:
            batch = data.batch(np.asarray(ids))
            loss = stage1_loss(bundle.engine(batch).reconstruction, batch, config.model.loss).total
            bundle.engine.backward(loss)
            bundle.engine.step()
    release_engine(bundle, model)
    return model


@pytest.mark.parametrize("ds_config", ["ds_configs/zero2.json", "ds_configs/zero2_offload.json"])
def test_two_ranks_agree_and_partition_the_optimizer(
    synthetic_small: Path, tmp_path: Path, ds_config: str
) -> None:
    worker = REPO / "tests" / "workers" / "two_ranks.py"
    _launch([str(worker), str(synthetic_small), str(tmp_path), str(REPO / ds_config)], tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    ids = [{i for step in r["sample_ids"] for i in step} for r in ranks]
    assert not ids[0] & ids[1], "each rank its own share"
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"], "weights identical on both ranks"
    total = ranks[0]["trainable_numel"]
    for r in ranks:
        assert total / 2 <= r["partition_numel"] < total / 2 + 64, "each rank holds half the optimizer state"
    # The two-rank checkpoint converts to one fp32 model that reproduces the live module.
    convert(tmp_path / "run", tmp_path / "export")
    live = torch.load(tmp_path / "live_outputs.pt", weights_only=False)
    exported = Stage1Model.from_pretrained(tmp_path / "export")
    config = load_export_config(tmp_path / "export")
    probe = MaskedWindows(
        WindowDataset(synthetic_small, "train", config.data), config.model.masking, 8, seed=0
    )
    with torch.no_grad():
        got = exported(probe.batch(live["ids"].numpy())).reconstruction
    for tf, expected in live["outputs"].items():
        torch.testing.assert_close(got[tf], expected, atol=1e-5, rtol=1e-5)
    # Data parallelism averages the ranks' gradients: the same as one rank accumulating their micro batches.
    steps = [[r["sample_ids"][s] for r in ranks] for s in range(3)]
    accumulated = _one_rank_with_accumulation(synthetic_small, str(REPO / ds_config), steps).state_dict()
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, accumulated[key], atol=1e-6, rtol=1e-5, msg=key)


def test_train_script_runs_under_the_deepspeed_launcher(synthetic_small: Path, tmp_path: Path) -> None:
    overrides = [
        "model.encoder.preset=tiny",
        "data.window_bars=16",
        "train.max_steps=4",
        "train.micro_batch_size=4",
        "train.phases=[{name: frozen, until_step: 2}, {name: full}]",
        "train.save_every_steps=4",
        "train.eval_every_steps=4",
        "train.image_every_steps=4",
        "train.log_every_steps=1",
    ]
    script = REPO / "scripts" / "train_stage1.py"
    result = _launch(
        [
            str(script),
            "--config",
            str(REPO / "configs" / "demo_cpu.yaml"),
            "--data_dir",
            str(synthetic_small),
            "--out",
            str(tmp_path / "run"),
            *overrides,
        ],
        tmp_path,
    )
    tag, meta = read_meta(tmp_path / "run")
    assert meta["world_size"] == 2 and meta["global_step"] == 4 and meta["phase"] == "full"
    shards = sorted(p.name for p in (checkpoint_dir(tmp_path / "run") / tag).glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    sizes = []
    for shard in shards:
        state = torch.load(checkpoint_dir(tmp_path / "run") / tag / shard, weights_only=False)
        sizes.append(sum(t.numel() for t in state["optimizer_state_dict"]["single_partition_of_fp32_groups"]))
    assert abs(sizes[0] - sizes[1]) < 64
    assert "step 4/4" in result.stdout + result.stderr
