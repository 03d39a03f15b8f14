"""Two ranks through the real `deepspeed` launcher on CPU: ranks agree (also when one rank's samples all
drop a timeframe), ZeRO-2 partitions the optimizer, data parallelism equals gradient accumulation."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from workers.resume import loaded_moments, resume_config
from workers.two_ranks import DROPPED_ON_RANK_1

from conftest import REPO, deepspeed_command, fresh_process_env, tiny_train_config
from stage1_ds.config import AdamOp, Phase
from stage1_ds.data.windows import WindowDataset
from stage1_ds.export import convert
from stage1_ds.model.lora import plain_name
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model, load_export_config
from stage1_ds.train import loop
from stage1_ds.train.checkpoint import checkpoint_dir, read_meta
from stage1_ds.train.engine import build_ds_config, build_engine, init_distributed, release_engine

pytestmark = pytest.mark.slow  # every test here starts ranks through the deepspeed launcher
RESUME_WORKER = REPO / "tests" / "workers" / "resume.py"


def _launch(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    command = deepspeed_command(2, *args)
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env=fresh_process_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _one_rank_with_accumulation(data_dir: Path, ds_config: str, steps: list[list[list[int]]]) -> Stage1Model:
    """The same model, one rank, gradient accumulation over the ranks' micro batches of each step (the
    second rank's with h4 dropped, as the worker does)."""
    config = tiny_train_config(ds_config=ds_config, gradient_accumulation_steps=len(steps[0]))
    init_distributed()
    torch.manual_seed(0)
    model = Stage1Model(config.model, config.data)
    model.set_phase(Phase.FULL)
    bundle = build_engine(model, config, build_ds_config(config))
    data = [
        MaskedWindows(
            WindowDataset(data_dir, "train", replace(config.data, keep_probability=keep)),
            config.model.masking,
            8,
            seed=0,
        )
        for keep in ({}, DROPPED_ON_RANK_1)
    ]
    for micro_batches in steps:
        for rank, ids in enumerate(micro_batches):
            batch = data[rank].batch(np.asarray(ids))
            loss = stage1_loss(bundle.engine(batch).reconstruction, batch, config.model.loss).total
            bundle.engine.backward(loss)
            bundle.engine.step()
    release_engine(bundle, model)
    return model


DS_CONFIGS = ("ds_configs/zero2.json", "ds_configs/zero2_offload.json")


