"""The benchmark scripts keep working: the GPU one on CPU (the tiny preset, one timed step per measurement),
the data-at-scale one on two small sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, fresh_process_env


def run_script(name: str, *args: str, out: Path, timeout: int = 300) -> tuple[str, Any]:
    """Run ``scripts/NAME`` with ``args`` and ``--json OUT`` in a fresh process; its stdout and the JSON it
    wrote (it must exit 0)."""
    command = [sys.executable, str(REPO / "scripts" / name), *args, "--json", str(out)]
    result = subprocess.run(
        command,
        cwd=REPO,
        env=fresh_process_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_bench_gpu_runs_on_cpu_with_the_tiny_preset(tmp_path: Path) -> None:
    stdout, report = run_script(
        "bench_gpu.py",
        *("--preset", "tiny", "--batch-size", "2", "--warmup", "1", "--windows", "1", "--steps", "1"),
        out=tmp_path / "bench.json",
        timeout=600,
    )
    assert report["tokens_per_sample"] == 6 * 128 // 8, "six timeframes of 128 bars in patches of 8"
    assert {(r["phase"], r["offload"]) for r in report["runs"]} == {
        (p, o) for p in ("frozen", "lora", "full") for o in (False, True)
    }
    for run in report["runs"]:
        assert run["samples_per_s"] > 0 and run["step_s"] > 0
        assert run["planned_memory_gb"] > 0
        assert run["mfu"] is None and run["largest_micro_batch"] is None, "GPU-only figures stay empty on CPU"
    checks = {c["name"] for c in report["doctor"]["checks"]}
    assert report["doctor"]["ok"] and {"accelerators", "memory", "data"} <= checks
    assert set(report["ratios"]) == {
        "engine_over_plain_full",
        "loop_per_timeframe_over_shared_plain_full",
        "frozen_over_full_samples_per_s",
        "offload_over_no_offload_step_full",
        "time_bias_over_index_bias_plain_full",
    }
    assert "frozen" in stdout and "engine_over_plain_full" in stdout
    assert (
        report["encoder"]["decision_ms"] > 0 and report["encoder"]["forward_only_ms"] > 0
    )  # figures, not timed


def test_bench_data_scale_measures_every_size_and_worker_count(tmp_path: Path) -> None:
    _, report = run_script(
        "bench_data.py",
        *("--scale", "--scale-sizes", "1", "2", "--scale-dir", str(tmp_path / "scale"), "--batches", "2"),
        out=tmp_path / "scale.json",
    )
    for size in (1, 2):
        for workers in (1, 2):
            measured = report[f"prepare_{size}x1y_{workers}w"]
            assert measured["seconds"] > 0 and measured["total_peak_rss_mb"] > 50
            assert measured["folder_mb"] == pytest.approx(
                size * report["prepare_1x1y_1w"]["folder_mb"], rel=0.2
            )
    assert report["prepare_2x1y_2w"]["worker_peak_rss_mb"] > 50, "the worker processes are measured"
    assert report["serve_2_instruments"]["windows_per_s_unmasked"] > 0
    assert not any((tmp_path / "scale").iterdir()), "the prepared folders are removed"


def test_bench_data_serve_scale_measures_one_and_four_serving_processes(tmp_path: Path) -> None:
    _, report = run_script(
        "bench_data.py",
        *("--serve-scale", "--serve-sizes", "1", "--scale-dir", str(tmp_path / "scale"), "--batches", "2"),
        out=tmp_path / "serve.json",
    )
    measured = report["1_instrument_years"]
    assert len(measured["together"]) == 4
    for process in [measured["alone"], *measured["together"]]:
        assert 50 < process["uss_mb"] <= process["rss_mb"] and process["windows_per_s"] > 0
        assert 50 < process["rssanon_mb"] < process["rss_mb"], "own memory is what RSS has beyond the files"
        assert process["first_batch_s"] > 0 and process["anchors"] > 100_000
    assert not any((tmp_path / "scale").iterdir()), "the prepared folder is removed"


def test_bench_data_context_measures_serving_with_and_without_other_instruments(tmp_path: Path) -> None:
    stdout, measured = run_script(
        "bench_data.py",
        *("--context", "--batches", "2", "--context-days", "250"),
        out=tmp_path / "context.json",
    )
    assert measured["instruments"] == 8
    assert 5.0 < measured["context_instruments_per_sample"] <= 7.0, "the synthetic markets trade together"
    per_sample = 1 + measured["context_instruments_per_sample"]
    assert measured["instrument_windows_per_s_context"] == pytest.approx(
        measured["samples_per_s_context"] * per_sample
    )
    assert measured["ratio"] == pytest.approx(
        measured["samples_per_s_context"] / measured["samples_per_s_plain"]
    )
    assert "with context" in stdout


def test_bench_model_context_measures_the_step_with_and_without_other_instruments(tmp_path: Path) -> None:
    stdout, measured = run_script(
        "bench_model.py",
        *("--context", "--preset", "tiny", "--batch-size", "4", "--window-bars", "32", "--repeats", "1"),
        out=tmp_path / "model_context.json",
    )
    assert measured["context_instruments_per_sample"] == 7.0, "the synthetic markets trade together"
    assert measured["context_over_plain"] == pytest.approx(measured["context_s"] / measured["plain_s"])
    assert measured["context_activation_mb"] > measured["plain_activation_mb"] > 0, "context is read"
    assert "target <= 1.5x" in stdout


def test_bench_encode_measures_a_decision_the_derivation_and_many_decisions(tmp_path: Path) -> None:
    _, figures = run_script(
        "bench_encode.py", "--repeats", "3", "--decisions", "300", out=tmp_path / "encode.json"
    )
    # Figures, not a timed test: the order of two timings is noise when another test shares the cores.
    assert figures["decision_ms"] > 0 and figures["forward_only_ms"] > 0 and figures["derive_week_ms"] > 0
    assert figures["derive_week_bars"] == 7 * 1440 and figures["decisions"] >= 256
    assert figures["batched_max_abs_difference"] <= 1e-5
    assert set(figures["ratios"]) == {"decision_over_forward_only", "embed_over_encode_windows_per_s"}


def test_bench_memory_sets_the_plan_beside_a_measured_cost_per_sample(tmp_path: Path) -> None:
    _, rows = run_script(
        "bench_memory.py",
        *("--presets", "tiny", "--sizes", "8", "64", "--days", "10"),
        out=tmp_path / "memory.json",
        timeout=600,
    )
    (row,) = rows
    assert row["preset"] == "tiny" and row["planned"] > 0 and row["rise"]["64"] > 0


def test_the_hostile_input_benchmark_runs_its_cases_and_says_each_outcome(tmp_path: Path) -> None:
    """Three of its cases (the script runs each through the real command): bars, a flag error, a refused
    checkpoint; the full list runs in about 35 s (docs/data.md)."""
    stdout, outcomes = run_script(
        "hostile_inputs.py", "--cases", "MetaTrader|--delimiter ''|checkpoint", out=tmp_path / "hostile.json"
    )
    assert [o["kind"] for o in outcomes] == ["one file", "flags", "code execution"]
    assert all(o["ok"] for o in outcomes) and "3 of 3 cases as expected" in stdout
