"""Training-step benchmark on CPU: the DeepSpeed engine (ZeRO-2, without and with CPU offload) against a plain
PyTorch AdamW loop on the same `mini` model and batches, ratios in one run. Target: engine <= 1.3x plain.

Usage: python scripts/bench_train.py [--batch-size 16] [--window-bars 64] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from stage1_ds.benchmark import bench_config, masked_batches, time_engine, time_plain
from stage1_ds.config import Phase, Precision
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
from stage1_ds.logs import setup_logging

VARIANTS = ("zero2", "zero2_offload")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--window-bars", type=int, default=64)
    parser.add_argument("--windows", type=int, default=5, help="timed windows (the median is reported)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
    parser.add_argument("--rounds", type=int, default=3, help="repeat the three measurements; medians")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    setup_logging()
    config = bench_config("mini", args.window_bars, args.batch_size, precision=Precision.FP32)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_synthetic(Path(tmp), days=120, seed=0, options=PrepareOptions(window_bars=args.window_bars))
        batches = masked_batches(tmp, config, 4)
    timing = dict(warmup=3, windows=args.windows, steps_per_window=args.steps)
    # Rounds of (plain, engine, engine + offload) back to back: on a shared 2-core machine the speed drifts
    # by tens of percent over a minute, so each round's ratios compare neighbours; medians over rounds.
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        measured = {"plain_s": time_plain(config, Phase.FULL, batches, **timing).median_s}
        for name in VARIANTS:
            config.train.ds_config = f"ds_configs/{name}.json"
            measured[f"{name}_s"] = time_engine(config, Phase.FULL, batches, **timing).median_s
            measured[f"{name}_over_plain"] = measured[f"{name}_s"] / measured["plain_s"]
        rounds.append(measured)
    results = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print(
        f"mini preset, full phase, fp32, batch {args.batch_size}, six timeframes x {args.window_bars} bars, "
        f"medians of {args.rounds} rounds"
    )
    print(f"plain PyTorch AdamW loop:     {results['plain_s'] * 1000:7.1f} ms/step")
    for name in VARIANTS:
        ratios = ", ".join(f"{r[f'{name}_over_plain']:.2f}" for r in rounds)
        print(
            f"DeepSpeed {name:<14}      {results[f'{name}_s'] * 1000:7.1f} ms/step  "
            f"({results[f'{name}_over_plain']:.2f}x plain; rounds {ratios}; target <= 1.3x)"
        )
    if args.json:
        args.json.write_text(json.dumps({"median": results, "rounds": rounds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