@pytest.fixture(scope="module")
def two_rank_runs(synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both DeepSpeed configs trained three steps on two ranks in one launch (`workers/two_ranks.py`),
    each under ``<root>/<config's stem>``."""
    root = tmp_path_factory.mktemp("two_ranks")
    worker = REPO / "tests" / "workers" / "two_ranks.py"
    _launch([str(worker), str(synthetic_small), str(root), *(str(REPO / c) for c in DS_CONFIGS)], root)
    return root


@pytest.mark.parametrize("ds_config", DS_CONFIGS)
def test_two_ranks_agree_and_partition_the_optimizer(
    synthetic_small: Path, two_rank_runs: Path, ds_config: str, tmp_path: Path
) -> None:
    out = two_rank_runs / Path(ds_config).stem
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    ids = [{i for step in r["sample_ids"] for i in step} for r in ranks]
    assert not ids[0] & ids[1], "each rank its own share"
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"], "weights identical on both ranks"
    total = ranks[0]["trainable_numel"]
    for r in ranks:
        assert total / 2 <= r["partition_numel"] < total / 2 + 64, "each rank holds half the optimizer state"
    # The two-rank checkpoint converts to one fp32 model that reproduces the live module.
    convert(out / "run", tmp_path / "export")
    live = torch.load(out / "live_outputs.pt", weights_only=False)
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


def _consolidated_moments(checkpoint: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Adam's moments per parameter, put together from each rank's optimizer shard of a checkpoint: ZeRO-2
    keeps one flat partition per group and rank, parameters in order (read independently of DeepSpeed's
    own conversion code)."""
    shapes = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["param_shapes"]
    shards = [
        torch.load(path, weights_only=False)["optimizer_state_dict"]
        for path in sorted(checkpoint.glob("zero_pp_rank_*_optim_states.pt"))
    ]
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, group in enumerate(shapes):
        flat = {
            key: torch.cat([shard["base_optimizer_state"]["state"][i][key] for shard in shards])
            for key in ("exp_avg", "exp_avg_sq")
        }
        offset = 0
        for name, shape in group.items():
            size = int(np.prod(shape))
            moments[plain_name(name)] = tuple(  # type: ignore[assignment]
                flat[key][offset : offset + size].view(shape) for key in ("exp_avg", "exp_avg_sq")
            )
            offset += size
    return moments


def _train_losses(run_dir: Path) -> dict[int, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars("loss/total")}


def _keep_only_step(run_dir: Path, copy: Path, step: int) -> None:
    """A copy of the run as it was when it saved at ``step`` (what a preempted run leaves)."""
    later = [f"step{s:08d}" for s in range(step + 1, step + 100)]
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tensorboard", "loaded_moments.pt", *later))
    (checkpoint_dir(copy) / "latest").write_text(f"step{step:08d}")


def _assert_same_moments(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() and got
    for name, (exp_avg, exp_avg_sq) in expected.items():
        torch.testing.assert_close(got[name][0], exp_avg, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(got[name][1], exp_avg_sq, rtol=0, atol=0, msg=name)


def _assert_losses_join(resumed: dict[int, float], uninterrupted: dict[int, float], steps: list[int]) -> None:
    """After the resume the loss follows the uninterrupted run: the same windows make each step, split into
    other micro batches, so the per-step mean differs slightly (measured: 2e-4 relative at most)."""
    assert sorted(resumed) == steps
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], rel=2e-3), (step, resumed, uninterrupted)


def test_a_run_moves_from_one_rank_to_two_and_back_with_its_adam_state(
    synthetic_small: Path, tmp_path: Path
) -> None:
    """One rank trains nine steps (the uninterrupted run; two micro batches a step); its step-3 checkpoint
    resumes on two ranks (one micro batch each) to step 6, and that two-rank checkpoint resumes on one rank
    to step 9. Each resume loads exactly the Adam moments saved (put together from every rank's shard, also
    by the torch fallback optimizer), counts the samples consumed, and its losses follow the uninterrupted
    run's."""
    one, two, back = tmp_path / "one_rank", tmp_path / "two_ranks", tmp_path / "back"
    config = resume_config(gradient_accumulation_steps=2)
    loop.train(config, synthetic_small, one)
    uninterrupted = _train_losses(one)

    _keep_only_step(one, two, 3)
    _launch([str(RESUME_WORKER), "resume", str(synthetic_small), str(two), "1", "6"], tmp_path)
    loaded = torch.load(two / "loaded_moments.pt", weights_only=False)
    _assert_same_moments(loaded, _consolidated_moments(checkpoint_dir(one) / "step00000003"))
    meta = read_meta(two)[1]
    assert meta["world_size"] == 2 and meta["global_step"] == 6 and meta["batches_consumed"] == 6
    _assert_losses_join(_train_losses(two), uninterrupted, [4, 5, 6])

    _keep_only_step(two, back, 6)
    expected = _consolidated_moments(checkpoint_dir(two) / "step00000006")
    _assert_same_moments(loaded_moments(config, back), expected)
    with_torch_adam = resume_config(gradient_accumulation_steps=2)
    with_torch_adam.train.adam_op = AdamOp.TORCH  # the fallback optimizer loads the universal copy too
    _assert_same_moments(loaded_moments(with_torch_adam, back), expected)
    result = loop.train(config, synthetic_small, back, resume=True)
    assert result.global_step == 9 and read_meta(back)[1]["batches_consumed"] == 18
    _assert_losses_join(_train_losses(back), uninterrupted, [7, 8, 9])
