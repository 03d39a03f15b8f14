"""Training-step benchmark on CPU: the DeepSpeed engine (ZeRO-2, without and with CPU offload) against a plain
PyTorch AdamW loop on the same `mini` model and batches, ratios in one run. Target: engine <= 1.3x plain.

Usage: python scripts/bench_train.py [--batch-size 16] [--window-bars 64] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from stage1_ds.benchmark import time_engine, time_plain
from stage1_ds.config import (
    Config,
    DataConfig,
    EncoderConfig,
    EncoderPreset,
    ModelConfig,
    Phase,
    PhaseConfig,
    Precision,
    TrainConfig,
)
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
from stage1_ds.data.windows import WindowDataset
from stage1_ds.logs import setup_logging
from stage1_ds.model.masking import MaskedWindows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--window-bars", type=int, default=64)
    parser.add_argument("--windows", type=int, default=5, help="timed windows (the median is reported)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    setup_logging()
    config = Config(
        data=DataConfig(window_bars=args.window_bars),
        model=ModelConfig(encoder=EncoderConfig(preset=EncoderPreset.MINI, dropout=0.0)),
        train=TrainConfig(
            micro_batch_size=args.batch_size, precision=Precision.FP32, phases=[PhaseConfig(Phase.FULL)]
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepare_synthetic(Path(tmp), days=120, seed=0, options=PrepareOptions(window_bars=args.window_bars))
        data = MaskedWindows(WindowDataset(tmp, "train", config.data), config.model.masking, 8, seed=0)
        batches = [data.batch(np.arange(args.batch_size) * 31 + i) for i in range(4)]
    timing = dict(warmup=3, windows=args.windows, steps_per_window=args.steps)
    results = {"plain_s": time_plain(config, Phase.FULL, batches, **timing).median_s}
    for name, ds_config in (
        ("zero2", "ds_configs/zero2.json"),
        ("zero2_offload", "ds_configs/zero2_offload.json"),
    ):
        config.train.ds_config = ds_config
        results[f"{name}_s"] = time_engine(config, Phase.FULL, batches, **timing).median_s
        results[f"{name}_over_plain"] = results[f"{name}_s"] / results["plain_s"]
    print(f"mini preset, full phase, fp32, batch {args.batch_size}, six timeframes x {args.window_bars} bars")
    print(f"plain PyTorch AdamW loop:     {results['plain_s'] * 1000:7.1f} ms/step")
    for name in ("zero2", "zero2_offload"):
        print(
            f"DeepSpeed {name:<14}      {results[f'{name}_s'] * 1000:7.1f} ms/step  "
            f"({results[f'{name}_over_plain']:.2f}x plain; target <= 1.3x)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
