"""Run one experiment of the quality reports and write its files under docs/quality/ (`stage1_ds.experiments`).

    python scripts/quality_report.py --list
    python scripts/quality_report.py --experiment NAME DATA [--steps N ...] [--out runs/quality] [key=value ...]
    python scripts/quality_report.py --experiment NAME --render

DATA is a prepared folder (main, variants_*) or a root of one prepared folder per instrument (transfer,
ladder, market_rule, context). The experiment trains what it has not trained before in --out (read back
otherwise), measures, and writes docs/quality/NAME.json (its results), NAME.md (its report) and, where it
has one, NAME.png; no other file. --render rewrites NAME.md (and its figure) from the stored NAME.json.
Every figure written is measured; nothing is tuned on the test split.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from stage1_ds.experiments.harness import (
    QUALITY_DIR,
    TRAINED_SCORED,
    TRANSFER_HELD_OUT,
    Options,
    render_again,
    write_report,
)
from stage1_ds.experiments.registry import EXPERIMENTS
from stage1_ds.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", type=Path, nargs="?", help="a prepared folder, or a root of one per instrument"
    )
    parser.add_argument("--experiment", choices=sorted(EXPERIMENTS), help="the experiment to run")
    parser.add_argument("--list", action="store_true", help="list the experiments and their reports")
    parser.add_argument("--render", action="store_true", help="rewrite the report from its stored results")
    parser.add_argument("--steps", type=int, nargs="+", default=[], help="training steps (per run, or rungs)")
    parser.add_argument("--minutes", type=float, default=20.0, help="main: minutes per run without --steps")
    parser.add_argument(
        "--held-out",
        nargs="+",
        default=list(TRANSFER_HELD_OUT),
        metavar="INSTRUMENT",
        help="never trained on",
    )
    parser.add_argument(
        "--trained",
        default=TRAINED_SCORED,
        metavar="INSTRUMENT",
        help="trained on and scored (default EURUSD)",
    )
    parser.add_argument("--scored", nargs="+", default=[], metavar="INSTRUMENT", help="market_rule: scored")
    parser.add_argument(
        "--signals", nargs="+", default=[], help="ladder: train the missing rungs of these only"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="runs and exports go here")
    parser.add_argument("--docs", type=Path, default=QUALITY_DIR, help="the folder of the reports")
    parser.add_argument("--max-anchors", type=int, help="probe anchors per split at most (default: all)")
    parser.add_argument("--batches", type=int, default=40, help="evaluation batches of 64 per masking mode")
    parser.add_argument(
        "--read-only", action="store_true", help="ladder: report the rungs measured so far, training nothing"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every run's config")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    if args.list:
        for name, experiment in EXPERIMENTS.items():
            print(f"{name:<16} {experiment.title} ({args.docs / name}.md)")
        return 0
    if args.experiment is None:
        parser.error("name an experiment (--experiment NAME; --list lists them)")
    experiment = EXPERIMENTS[args.experiment]
    setup_logging()
    if args.render:
        written = render_again(experiment, args.docs)
    else:
        if args.data is None:
            parser.error(f"{args.experiment} needs DATA: a prepared folder or a root of them")
        options = Options(
            data=args.data,
            out=args.out,
            steps=tuple(args.steps),
            minutes=args.minutes,
            held_out=tuple(args.held_out),
            trained=args.trained,
            scored=tuple(args.scored),
            signals=tuple(args.signals),
            max_anchors=args.max_anchors,
            batches=args.batches,
            overrides=args.overrides,
            read_only=args.read_only,
        )
        results = experiment.measure(options)
        results["command"] = shlex.join(["python", "scripts/quality_report.py", *(argv or sys.argv[1:])])
        written = write_report(experiment, results, args.docs)
    print("written " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
