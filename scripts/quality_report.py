"""Train, evaluate and probe the demo-sized model on real data; write docs/quality.md (`stage1_ds.evaluation.quality`).

    python scripts/quality_report.py DATA_DIR --minutes 20 [--steps N] [--out runs/quality] [--doc docs/quality.md]

DATA_DIR is a prepared folder (e.g. `stage1 prepare --input ../shared/data/histdata/*EURUSD* --window-bars
32 --out runs/eurusd32`). Trains (a) the demo config and (b) the same without the cross-timeframe loss,
MINUTES each (or STEPS each: training is deterministic, so the step count of an earlier report trains the
same models again), then evaluates both in every masking mode and probes both against the simple rules
(the best chosen on val) and the untrained control. Everything it writes is measured; nothing is tuned on
the test split. The section of an existing report headed "Reading the figures (by hand)" is kept at its
end, to be revised against the new figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stage1_ds.evaluation.quality import quality_report
from stage1_ds.logs import setup_logging

#: The heading of the hand-written reading of the figures, kept when the report is rewritten.
BY_HAND = "## Reading the figures (by hand)"


def kept_by_hand(doc: Path) -> str:
    """The section of an existing report that was written by hand (from `BY_HAND` to the end): it survives a
    rewrite, to be revised against the new figures."""
    if not doc.exists():
        return ""
    text = doc.read_text()
    at = text.find(BY_HAND)
    return "\n" + text[at:] if at >= 0 else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a prepared data folder with train, val and test splits")
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes per model")
    parser.add_argument(
        "--steps",
        type=int,
        help="train this many steps per model instead (no speed calibration; reproducible)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="runs and exports go here")
    parser.add_argument("--doc", type=Path, default=Path("docs/quality.md"), help="the report to write")
    parser.add_argument("--max-anchors", type=int, default=3000, help="probe anchors per split at most")
    parser.add_argument("--batches", type=int, default=40, help="evaluation batches of 64 per masking mode")
    args = parser.parse_args()
    setup_logging()
    report = quality_report(
        args.data, args.minutes, args.out, args.max_anchors, args.batches, steps=args.steps
    )
    args.doc.write_text(report + kept_by_hand(args.doc))
    print(f"written {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
