"""What a user asks before renting a node: Stage-1 training throughput, MFU and memory per phase.

    python scripts/bench_gpu.py                                 # GPU: t5-large, bf16, batch 64
    python scripts/bench_gpu.py --preset mini --batch-size 4 --windows 1 --steps 1   # CPU smoke run (CI)

For each phase (frozen, lora, full) and ZeRO-2 without and with CPU offload, under the DeepSpeed engine:
samples/s, patch-tokens/s, MFU, peak accelerator memory beside the memory plan of `stage1 doctor`
(`stage1_ds.train.memory`) and (on a GPU) the largest micro-batch that fits. `stage1 doctor`'s checks run
first and are printed and kept in the JSON.
In the same run, for the full phase: the engine against a plain PyTorch AdamW loop, and the shared encoder
called once against a loop that calls it once per timeframe, and the time-aware attention bias (the
default) against T5's index bias. MFU counts forward + backward as
(6 x trainable + 4 x frozen parameters) x patch tokens, against the GPU's dense bf16 peak (989 TFLOP/s for
H100/H200). Six timeframes x 128 bars, patch 8: 96 patch tokens per sample. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import deepspeed
import torch
import transformers

from stage1_ds.benchmark import (
    bench_config,
    build_model,
    decision_latency,
    loop_forward,
    masked_batches,
    time_engine,
    time_plain,
)
from stage1_ds.config import WINDOW_BARS, EncoderPreset, Phase, PositionBias
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
from stage1_ds.doctor import checks_json, format_checks, run_doctor
from stage1_ds.logs import setup_logging
from stage1_ds.model.masking import num_patches
from stage1_ds.train.engine import is_offloaded, read_ds_json, use_bf16
from stage1_ds.train.memory import GIB, RUNTIME_BYTES, plan_memory
from stage1_ds.train.metrics import flops_per_token, peak_flops


def largest_batch(
    preset: str, ds_config: str, phase: Phase, data_dir: str, start: int, cap: int
) -> int | None:
    """Double the micro-batch from ``start`` until a step runs out of GPU memory (or ``cap``)."""
    if not torch.cuda.is_available():
        return None
    fits, size = None, start
    while size <= cap:
        config = bench_config(preset, WINDOW_BARS, size, ds_config=ds_config, phase=phase)
        try:
            time_engine(
                config,
                phase,
                masked_batches(data_dir, config, 1),
                warmup=1,
                windows=1,
                steps_per_window=1,
            )
            fits = size
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        size *= 2
    return fits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="t5-large", choices=[p.value for p in EncoderPreset])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
    parser.add_argument("--max-batch-cap", type=int, default=1024, help="stop the largest-batch search here")
    parser.add_argument("--skip-largest-batch", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench_gpu.json"))
    args = parser.parse_args()
    setup_logging()
    timing = dict(warmup=args.warmup, windows=args.windows, steps_per_window=args.steps)
    peak = peak_flops()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
        "versions": {
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
        },
        "preset": args.preset,
        "batch_size": args.batch_size,
        "peak_flops": peak,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        prepare_synthetic(Path(tmp), days=365, seed=0, options=PrepareOptions(window_bars=WINDOW_BARS))
        checks, table = run_doctor(
            bench_config(args.preset, WINDOW_BARS, args.batch_size), [Path(tmp)], None, 1, 1
        )
        print(format_checks(checks, table))
        results["doctor"] = checks_json(checks, table)
        probe = bench_config(args.preset, WINDOW_BARS, args.batch_size)
        batches = masked_batches(tmp, probe, 4)
        tokens = sum(
            num_patches(w.features.shape[1], probe.model.patch_len) for w in batches[0].windows.values()
        )
        results["tokens_per_sample"] = tokens
        for phase in (Phase.FROZEN, Phase.LORA, Phase.FULL):
            per_token = flops_per_token(build_model(probe, phase))
            for offload in (False, True):
                ds_config = "ds_configs/zero2_offload.json" if offload else "ds_configs/zero2.json"
                config = bench_config(
                    args.preset, WINDOW_BARS, args.batch_size, ds_config=ds_config, phase=phase
                )
                measured = time_engine(config, phase, batches, **timing)
                samples = args.batch_size * measured.steps_per_s
                ds = read_ds_json(config)
                planned = plan_memory(config, use_bf16(config.train.precision), 1, is_offloaded(ds), 0)[0]
                run = {
                    "phase": phase.value,
                    "offload": offload,
                    "step_s": measured.median_s,
                    "samples_per_s": samples,
                    "tokens_per_s": samples * tokens,
                    "mfu": samples * tokens * per_token / peak if peak else None,
                    "peak_memory_gb": measured.peak_memory_gb,
                    # max_memory_allocated does not see the CUDA context: compare without its allowance
                    "planned_memory_gb": (planned.total - RUNTIME_BYTES) / GIB,
                    "largest_micro_batch": None
                    if args.skip_largest_batch
                    else largest_batch(
                        args.preset, ds_config, phase, tmp, args.batch_size, args.max_batch_cap
                    ),
                }
                results["runs"].append(run)
        full = bench_config(args.preset, WINDOW_BARS, args.batch_size)
        plain = time_plain(full, Phase.FULL, batches, **timing).median_s
        loop = time_plain(full, Phase.FULL, batches, forward=loop_forward, **timing).median_s
        index = copy.deepcopy(full)  # the model before the time-aware keys: T5's index bias
        index.model.position_bias, index.model.timeframe_pair_bias = PositionBias.INDEX, False
        index_plain = time_plain(index, Phase.FULL, batches, **timing).median_s
        # A Stage-2 decision: `Encoder.embed` at the newest bar of a rolling buffer (bf16 on a GPU).
        results["encoder"] = decision_latency(build_model(full, Phase.FULL), None, args.windows * args.steps)
    by = {(r["phase"], r["offload"]): r for r in results["runs"]}
    engine_full = by[("full", False)]["step_s"]
    results["ratios"] = {
        "engine_over_plain_full": engine_full / plain,
        "loop_per_timeframe_over_shared_plain_full": loop / plain,
        "frozen_over_full_samples_per_s": by[("frozen", False)]["samples_per_s"]
        / by[("full", False)]["samples_per_s"],
        "offload_over_no_offload_step_full": by[("full", True)]["step_s"] / engine_full,
        "time_bias_over_index_bias_plain_full": plain / index_plain,
    }
    results["plain_full_step_s"], results["loop_full_step_s"] = plain, loop
    results["index_bias_plain_full_step_s"] = index_plain
    print(
        f"{results['device']}, preset {args.preset}, micro-batch {args.batch_size}, {tokens} patch tokens/sample"
    )
    print(
        f"{'phase':<8}{'offload':<9}{'ms/step':>9}{'samples/s':>11}{'tokens/s':>12}{'MFU':>7}{'peak GB':>9}"
        f"{'plan GB':>9}{'max batch':>10}"
    )
    for r in results["runs"]:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "-"
        memory = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "-"
        print(
            f"{r['phase']:<8}{'yes' if r['offload'] else 'no':<9}{r['step_s'] * 1000:>9.1f}{r['samples_per_s']:>11.1f}"
            f"{r['tokens_per_s']:>12.0f}{mfu:>7}{memory:>9}{r['planned_memory_gb']:>9.1f}"
            f"{r['largest_micro_batch'] or '-'!s:>10}"
        )
    for name, value in results["ratios"].items():
        print(f"{name}: {value:.2f}x")
    encoder = results["encoder"]
    print(
        f"one Encoder.embed decision: {encoder['decision_ms']:.1f} ms (forward pass alone "
        f"{encoder['forward_only_ms']:.1f} ms)"
    )
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
