"""Model benchmark: forward+backward of the shared encoder called once per batch (fusion joint, with and
without the time bias and calendar inputs, and per_timeframe) against a loop that calls the encoder once
per timeframe (the design this project replaces).

Usage: python scripts/bench_model.py [--preset mini] [--batch-size 32] [--repeats 10]
       python scripts/bench_model.py --context [--window-bars 32] [--batch-size 32]

Same model weights, same batch, same masks; figures are medians and ratios within one run.

Context (`data.context`): the same batch of eight synthetic instruments read by the model with K = 7 context
instruments (one summary token each, `stage1_ds.model.embed.ContextSummary`) against the model without
context; forward + backward, the two taking turns step by step. Target: at most 1.5x.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stage1_ds.benchmark import bench_config, loop_forward, masked_batches, time_steps
from stage1_ds.config import CALENDAR_FEATURES, WINDOW_BARS, EncoderPreset, Fusion, PositionBias
from stage1_ds.data.batch import Batch
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic
from stage1_ds.model.masking import num_patches
from stage1_ds.model.stage1 import Stage1Model


def forward_backward_s(forward: Callable[[], dict[str, torch.Tensor]], repeats: int) -> float:
    """Median seconds of forward + backward over ``repeats`` steps, after two warm-up steps."""

    def step(_: int) -> None:
        loss = torch.stack([v.square().mean() for v in forward().values()]).sum()
        loss.backward()

    return time_steps(step, warmup=2, windows=repeats, steps_per_window=1).median_s


def in_turns(variants: dict[str, tuple[Stage1Model, Batch]], repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward per variant (a model and its batch), the variants taking turns
    step by step so that a drift of the machine's speed during the run (several percent on this shared CPU)
    falls on each alike; two warm-up turns."""
    steps: dict[str, list[float]] = {name: [] for name in variants}
    for turn in range(2 + repeats):
        for name, (model, batch) in variants.items():
            start = time.perf_counter()
            loss = torch.stack([v.square().mean() for v in model(batch).reconstruction.values()]).sum()
            loss.backward()
            if turn >= 2:
                steps[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in steps.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mini", choices=[p.value for p in EncoderPreset])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window-bars", type=int, default=WINDOW_BARS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--context", action="store_true", help="K = 7 context instruments against none")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.context:
        return bench_context(args)
    torch.manual_seed(0)
    config = bench_config(args.preset, args.window_bars, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        prepare_synthetic(Path(tmp), days=365, seed=0, options=PrepareOptions(window_bars=args.window_bars))
        batch = masked_batches(tmp, config, 1)[0]

    # The reference is the joint model as it was before the time-aware keys: T5's index bias, no calendar.
    def built(position_bias: PositionBias, pair_bias: bool, calendar: list[str]) -> Stage1Model:
        variant = copy.deepcopy(config.model)
        variant.position_bias, variant.timeframe_pair_bias, variant.calendar = (
            position_bias,
            pair_bias,
            calendar,
        )
        torch.manual_seed(0)
        return Stage1Model(variant, config.data)

    def timed(model: Stage1Model) -> float:
        return forward_backward_s(lambda: model(batch).reconstruction, args.repeats)

    joint = {
        "joint_s": built(PositionBias.INDEX, False, []),
        "joint_time_s": built(PositionBias.TIME, True, []),
        "joint_time_calendar_s": built(PositionBias.TIME, True, list(CALENDAR_FEATURES)),
    }
    results = in_turns({name: (variant, batch) for name, variant in joint.items()}, args.repeats)
    for name in ("joint_time_s", "joint_time_calendar_s"):
        results[name.replace("_s", "_over_joint")] = results[name] / results["joint_s"]
    model = joint["joint_s"]
    model.config.fusion = Fusion.PER_TIMEFRAME
    results["per_timeframe_s"] = timed(model)
    results["loop_s"] = forward_backward_s(lambda: loop_forward(model, batch), args.repeats)
    results["loop_over_joint"] = results["loop_s"] / results["joint_s"]
    results["loop_over_per_timeframe"] = results["loop_s"] / results["per_timeframe_s"]
    tokens = sum(num_patches(w.features.shape[1], config.model.patch_len) for w in batch.windows.values())
    print(
        f"preset {args.preset}, batch {args.batch_size}, six timeframes x {args.window_bars} bars "
        f"({tokens} patch tokens per sample), torch threads {torch.get_num_threads()}"
    )
    print(f"forward+backward, fusion joint, index:   {results['joint_s'] * 1000:8.1f} ms")
    print(
        f"  ... with the time bias:                {results['joint_time_s'] * 1000:8.1f} ms "
        f"({results['joint_time_over_joint']:.2f}x)"
    )
    print(
        f"  ... with the time bias and calendar:   {results['joint_time_calendar_s'] * 1000:8.1f} ms "
        f"({results['joint_time_calendar_over_joint']:.2f}x)"
    )
    print(f"forward+backward, fusion per_timeframe:  {results['per_timeframe_s'] * 1000:8.1f} ms")
    print(f"forward+backward, encoder loop per tf:   {results['loop_s'] * 1000:8.1f} ms")
    print(
        f"loop / joint = {results['loop_over_joint']:.2f}x, loop / per_timeframe = "
        f"{results['loop_over_per_timeframe']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def bench_context(args: argparse.Namespace) -> int:
    """Forward + backward with K = 7 context instruments against none, same weights and batch (see the
    module docstring); peak memory of the activations beside."""
    config = bench_config(args.preset, args.window_bars, args.batch_size)
    config.data.context, config.data.context_max = True, 7
    with tempfile.TemporaryDirectory() as tmp:
        # One train split only (the batch is drawn from it; no val split has to outlast the gap), prepared
        # in this process: a worker pays a fresh interpreter and torch import, more than these bars cost.
        options = PrepareOptions(window_bars=args.window_bars, split_fractions=(1.0, 0.0, 0.0), workers=1)
        days = 15 * max(1, args.window_bars // 32)
        prepare_synthetic(Path(tmp), days=days, seed=0, options=options, instruments=8)
        batch = masked_batches(tmp, config, 1)[0]
    assert batch.context is not None
    torch.manual_seed(0)
    model = Stage1Model(config.model, config.data)
    without = copy.deepcopy(batch)
    without.context = None
    results = in_turns({"plain_s": (model, without), "context_s": (model, batch)}, args.repeats)
    results["context_over_plain"] = results["context_s"] / results["plain_s"]
    for name, served in (("plain", without), ("context", batch)):
        results[f"{name}_activation_mb"] = saved_activation_bytes(model, served) / 2**20
    results["activation_ratio"] = results["context_activation_mb"] / results["plain_activation_mb"]
    results["context_instruments_per_sample"] = float(batch.context.present.sum()) / batch.size
    tokens = sum(num_patches(w.features.shape[1], config.model.patch_len) for w in batch.windows.values())
    print(
        f"preset {args.preset}, batch {args.batch_size}, six timeframes x {args.window_bars} bars ({tokens} "
        f"patch tokens per sample), torch threads {torch.get_num_threads()}, eight synthetic instruments"
    )
    print(f"forward+backward without context:        {results['plain_s'] * 1000:8.1f} ms")
    print(
        f"  ... with K = 7 context instruments:    {results['context_s'] * 1000:8.1f} ms "
        f"({results['context_over_plain']:.2f}x; {results['context_instruments_per_sample']:.1f} present per "
        "sample; target <= 1.5x)"
    )
    print(
        f"activations kept for backward: {results['plain_activation_mb']:.1f} MB without context, "
        f"{results['context_activation_mb']:.1f} MB with ({results['activation_ratio']:.2f}x)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def saved_activation_bytes(model: Stage1Model, batch: Batch) -> int:
    """Bytes of the distinct tensors autograd keeps from one forward pass for the backward (parameters
    excluded): the activation memory a training step holds at its peak, on any device."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(batch)
    return sum(storages.values())


if __name__ == "__main__":
    sys.exit(main())
