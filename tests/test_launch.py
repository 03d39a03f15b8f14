"""Launching and preemption: the launch scripts parse, and SIGTERM/SIGUSR1 save a checkpoint and stop the run
cleanly, whichever rank receives them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import REPO, deepspeed_command, fresh_process_env
from stage1_ds.train.checkpoint import checkpoint_dir, latest_tag, read_meta

#: A run that would go on for a long time: it ends only when it is asked to stop.
ENDLESS = [
    "--config",
    str(REPO / "configs" / "demo_cpu.yaml"),
    "model.encoder.preset=tiny",
    "data.window_bars=16",
    "train.micro_batch_size=4",
    "train.max_steps=100000",
    "train.phases=[{name: full}]",
    "train.save_every_steps=3",
    "train.eval_every_steps=100000",
    "train.image_every_steps=100000",
    "train.log_every_steps=100000",
]


@pytest.mark.parametrize("script", sorted((REPO / "launch").iterdir()), ids=lambda p: p.name)
def test_launch_scripts_parse(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=fresh_process_env(), stdout=out, stderr=subprocess.STDOUT, text=True
        )


def _wait_for_a_checkpoint(process: subprocess.Popen, run: Path, log: Path) -> int:
    """The step of the run's first complete checkpoint, once there is one."""
    deadline = time.time() + 120
    while latest_tag(run) is None:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.2)
    return int(read_meta(run)[1]["global_step"])


def _assert_stopped_cleanly(
    process: subprocess.Popen, run: Path, log: Path, ranks: int, by: signal.Signals, first_save: int
) -> None:
    """The run saved a checkpoint of the step the signal came at on every rank, said so in one line with
    the resume command, and exited 128 + the signal's number, as a shell reports a process it stopped."""
    try:
        process.wait(timeout=120)
    finally:
        if process.poll() is None:  # a rank left waiting in a collective: the failure this guards against
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
    output = log.read_text()
    assert process.returncode == 128 + by, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    tag, meta = read_meta(run)
    (line,) = [text for text in output.splitlines() if f"stopped by {by.name} at step" in text]
    assert f"at step {meta['global_step']} after saving a checkpoint: {checkpoint_dir(run) / tag}" in line
    assert f"--out {run} --resume" in line
    assert meta["global_step"] > first_save, "stopped where the signal came, not at the save waited for"
    rng_files = sorted(p.name for p in (checkpoint_dir(run) / tag).glob("rng_rank*.pt"))
    assert rng_files == [f"rng_rank{r}.pt" for r in range(ranks)], "every rank saved the same step"


def test_sigterm_saves_and_stops_a_single_process_run(synthetic_small: Path, tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "log.txt"
    command = [sys.executable, "-m", "stage1_ds", "train", "--data", str(synthetic_small), "--out", str(run)]
    process = _start([*command, *ENDLESS], log)
    first_save = _wait_for_a_checkpoint(process, run, log)
    time.sleep(0.5)  # a few steps past the periodic save
    process.send_signal(signal.SIGTERM)
    _assert_stopped_cleanly(process, run, log, ranks=1, by=signal.SIGTERM, first_save=first_save)


def test_ctrl_c_stops_with_one_line_naming_the_checkpoint_and_the_resume_command(
    synthetic_small: Path, tmp_path: Path
) -> None:
    run, log = tmp_path / "run", tmp_path / "log.txt"
    command = [sys.executable, "-m", "stage1_ds", "train", "--data", str(synthetic_small), "--out", str(run)]
    # A process started from a background job inherits SIGINT ignored; a terminal's Ctrl-C finds it default.
    with log.open("w") as out:
        process = subprocess.Popen(
            [*command, *ENDLESS],
            cwd=REPO,
            env=fresh_process_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        _wait_for_a_checkpoint(process, run, log)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:  # never leave an endless run behind to slow every later test
            process.kill()
    output = log.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    (line,) = [text for text in output.splitlines() if "interrupted at step" in text]
    tag = latest_tag(run)
    assert tag is not None and str(checkpoint_dir(run) / tag) in line
    assert (
        f"continue with: stage1 train --config {ENDLESS[1]} --data {synthetic_small} --out {run} --resume"
        in line
    )
    assert "'train.phases=[{name: full}]'" in line, "overrides quoted for a shell"


@pytest.mark.slow
def test_sigusr1_to_one_rank_stops_both_at_the_same_step(synthetic_small: Path, tmp_path: Path) -> None:
    """Also the train script's whole path under the launcher on two ranks (the test that only did that is
    folded in here): the legacy --data_dir, a phase change (frozen to full, the engine rebuilt on both
    ranks), evaluation and the TensorBoard image, and ZeRO-2's optimizer shards split evenly."""
    run, log = tmp_path / "run", tmp_path / "log.txt"
    script = str(REPO / "scripts" / "train_stage1.py")
    staged = [
        *(a for a in ENDLESS if not a.startswith(("train.phases", "train.eval_every", "train.image_every"))),
        "train.phases=[{name: frozen, until_step: 2}, {name: full}]",
        "train.eval_every_steps=2",
        "train.image_every_steps=2",
    ]
    process = _start(
        deepspeed_command(2, script, "--data_dir", str(synthetic_small), "--out", str(run), *staged), log
    )
    first_save = _wait_for_a_checkpoint(process, run, log)
    time.sleep(0.5)
    ranks = [
        p for p in psutil.Process(process.pid).children(recursive=True) if "--local_rank=1" in p.cmdline()
    ]
    assert len(ranks) == 1, [p.cmdline() for p in psutil.Process(process.pid).children(recursive=True)]
    ranks[0].send_signal(signal.SIGUSR1)  # rank 1 only, as a scheduler might
    _assert_stopped_cleanly(process, run, log, ranks=2, by=signal.SIGUSR1, first_save=first_save)
    tag, meta = read_meta(run)
    assert meta["world_size"] == 2 and meta["phase"] == "full"
    shards = sorted((checkpoint_dir(run) / tag).glob("*optim_states.pt"))
    sizes = [
        sum(
            t.numel()
            for t in torch.load(shard, weights_only=False)["optimizer_state_dict"][
                "single_partition_of_fp32_groups"
            ]
        )
        for shard in shards
    ]
    assert len(sizes) == 2 and abs(sizes[0] - sizes[1]) < 64, sizes
    assert "val loss" in log.read_text()


@pytest.mark.parametrize("skip", [False, True])
def test_the_single_node_launch_stops_when_the_doctor_finds_a_fail(tmp_path: Path, skip: bool) -> None:
    """A data folder that is not there is a FAIL of `stage1 doctor`: the launch stops before `deepspeed`
    (a stand-in here that records its call) unless SKIP_DOCTOR=1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "deepspeed_called"
    stub = bin_dir / "deepspeed"
    stub.write_text(f'#!/usr/bin/env bash\necho "$@" > {called}\n')
    stub.chmod(0o755)
    path = f"{bin_dir}:{Path(sys.executable).parent}:{fresh_process_env()['PATH']}"  # the venv's python
    env = {**fresh_process_env(), "PATH": path}
    if skip:
        env["SKIP_DOCTOR"] = "1"
    script = REPO / "launch" / "single_node.sh"
    args = ["configs/demo_cpu.yaml", str(tmp_path / "no_data"), str(tmp_path / "run"), "2"]
    result = subprocess.run(
        ["bash", str(script), *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    if skip:
        assert result.returncode == 0 and "--num_gpus 2" in called.read_text()
    else:
        assert result.returncode == 1 and not called.exists()
        assert "FAIL  data" in result.stdout and "cannot start: data" in result.stdout
