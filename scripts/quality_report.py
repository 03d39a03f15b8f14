"""Train, evaluate and probe the demo-sized model on real data; write docs/quality.md (`stage1_ds.experiments.quality`).

    python scripts/quality_report.py DATA_DIR --minutes 20 [--steps N] [--out runs/quality] [--doc docs/quality.md]
    python scripts/quality_report.py DATA_DIR --variants time|signal --steps N [key=value ...]
    python scripts/quality_report.py ROOT --transfer USDCHF BCOUSD SPXUSD --steps N [key=value ...]
    python scripts/quality_report.py ROOT --ladder [--ladder-steps 2000 8000 32000] [key=value ...]
    python scripts/quality_report.py ROOT --market-rule [EURUSD USDCHF BCOUSD SPXUSD]
    python scripts/quality_report.py ROOT --context [--context-steps 2000 8000] [key=value ...]

DATA_DIR is a prepared folder (e.g. `stage1 prepare --input ../shared/data/histdata/*EURUSD* --window-bars
32 --out runs/eurusd32`). Trains (a) the demo config and (b) the same without the cross-timeframe loss,
MINUTES each (or STEPS each: training is deterministic, so the step count of an earlier report trains the
same models again), then evaluates both in every masking mode and probes both against the simple rules
(the best chosen on val) and the untrained control. With --variants it trains the time-aware variants
instead (`stage1_ds.experiments.quality.TIME_VARIANTS`, STEPS each), chooses one on val and rewrites only
their section. With --transfer, ROOT holds one prepared folder per instrument and each named instrument
is held out in turn (`stage1_ds.experiments.quality.transfer_report`): a model trained on the others, one
trained on it alone, the untrained control and the rules, on its test split; only that section is
rewritten. With --ladder, ROOT is the same and each pretraining signal is trained at each step count on
the instruments that are not held out (`stage1_ds.experiments.ladder`), rungs measured before read back;
only the ladder section and its figure (ladder.png beside the report) are rewritten. With --market-rule,
ROOT is the same, every instrument under it is the market, and the rule that sees it is measured against
the best single-instrument rule on each named instrument (`stage1_ds.experiments.market`; no training,
minutes); only its section is rewritten. With --context, ROOT is the ladder's and the encoder that sees
the market is compared with the single-instrument one at equal steps, each against the single and the
market rule (`stage1_ds.experiments.context`); measurements read back where made; only its section is
rewritten. Everything it writes is measured; nothing is tuned on the test
split. A rewrite keeps the variants section and the hand-written reading ("Reading the figures (by
hand)", at the end), to be revised against the new figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stage1_ds.experiments.context import CONTEXT_HEADING, CONTEXT_STEPS, compare, context_section
from stage1_ds.experiments.ladder import (
    LADDER_HEADING,
    LADDER_STEPS,
    SIGNALS,
    climb,
    ladder_figure,
    ladder_section,
)
from stage1_ds.experiments.market import MARKET_HEADING, market_rule_report, market_rule_section
from stage1_ds.experiments.quality import (
    STAGE2_HEADING,
    TRANSFER_HEADING,
    VARIANT_SETS,
    quality_report,
    transfer_report,
    variants_report,
)
from stage1_ds.logs import setup_logging

#: The heading of the hand-written reading of the figures, kept when the report is rewritten.
BY_HAND = "## Reading the figures (by hand)"


def section(text: str, heading: str) -> str:
    """The section of a markdown text that begins with ``heading``, to the next heading of its level (the
    hand-written one runs to the end); empty when there is none."""
    at = text.find(heading + "\n")
    if at < 0:
        return ""
    if heading == BY_HAND:
        return text[at:]
    after = text.find("\n## ", at + len(heading))
    return text[at : after + 1] if after >= 0 else text[at:]


def kept(doc: Path) -> str:
    """What a rewrite of the main report keeps from an existing one: the variants sections (written by
    their own runs) and the hand-written reading, to be revised against the new figures."""
    if not doc.exists():
        return ""
    text = doc.read_text()
    headings = [heading for heading, _ in VARIANT_SETS.values()]
    headings += [TRANSFER_HEADING, LADDER_HEADING, MARKET_HEADING, STAGE2_HEADING, BY_HAND]
    return "".join("\n" + part.rstrip("\n") + "\n" for h in headings if (part := section(text, h)))


def with_variants(doc: Path, heading: str, variants: str) -> str:
    """The report with the section of ``heading`` replaced by ``variants`` (or inserted before the
    reading)."""
    text = doc.read_text() if doc.exists() else ""
    old = section(text, heading)
    if old:
        return text.replace(old, variants)
    at = text.find(BY_HAND)
    return text[:at] + variants + "\n" + text[at:] if at >= 0 else text + "\n" + variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a prepared data folder with train, val and test splits")
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes per model")
    parser.add_argument(
        "--steps",
        type=int,
        help="train this many steps per model instead (no speed calibration; reproducible)",
    )
    parser.add_argument(
        "--variants",
        choices=list(VARIANT_SETS),
        help="train a set of variants for --steps each instead (time: index/time bias x calendar; signal: "
        "changes to the pretraining signal), choose on val, and rewrite only their section of the report",
    )
    parser.add_argument(
        "--transfer",
        nargs="+",
        metavar="INSTRUMENT",
        help="DATA holds one prepared folder per instrument: hold each named one out in turn (--steps each "
        "run) and rewrite only the transfer section of the report",
    )
    parser.add_argument(
        "--ladder",
        action="store_true",
        help="DATA holds one prepared folder per instrument: train each pretraining signal at each of "
        "--ladder-steps on all but the held-out instruments (--transfer names them; default USDCHF BCOUSD "
        "SPXUSD) and rewrite only the ladder section and its figure",
    )
    parser.add_argument("--ladder-steps", type=int, nargs="+", default=list(LADDER_STEPS), metavar="N")
    parser.add_argument(
        "--ladder-signals",
        nargs="+",
        choices=sorted(SIGNALS),
        help="train the missing rungs of these signals only; the others' measured rungs are read back "
        "(default: every signal)",
    )
    parser.add_argument(
        "--market-rule",
        nargs="*",
        metavar="INSTRUMENT",
        help="DATA holds one prepared folder per instrument, all of them the market: measure the market rule "
        "against the best single-instrument rule on these instruments (default EURUSD USDCHF BCOUSD SPXUSD) "
        "and rewrite only its section",
    )
    parser.add_argument(
        "--context",
        action="store_true",
        help="DATA holds one prepared folder per instrument (the ladder's): compare the encoder that sees the "
        "market with the single-instrument one at each of --context-steps (held-out instruments: --transfer, "
        "default USDCHF BCOUSD SPXUSD) and rewrite only its section",
    )
    parser.add_argument("--context-steps", type=int, nargs="+", default=list(CONTEXT_STEPS), metavar="N")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"), help="runs and exports go here")
    parser.add_argument("--doc", type=Path, default=Path("docs/quality.md"), help="the report to write")
    parser.add_argument(
        "--max-anchors", type=int, help="probe anchors per split at most (default: every qualifying anchor)"
    )
    parser.add_argument("--batches", type=int, default=40, help="evaluation batches of 64 per masking mode")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of every run's config")
    args = parser.parse_intermixed_args()  # overrides may follow the options
    setup_logging()
    if args.context:
        held_out = tuple(args.transfer or ("USDCHF", "BCOUSD", "SPXUSD"))
        steps = tuple(args.context_steps)
        results = compare(args.data, args.out, steps, held_out, args.max_anchors, overrides=args.overrides)
        command = " ".join(
            [
                f"python scripts/quality_report.py {args.data} --context --transfer {' '.join(held_out)}",
                f"--context-steps {' '.join(map(str, steps))}",
                *([f"--max-anchors {args.max_anchors}"] if args.max_anchors else []),
                *args.overrides,
            ]
        )
        args.doc.write_text(
            with_variants(args.doc, CONTEXT_HEADING, context_section(results, args.data, command))
        )
    elif args.market_rule is not None:
        scored = args.market_rule or ["EURUSD", "USDCHF", "BCOUSD", "SPXUSD"]
        measured = market_rule_report(args.data, scored, args.max_anchors)
        command = f"python scripts/quality_report.py {args.data} --market-rule {' '.join(scored)}"
        if args.max_anchors:
            command += f" --max-anchors {args.max_anchors}"
        body = market_rule_section(measured, args.data, command)
        args.doc.write_text(with_variants(args.doc, MARKET_HEADING, body))
    elif args.ladder:
        held_out = tuple(args.transfer or ("USDCHF", "BCOUSD", "SPXUSD"))
        steps = tuple(args.ladder_steps)
        signals = tuple(args.ladder_signals) if args.ladder_signals else None
        rungs = climb(
            args.data, args.out, steps, held_out, args.max_anchors, args.batches, args.overrides,
            train_signals=signals,
        )  # fmt: skip
        figure = args.doc.with_name("ladder.png")
        ladder_figure(rungs, figure)
        command = " ".join(
            [
                f"python scripts/quality_report.py {args.data} --ladder --transfer {' '.join(held_out)}",
                f"--ladder-steps {' '.join(map(str, steps))}",
                *([f"--ladder-signals {' '.join(signals)}"] if signals else []),
                *([f"--max-anchors {args.max_anchors}"] if args.max_anchors else []),
                *args.overrides,
            ]
        )
        body = ladder_section(rungs, args.data, figure, command)  # against the whole ladder planned
        args.doc.write_text(with_variants(args.doc, LADDER_HEADING, body))
    elif args.transfer:
        if args.steps is None:
            parser.error("--transfer needs --steps: every run trains the same number of steps")
        body = transfer_report(
            args.data, args.transfer, args.out, args.steps, args.max_anchors, args.batches, args.overrides
        )
        args.doc.write_text(with_variants(args.doc, TRANSFER_HEADING, body))
    elif args.variants:
        if args.steps is None:
            parser.error("--variants needs --steps: every variant trains the same number of steps")
        heading, variants = VARIANT_SETS[args.variants]
        body = variants_report(
            args.data,
            args.out,
            args.steps,
            args.max_anchors,
            args.batches,
            variants,
            args.overrides,
            heading,
        )
        args.doc.write_text(with_variants(args.doc, heading, body))
    else:
        report = quality_report(
            args.data,
            args.minutes,
            args.out,
            args.max_anchors,
            args.batches,
            overrides=args.overrides,
            steps=args.steps,
        )
        args.doc.write_text(report + kept(args.doc))
    print(f"written {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
