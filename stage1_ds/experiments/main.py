"""The main report (``--experiment main``): the demo-sized model with and without its cross-timeframe loss.

Options read: ``data`` (one prepared folder), ``out``, ``steps`` (one count; else ``minutes`` at a speed
measured first), ``max_anchors``, ``batches``, ``overrides``. Trains (a) the demo config and (b) the same
with ``model.loss.cross_timeframe_weight=0`` (micro batch 32 each), evaluates both in every masking mode on
the test split against the baselines, and probes both and the untrained control.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path
from typing import Any

import deepspeed
import torch
import transformers

from stage1_ds.config import EVAL_BATCH_SIZE, EVAL_SEED, SPLIT_FRACTIONS
from stage1_ds.data.store import load_prepared
from stage1_ds.evaluation.probe import probe, report_data
from stage1_ds.evaluation.reconstruction import evaluate, evaluation_data
from stage1_ds.experiments import tables
from stage1_ds.experiments.harness import DEMO_CONFIG, Experiment, Options, Run, run_config, trained_run
from stage1_ds.model.stage1 import Stage1Model, load_export_config, load_export_stats
from stage1_ds.train.loop import train
from stage1_ds.version import code_version

#: Steps of the speed measurement, also the fewest steps a run trains.
CALIBRATION_STEPS = 300


def steps_per_minute(data_dir: Path, work: Path, overrides: list[str], steps: int) -> float:
    """Training speed of the config on this machine, without start-up: after a first run of ``steps`` steps
    that pays the process's one-time costs (operator loading, first touches of the data), runs of ``steps``
    and ``2 x steps`` steps (the same phase shares, one evaluation and checkpoint each) give the rate from
    the difference of their times. A single run's rate counts engine builds, the checkpoint and the first
    batches as training, and sets about two thirds of the steps a budget allows."""
    seconds = []
    for length in (steps, steps, 2 * steps):
        config = run_config(overrides, length)
        every = config.train
        every.eval_every_steps = every.save_every_steps = every.image_every_steps = length
        shutil.rmtree(work / "calibration", ignore_errors=True)
        started = time.perf_counter()
        train(config, data_dir, work / "calibration")
        seconds.append(time.perf_counter() - started)
    shutil.rmtree(work / "calibration")
    _, short, long = seconds
    if long <= short:  # too short to tell start-up from steps (smoke tests): the longest run's rate
        return 2 * steps / (long / 60)
    return steps / ((long - short) / 60)


def data_summary(data_dir: Path) -> dict[str, Any]:
    """What a report says of a prepared folder: per instrument its UTC range, 1-minute bars and sources
    (file name and SHA-256), the window bars and split fractions it was prepared with."""
    manifest = load_prepared(data_dir).manifest
    return {
        "folder": str(data_dir),
        "window_bars": manifest["window_bars"],
        "split_fractions": manifest["split_fractions"],
        "instruments": {
            name: {
                "range_utc": [record["time_range_utc"][0][:10], record["time_range_utc"][1][:10]],
                "m1_bars": record["rows"]["m1"]["total"],
                "sources": [{"path": src["path"], "sha256": src["sha256"]} for src in record["sources"]],
            }
            for name, record in manifest["instruments"].items()
        },
    }


def versions() -> dict[str, str]:
    """The versions a report was measured with."""
    threads = torch.get_num_threads()
    return {
        "stage1_ds": code_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {threads} torch thread{'s' * (threads != 1)}",
    }


def measure(options: Options, calibration_steps: int = CALIBRATION_STEPS) -> dict[str, Any]:
    """Train, evaluate and probe both runs (see the module docstring)."""
    data_dir, work = Path(options.data), Path(options.out)
    work.mkdir(parents=True, exist_ok=True)
    shared = ["train.micro_batch_size=32", *options.overrides]
    plans = {"a": shared, "b": [*shared, "model.loss.cross_timeframe_weight=0"]}
    if options.steps:
        steps, rate = options.steps[0], None
    else:
        rate = steps_per_minute(data_dir, work, plans["a"], calibration_steps)
        steps = max(calibration_steps, int(rate * options.minutes))
    runs: dict[str, Run] = {
        name: trained_run(name, plan, steps, data_dir, work) for name, plan in plans.items()
    }
    evaluations, probes = {}, {}
    for name, run in runs.items():
        model = Stage1Model.from_pretrained(run.export)
        stats = load_export_stats(run.export)
        config = load_export_config(run.export)
        evaluations[name] = evaluation_data(
            evaluate(model, data_dir, config, "test", options.batches, stats=stats)
        )
        untrained = Stage1Model.untrained_like(run.export)
        probes[name] = report_data(probe(model, untrained, data_dir, options.max_anchors, stats=stats))
    config = load_export_config(runs["a"].export)
    return {
        "data": data_summary(data_dir),
        "model": {
            "config": DEMO_CONFIG,
            "preset": config.model.encoder.preset.value,
            "window_bars": config.data.window_bars,
            "timeframes": len(config.data.timeframes),
        },
        "steps": steps,
        "steps_per_minute": rate,
        "minutes": options.minutes,
        "versions": versions(),
        "batches": options.batches,
        "max_anchors": options.max_anchors,
        "runs": {name: {"name": name, **run.record()} for name, run in runs.items()},
        "evaluations": evaluations,
        "probes": probes,
    }


def render(results: dict[str, Any]) -> str:
    """The report's markdown from `measure`'s results."""
    data, model, runs = results["data"], results["model"], results["runs"]
    instruments = ", ".join(
        f"{name} ({record['range_utc'][0]} to {record['range_utc'][1]}, {record['m1_bars']:,} 1-minute bars; "
        + ", ".join(f"`{Path(s['path']).name}` sha256 {s['sha256'][:12]}" for s in record["sources"])
        + ")"
        for name, record in data["instruments"].items()
    )
    machine = f"on {results['versions']['machine']}"
    if results["steps_per_minute"] is None:
        budget = f"{results['steps']:,} steps each, given (no speed calibration), {machine}"
        option = f"--steps {results['steps']}"
    else:
        budget = (
            f"{results['minutes']:g} minutes each {machine}; speed measured first, start-up excluded: "
            f"{results['steps_per_minute']:,.0f} steps per minute"
        )
        option = f"--minutes {results['minutes']:g}"
    max_anchors = results["max_anchors"]
    v = results["versions"]
    a, b = results["evaluations"]["a"], results["evaluations"]["b"]
    lines = [
        "# The main report: the demo-sized model, with and without the cross-timeframe loss",
        "",
        "Generated by `scripts/quality_report.py --experiment main` from main.json. A claim counts only "
        "against the strongest simple rule that sees the same bars, on the test split: every best baseline "
        "and best rule is chosen on the val split and then scored on test.",
        "",
        "## Setup",
        "",
        f"- Data: `{data['folder']}`: {instruments}; prepared with window bars {data['window_bars']}, "
        f"splits {data['split_fractions']} by time with a history gap before val and test.",
        f"- Models: `{model['config']}` (the `{model['preset']}` preset, {model['window_bars']}-bar windows of "
        f"{model['timeframes']} timeframes, masking mixture of the config), micro batch 32, frozen for 10% of "
        "the steps, LoRA to a third, then full. (a) as shipped; (b) the same with "
        "`model.loss.cross_timeframe_weight=0`.",
        f"- Training budget: {budget}.",
        f"- Versions: stage1_ds {v['stage1_ds']}, torch {v['torch']}, deepspeed {v['deepspeed']}, "
        f"transformers {v['transformers']}.",
        f"- Evaluation: {results['batches']} batches of {EVAL_BATCH_SIZE} test windows per masking mode (seed "
        f"{EVAL_SEED}); probe: "
        + (f"at most {max_anchors} anchors" if max_anchors else "every qualifying anchor")
        + " per split, an hour apart.",
        "",
        "| run | overrides of the demo config | steps | minutes | final val loss |",
        "|---|---|---|---|---|",
        *(
            f"| ({name}) | {' '.join(f'`{o}`' for o in r['overrides'])} | {r['steps']:,} | "
            f"{r['minutes']:.1f} | {r['val_loss']:.4f} |"
            for name, r in runs.items()
        ),
        "",
        "## Reconstruction of masked bars (test split), run (a)",
        "",
        *tables.evaluation_tables(a),
        "",
        "## What the cross-timeframe loss does: (a) against (b)",
        "",
        *tables.consistency_table(a, b),
        "",
        "## What the embeddings know about the future (test split)",
        "",
    ]
    for name, report in results["probes"].items():
        lines += [f"### Run ({name})", "", *tables.probe_tables(report), ""]
    sources = [src["path"] for record in data["instruments"].values() for src in record["sources"]]
    prepare = f"stage1 prepare --input {' '.join(sources)} --window-bars {data['window_bars']}"
    if tuple(data["split_fractions"]) != SPLIT_FRACTIONS:
        prepare += " --split " + " ".join(f"{f:g}" for f in data["split_fractions"])
    lines += [
        "## Targets, as measured",
        "",
        *tables.verdicts(a, results["probes"]["a"]),
        "",
        "## Reproduce",
        "",
        "```bash",
        f"{prepare} --out {data['folder']}",
        f"python scripts/quality_report.py --experiment main {data['folder']} {option}"
        + (f" --max-anchors {max_anchors}" if max_anchors else "")
        + f" --batches {results['batches']}",
        "```",
        "",
    ]
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="main",
    title="The demo-sized model with and without the cross-timeframe loss",
    measure=measure,
    render=render,
)
