"""Encoder benchmark: `stage1_ds.Encoder.embed` from raw 1-minute bars, as a trading loop calls it.

- one decision: ``embed(buffer)`` at the latest time from a rolling buffer of 1-minute bars (cleaning,
  deriving m5..h4, windows, the forward pass), against the forward pass alone on the same window;
- the derivation: cleaning a week of 1-minute bars and deriving every timeframe from them;
- many decisions in one call: ``embed(bars, at=times)`` windows/s, against ``stage1 encode`` of the same
  windows from a prepared folder.

Usage: python scripts/bench_encode.py [--model EXPORT] [--repeats 50] [--json bench_encode.json]
Without --model: the demo config's architecture (mini preset, 32-bar windows), random weights, on the
synthetic market. Figures are medians after warm-up, and ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.benchmark import decision_latency, synthetic_frame, time_steps
from stage1_ds.config import load_config, resolve_path
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
from stage1_ds.encoder import Encoder
from stage1_ds.encoding import encode
from stage1_ds.model.stage1 import Stage1Model

DAYS, SEED = 60, 0
WEEK = 7 * 1440


def median_ms(call: Any, repeats: int, warmup: int = 5) -> float:
    return time_steps(lambda _: call(), warmup=warmup, windows=repeats, steps_per_window=1).median_s * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, help="an export folder (default: the demo architecture, random)"
    )
    parser.add_argument("--buffer-days", type=int, default=14, help="calendar days in the rolling buffer")
    parser.add_argument("--decisions", type=int, default=2000, help="decision times in the batched call")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    frame = synthetic_frame(DAYS, SEED)
    if args.model:
        encoder = Encoder.from_pretrained(args.model)
    else:
        config = load_config(resolve_path("configs/demo_cpu.yaml"))
        model = Stage1Model(config.model, config.data)
        stats = {"instruments": {}, "lag_bars": config.data.window_bars // 2}
        encoder = Encoder(model, stats, {"bucket_origin_seconds": 0, "instruments": {}})  # synthetic buckets
    if "SYNTH" not in encoder.instruments:
        encoder.add_instrument("SYNTH", frame.iloc[: len(frame) // 2])
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "model": str(args.model or "configs/demo_cpu.yaml (random weights)"),
        "window_bars": {tf.value: n for tf, n in encoder.window_bars.items()},
    }

    # One decision: the newest bar of a rolling buffer.
    results.update(decision_latency(encoder.model, args.buffer_days, args.repeats))
    week = frame.iloc[-WEEK:]
    results["derive_week_ms"] = median_ms(
        lambda: encoder.derive(encoder.minute_bars(week, "SYNTH")), args.repeats
    )
    results["derive_week_bars"] = len(week)

    # Many decisions in one call, against `stage1 encode` of the same windows from a prepared folder.
    with tempfile.TemporaryDirectory() as tmp:
        window = max(encoder.window_bars.values())
        prepare_synthetic(
            Path(tmp), DAYS, SEED, PrepareOptions(window_bars=window, split_fractions=(0.5, 0.25, 0.25))
        )
        stats = {"instruments": {"SYNTH": encoder._stats["SYNTH"]}}
        start = time.perf_counter()
        encoded = encode(encoder.model, tmp, "test", max_batches=max(1, args.decisions // 256), stats=stats)
        encode_s = time.perf_counter() - start
    times = encoded["anchor_time"]
    start = time.perf_counter()
    embedded = encoder.embed(frame, at=times, instrument="SYNTH")
    embed_s = time.perf_counter() - start
    tf = next(iter(embedded))
    results["batched_max_abs_difference"] = float(np.abs(embedded[tf] - encoded[f"{tf}_pooled"]).max())
    results["decisions"] = len(times)
    results["embed_windows_per_s"] = len(times) / embed_s
    results["encode_windows_per_s"] = len(times) / encode_s
    results["ratios"] = {
        "decision_over_forward_only": results["decision_ms"] / results["forward_only_ms"],
        "embed_over_encode_windows_per_s": results["embed_windows_per_s"] / results["encode_windows_per_s"],
    }
    print(f"{results['device']}, {results['threads']} threads, {results['model']}")
    print(
        f"one decision from a {args.buffer_days}-day buffer ({results['buffer_bars']:,.0f} bars): {results['decision_ms']:.1f} ms "
        f"(forward pass alone {results['forward_only_ms']:.1f} ms)"
    )
    print(
        f"cleaning and deriving every timeframe from a week ({len(week):,} bars): {results['derive_week_ms']:.2f} ms"
    )
    print(
        f"{len(times):,} decisions in one call: {results['embed_windows_per_s']:,.0f} windows/s "
        f"(stage1 encode of a prepared folder: {results['encode_windows_per_s']:,.0f}; largest difference "
        f"{results['batched_max_abs_difference']:.1e})"
    )
    for name, value in results["ratios"].items():
        print(f"{name}: {value:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
