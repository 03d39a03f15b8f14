"""The ``stage1`` command: prepare data (and, as the project grows, train, convert, evaluate, demo)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stage1_ds.data.ingest import CsvColumns, InputFormat, OnBadRows
from stage1_ds.data.prepare import PrepareOptions, prepare_files, prepare_synthetic, summary_table
from stage1_ds.errors import Stage1Error
from stage1_ds.logs import setup_logging

log = logging.getLogger("stage1_ds")


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "prepare",
        help="turn raw 1-minute bars (or the synthetic market) into a prepared data folder",
        description="Read 1-minute OHLC bars, derive m5 m15 m30 h1 h4, split by time, fit statistics.",
    )
    p.add_argument("--input", nargs="+", type=Path, default=[], help="files or folders of 1-minute bars")
    p.add_argument("--out", type=Path, required=True, help="the prepared data folder to write")
    p.add_argument("--format", choices=[f.value for f in InputFormat], default=InputFormat.HISTDATA.value)
    p.add_argument("--instrument", help="instrument name for every input (default: from the file name)")
    p.add_argument("--on-bad-rows", choices=[m.value for m in OnBadRows], default=OnBadRows.ERROR.value)
    p.add_argument(
        "--split",
        nargs=3,
        type=float,
        default=[0.7, 0.15, 0.15],
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of each instrument's 1-minute rows, in time order",
    )
    p.add_argument(
        "--window-bars",
        type=int,
        default=128,
        help="longest window (bars per timeframe) to serve; sets the gap between splits",
    )
    p.add_argument("--force", action="store_true", help="replace an existing prepared folder")
    p.add_argument(
        "--synthetic", action="store_true", help="write the synthetic market instead of reading files"
    )
    p.add_argument("--days", type=int, default=365, help="calendar days of synthetic data")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic market")
    csv = p.add_argument_group("generic CSV (--format csv)")
    defaults = CsvColumns()
    csv.add_argument("--timestamp-column", default=defaults.timestamp)
    csv.add_argument("--open-column", default=defaults.open)
    csv.add_argument("--high-column", default=defaults.high)
    csv.add_argument("--low-column", default=defaults.low)
    csv.add_argument("--close-column", default=defaults.close)
    csv.add_argument("--volume-column", default=defaults.volume, help="optional; absent means no volume")
    csv.add_argument("--delimiter", default=defaults.delimiter)
    p.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    options = PrepareOptions(
        split_fractions=(args.split[0], args.split[1], args.split[2]),
        window_bars=args.window_bars,
        on_bad_rows=OnBadRows(args.on_bad_rows),
        csv_columns=CsvColumns(
            timestamp=args.timestamp_column,
            open=args.open_column,
            high=args.high_column,
            low=args.low_column,
            close=args.close_column,
            volume=args.volume_column,
            delimiter=args.delimiter,
        ),
        force=args.force,
    )
    if args.synthetic:
        if args.input:
            raise Stage1Error("--synthetic and --input exclude each other")
        manifest = prepare_synthetic(args.out, days=args.days, seed=args.seed, options=options)
    else:
        if not args.input:
            raise Stage1Error("prepare needs --input FILE... (or --synthetic)")
        manifest = prepare_files(args.input, args.out, InputFormat(args.format), args.instrument, options)
    print(summary_table(manifest))
    print(f"prepared data written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stage1", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_prepare(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Stage1Error as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
