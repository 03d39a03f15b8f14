"""No code runs from a checkpoint: a pickle that would import anything outside what checkpoints hold is
refused by `stage1 convert` and `stage1 train --resume` before DeepSpeed unpickles it; real checkpoints
pass."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_train_config
from stage1_ds.cli import main
from stage1_ds.errors import CheckpointError
from stage1_ds.train import loop
from stage1_ds.train.checkpoint import checkpoint_dir, latest_tag
from stage1_ds.train.pickles import ALLOWED, check_folder, file_globals, safe_load


class Payload:
    """What a hostile pickle carries: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run(synthetic_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of three steps, a checkpoint at step 3."""
    folder = tmp_path_factory.mktemp("pickles") / "run"
    loop.train(tiny_train_config(max_steps=3, save_every_steps=3), synthetic_small, folder)
    return folder


def test_a_real_checkpoint_imports_only_what_checkpoints_hold(run: Path) -> None:
    tag = latest_tag(run)
    assert tag is not None
    check_folder(checkpoint_dir(run) / tag)
    found = set().union(*(file_globals(p) for p in (checkpoint_dir(run) / tag).glob("*.pt")))
    assert found and found <= ALLOWED
    assert set(safe_load(checkpoint_dir(run) / tag / "rng_rank0.pt")) >= {"python", "numpy", "torch"}


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "rng_rank0.pt"])
def test_a_payload_in_a_checkpoint_is_refused_by_convert_and_resume_without_running(
    run: Path, tmp_path: Path, victim: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = tmp_path / "run"
    shutil.copytree(run, hostile)
    tag = latest_tag(hostile)
    assert tag is not None
    marker = tmp_path / "ran"
    torch.save({"module": Payload(marker)}, checkpoint_dir(hostile) / tag / victim)
    with pytest.raises(CheckpointError, match=rf"{victim}: loading it would run code .*posix\.system"):
        check_folder(checkpoint_dir(hostile) / tag)
    assert main(["convert", str(hostile), "--out", str(tmp_path / "export")]) == 2
    assert "posix.system" in capsys.readouterr().err and not marker.exists()
    config = tiny_train_config(max_steps=6, save_every_steps=3)
    with pytest.raises(CheckpointError, match=r"posix\.system"):
        loop.train(config, _data(run), hostile, resume=True)
    assert not marker.exists(), "nothing of the payload ran"


def _data(run: Path) -> Path:
    """The data folder the run trained on (its data.json names it)."""
    return Path(json.loads((run / "data.json").read_text())["folders"][0])
