"""The shipped t5-large configs build real engines: random t5-large weights (nothing downloaded), two steps
in each of the config's phases on CPU under ZeRO-2 with optimizer offload, a checkpoint, and its fp32
export. Marked `large`: minutes and several GB of memory on 2 cores, so `make test` leaves it out; run it
with `make test-large` (docs/training.md gives its minutes and peak memory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from stage1_ds.config import load_config
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
from stage1_ds.export import convert
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train.checkpoint import latest_tag, read_meta
from stage1_ds.train.loop import train

pytestmark = pytest.mark.large


@pytest.mark.parametrize("name", ["t5_large_staged", "t5_large_lora", "t5_large_nofreeze"])
def test_a_shipped_t5_large_config_trains_two_steps_a_phase_and_converts(name: str, tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / f"{name}.yaml")
    data = tmp_path / "data"
    # 128-bar h4 windows span a month: each split needs more than that.
    options = PrepareOptions(window_bars=config.data.window_bars, split_fractions=(0.4, 0.3, 0.3))
    prepare_synthetic(data, days=300, seed=3, options=options)
    phases = len(config.train.phases)
    bounds = ", ".join(
        f"{{name: {p.name.value}, until_step: {2 * (k + 1)}}}" for k, p in enumerate(config.train.phases[:-1])
    )
    last = f"{{name: {config.train.phases[-1].name.value}}}"
    overrides = [
        f"train.max_steps={2 * phases}",
        f"train.phases=[{', '.join(filter(None, [bounds, last]))}]",
        "train.micro_batch_size=2",
        "train.ds_config=ds_configs/zero2_offload.json",
        "train.eval_batches=1",
        "train.eval_every_steps=1000",
        "train.image_every_steps=1000",
        f"train.save_every_steps={2 * phases}",
        "data.num_workers=0",
    ]
    run = tmp_path / "run"
    result = train(load_config(REPO / "configs" / f"{name}.yaml", overrides), data, run)
    assert result.global_step == 2 * phases and latest_tag(run) is not None
    meta = read_meta(run)[1]
    assert meta["phase"] == config.train.phases[-1].name.value
    convert(run, tmp_path / "export")
    model = Stage1Model.from_pretrained(tmp_path / "export")
    assert sum(p.numel() for p in model.parameters()) > 300_000_000  # the t5-large layout
