"""The memory plan of `stage1 doctor` against measured memory, for the presets a CPU can run.

    python scripts/bench_memory.py [--presets tiny mini t5-small] [--sizes 32 128]

For each preset (the demo config, one `full` phase, fp32): the plan's activations per sample
(`stage1_ds.train.memory`, counted on the meta device) and the measured cost of a sample, the rise of the
process's resident memory over one forward, loss and backward at two micro batches (each in a fresh
process, RSS sampled every 2 ms), divided by the difference of the batches. The ratio measured / planned
says how far the plan is from what the allocator really takes (on a GPU, `scripts/bench_gpu.py` sets the
plan beside `torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: One measurement, run in a fresh process: preset, micro batch, data folder -> the RSS rise in bytes.
MEASURE = """
import sys, threading, time
import numpy as np, psutil
from stage1_ds.config import load_config, resolve_path
from stage1_ds.data.windows import WindowDataset
from stage1_ds.model.losses import stage1_loss
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model
preset, size, data = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = load_config(resolve_path("configs/demo_cpu.yaml"),
                     ["train.phases=[{name: full}]", f"model.encoder.preset={preset}"])
windows = WindowDataset(data, "train", config.data, seed=0)
batch = MaskedWindows(windows, config.model.masking, config.model.patch_len, seed=0).batch(np.arange(size) * 31)
model = Stage1Model(config.model, config.data)
model.set_phase("full")
process = psutil.Process()
base = peak = process.memory_info().rss
done = False
def watch():
    global peak
    while not done:
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.002)
watcher = threading.Thread(target=watch)
watcher.start()
stage1_loss(model(batch).reconstruction, batch, config.model.loss).total.backward()
done = True
watcher.join()
print(peak - base)
"""


def measured_rise(preset: str, size: int, data: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, preset, str(size), str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "mini", "t5-small"])
    parser.add_argument("--sizes", nargs=2, type=int, default=[32, 128], metavar=("SMALL", "LARGE"))
    parser.add_argument(
        "--days", type=int, default=60, help="days of the synthetic market to take windows from"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from stage1_ds.config import load_config, resolve_path
    from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
    from stage1_ds.train.memory import plan_memory

    small, large = args.sizes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        # All train: windows are all the measurement needs, and no split gap limits the days.
        options = PrepareOptions(window_bars=32, split_fractions=(1.0, 0.0, 0.0))
        prepare_synthetic(data, days=args.days, seed=0, options=options)
        for preset in args.presets:
            config = load_config(
                resolve_path("configs/demo_cpu.yaml"),
                ["train.phases=[{name: full}]", f"model.encoder.preset={preset}"],
            )
            planned = plan_memory(config, False, 1, False, 0)[0].activations_per_sample
            rise = {size: measured_rise(preset, size, data) for size in (small, large)}
            per_sample = (rise[large] - rise[small]) / (large - small)
            rows.append({"preset": preset, "planned": planned, "measured": per_sample, "rise": rise})
            print(
                f"{preset:<9} planned {planned / 2**20:7.2f} MiB/sample, measured {per_sample / 2**20:7.2f} "
                f"MiB/sample (RSS rise {rise[small] / 2**20:.0f} MiB at {small}, {rise[large] / 2**20:.0f} MiB "
                f"at {large}): measured / planned {per_sample / planned:.2f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
