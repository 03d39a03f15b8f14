"""No code runs from a checkpoint: a pickle that would import anything outside what checkpoints hold is
refused by `stage1 convert` and `stage1 train --resume` before DeepSpeed unpickles it; real checkpoints
pass."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_train_config
from stage1_ds.cli import main
from stage1_ds.errors import CheckpointError
from stage1_ds.train import loop
from stage1_ds.train.checkpoint import checkpoint_dir, latest_tag
from stage1_ds.train.pickles import ALLOWED, check_folder, file_globals, pickle_globals, safe_load


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


def _memo_trick() -> bytes:
    """A protocol-4 pickle that calls ``posix.system``, its two names fetched back from the memo after two
    harmless strings were pushed and popped (a reader that takes the last two strings sees OrderedDict)."""

    def text(value: str) -> bytes:
        return b"\x8c" + bytes([len(value)]) + value.encode()  # SHORT_BINUNICODE

    memoize, pop = b"\x94", b"0"
    return (
        b"\x80\x04"  # PROTO 4
        + text("posix") + memoize + pop + text("system") + memoize + pop
        + text("collections") + text("OrderedDict") + pop + pop
        + b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + text("true") + b"\x85R."  # TUPLE1, REDUCE, STOP
    )  # fmt: skip


def test_an_import_hidden_behind_the_memo_is_read_for_what_it_is(tmp_path: Path) -> None:
    imported = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            imported.append((module, name))
            raise pickle.UnpicklingError("recorded, not loaded")

    data = _memo_trick()
    with pytest.raises(pickle.UnpicklingError):
        Recorder(io.BytesIO(data)).load()
    assert imported == [("posix", "system")], "the payload really imports posix.system"
    (tmp_path / "step").mkdir()
    (tmp_path / "step" / "mp_rank_00_model_states.pt").write_bytes(data)
    assert file_globals(tmp_path / "step" / "mp_rank_00_model_states.pt") == {("posix", "system")}
    with pytest.raises(CheckpointError, match=r"posix\.system"):
        check_folder(tmp_path / "step")
    # Names that are not the two strings pushed just before the import (here a string pushed and popped
    # between) are never guessed: the import is unknown, and no unknown is allowed.
    popped = data.replace(b"h\x00h\x01\x93", b"h\x00h\x01\x8c\x01x0\x93")
    assert pickle_globals(popped) == {("?", "a global whose name is not a string pushed just before it")}
