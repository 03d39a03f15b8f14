"""The GPU benchmark script keeps working on CPU (the mini preset, one timed step per measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, fresh_process_env


@pytest.mark.slow
def test_bench_gpu_runs_on_cpu_with_the_mini_preset(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench_gpu.py"),
        "--preset",
        "mini",
        "--batch-size",
        "2",
        "--warmup",
        "1",
        "--windows",
        "1",
        "--steps",
        "1",
        "--json",
        str(out),
    ]
    result = subprocess.run(
        command, cwd=REPO, env=fresh_process_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tokens_per_sample"] == 6 * 128 // 8, "six timeframes of 128 bars in patches of 8"
    assert {(r["phase"], r["offload"]) for r in report["runs"]} == {
        (p, o) for p in ("frozen", "lora", "full") for o in (False, True)
    }
    for run in report["runs"]:
        assert run["samples_per_s"] > 0 and run["step_s"] > 0
        assert run["mfu"] is None and run["largest_micro_batch"] is None, "GPU-only figures stay empty on CPU"
    assert set(report["ratios"]) == {
        "engine_over_plain_full",
        "loop_per_timeframe_over_shared_plain_full",
        "frozen_over_full_samples_per_s",
        "offload_over_no_offload_step_full",
    }
    assert "frozen" in result.stdout and "engine_over_plain_full" in result.stdout
