"""The ``stage1`` command: prepare data, train, convert checkpoints (and their model cards), evaluate, encode,
probe, the demo, and the node check before a launch (doctor).

Each subcommand parses its arguments here and calls one library function; heavy imports (torch,
DeepSpeed) happen inside the subcommands that need them, so ``stage1 prepare`` starts fast. Why one module
of about 700 lines: it is the parsers of nine subcommands, each option with its help text, and the one
place a user's flags become a library call and an exit code; no domain logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from stage1_ds.config import EVAL_BATCH_SIZE, EVAL_BATCHES, EVAL_SEED, SPLITS
from stage1_ds.data.ingest import BarTime, CsvColumns, InputFormat, OnBadRows
from stage1_ds.data.prepare import (
    PrepareOptions,
    merge_prepared,
    prepare_files,
    prepare_synthetic,
    summary_table,
)
from stage1_ds.errors import Stage1Error
from stage1_ds.logs import setup_logging
from stage1_ds.outputs import claim_file, claim_folder, remove_own_folder

log = logging.getLogger("stage1_ds")
#: The exit code of a run stopped by Ctrl-C (128 + SIGINT, as a shell reports it). A run stopped by
#: SIGTERM or SIGUSR1 exits 128 + that signal's number the same way (143, 138), after its checkpoint.
INTERRUPTED = 130


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "prepare",
        help="turn raw 1-minute bars (or the synthetic market) into a prepared data folder",
        description="Read 1-minute OHLC bars, derive m5 m15 m30 h1 h4, split by time, fit statistics.",
    )
    p.add_argument("--input", nargs="+", type=Path, default=[], help="files or folders of 1-minute bars")
    p.add_argument("--out", type=Path, required=True, help="the prepared data folder to write")
    p.add_argument("--format", choices=[f.value for f in InputFormat], default=InputFormat.HISTDATA.value)
    p.add_argument(
        "--instrument",
        type=_instrument_name,
        help="instrument name for every input: letters, digits and ._- (default: from the file name)",
    )
    p.add_argument("--on-bad-rows", choices=[m.value for m in OnBadRows], default=OnBadRows.ERROR.value)
    defaults = PrepareOptions()
    p.add_argument(
        "--split",
        nargs=3,
        type=float,
        default=list(defaults.split_fractions),
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of each instrument's 1-minute rows, in time order; zeros allowed (1 0 0: all train, "
        "0 0 1: all test)",
    )
    p.add_argument(
        "--timezone",
        help="IANA time zone of naive timestamps, converted to UTC before bucketing (default: HistData files "
        "are converted from their documented clock, America/New_York; other files' naive times are kept as "
        "given; offsets and epoch times are UTC anyway); 'as-given' keeps naive times as written",
    )
    p.add_argument(
        "--bucket-origin",
        type=_time_of_day,
        default=0,
        metavar="HH:MM",
        help="where buckets start on the data clock (default 00:00); e.g. 22:00 on a UTC clock for FX's "
        "17:00 New York session in winter",
    )
    p.add_argument(
        "--bar-time",
        choices=[b.value for b in BarTime],
        default=BarTime.START.value,
        help="what a row's timestamp marks: the start of its minute (default; HistData) or its end (many "
        "futures platforms and brokers: moved back a minute). prepare warns when bars look end-stamped",
    )
    p.add_argument(
        "--window-bars",
        type=int,
        default=defaults.window_bars,
        help="longest window (bars per timeframe) to serve; sets the gap between splits",
    )
    p.add_argument(
        "--max-input-mb",
        type=int,
        default=defaults.max_input_mb,
        metavar="MB",
        help="the most text one compressed file (or zip member) may expand to, read in a stream (default "
        f"{defaults.max_input_mb}); memory stays bounded by it whatever a file expands to",
    )
    p.add_argument("--force", action="store_true", help="replace an existing prepared folder")
    p.add_argument(
        "--synthetic", action="store_true", help="write the synthetic market instead of reading files"
    )
    p.add_argument("--days", type=int, default=365, help="calendar days of synthetic data")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic market")
    p.add_argument(
        "--instruments",
        type=int,
        default=1,
        help="synthetic instruments, each its own seed, volatility and price",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="processes preparing instruments in parallel (default: the cores available); same output for any",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="merge prepared folders of disjoint instruments (prepared alike, e.g. on several machines) into --out",
    )
    csv = p.add_argument_group("generic CSV and Parquet (--format csv)")
    columns = defaults.csv_columns
    csv.add_argument("--timestamp-column", default=columns.timestamp)
    csv.add_argument("--open-column", default=columns.open)
    csv.add_argument("--high-column", default=columns.high)
    csv.add_argument("--low-column", default=columns.low)
    csv.add_argument("--close-column", default=columns.close)
    csv.add_argument(
        "--volume-column",
        default=columns.volume,
        help="the volume column, which must then exist (default: a column named 'volume' if the header has "
        "one, else no volume)",
    )
    csv.add_argument(
        "--symbol",
        help="of a file whose symbol column (symbol, sym, name, ticker, ...) names several instruments: the "
        "rows of this one",
    )
    csv.add_argument(
        "--side",
        choices=["bid", "ask", "mid"],
        default=columns.side,
        help="of a file of bid and ask rows (a side column): which to read, or mid, their mean (default bid)",
    )
    csv.add_argument(
        "--delimiter",
        type=_delimiter,
        default=columns.delimiter,
        help="one character, or tab, comma, semicolon, pipe, space (\\t works too)",
    )
    p.set_defaults(run=_run_prepare)


#: Delimiters by name (and the two characters a shell passes for ``'\t'``).
_DELIMITERS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}


def _delimiter(text: str) -> str:
    """One delimiter character, or its name (argparse names the option when this raises)."""
    delimiter = _DELIMITERS.get(text.lower(), text)
    if len(delimiter) != 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected one character, or one of {', '.join(sorted(_DELIMITERS))}"
        )
    return delimiter


def _instrument_name(text: str) -> str:
    """An instrument name: letters, digits and ``._-``, not starting with a dot (never a path)."""
    if not text or text.startswith(".") or not all(c.isalnum() or c in "._-" for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: an instrument name is letters, digits and ._- (e.g. EURUSD, BTC-USDT), not a path"
        )
    return text


def _time_of_day(text: str) -> int:
    """``HH:MM`` to minutes after midnight (argparse names the option when this raises)."""
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HH:MM, e.g. 22:00")
    return int(hours) * 60 + int(minutes)


def _run_prepare(args: argparse.Namespace) -> int:
    options = PrepareOptions(
        split_fractions=(args.split[0], args.split[1], args.split[2]),
        window_bars=args.window_bars,
        on_bad_rows=OnBadRows(args.on_bad_rows),
        timezone=args.timezone,
        bucket_origin_minutes=args.bucket_origin,
        bar_time=BarTime(args.bar_time),
        max_input_mb=args.max_input_mb,
        workers=args.workers,
        csv_columns=CsvColumns(
            timestamp=args.timestamp_column,
            open=args.open_column,
            high=args.high_column,
            low=args.low_column,
            close=args.close_column,
            volume=args.volume_column,
            delimiter=args.delimiter,
            symbol=args.symbol,
            side=args.side,
        ),
        force=args.force,
    )
    if sum(map(bool, (args.synthetic, args.input, args.merge))) > 1:
        raise Stage1Error("--synthetic, --input and --merge exclude each other")
    claim_folder(args.out.parent, "--out")
    if args.merge:
        manifest = merge_prepared(args.merge, args.out, force=args.force)
    elif args.synthetic:
        manifest = prepare_synthetic(args.out, args.days, args.seed, options, instruments=args.instruments)
    else:
        if not args.input:
            raise Stage1Error("prepare needs --input FILE... (or --synthetic, or --merge FOLDER...)")
        manifest = prepare_files(args.input, args.out, InputFormat(args.format), args.instrument, options)
    print(summary_table(manifest))
    print(f"prepared data written to {args.out}")
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `stage1 train` and scripts/train_stage1.py (which any launcher runs)."""
    p.add_argument("--config", type=Path, required=True, help="experiment YAML (see configs/)")
    p.add_argument(
        "--data",
        "--data_dir",
        dest="data",
        type=Path,
        nargs="+",
        required=True,
        help="a prepared data folder, or several (or a catalog file listing them) served as one corpus",
    )
    p.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument(
        "--stop-at-step", type=int, help="save and stop after this step (run a long job in pieces)"
    )
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by launchers
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=50"
    )


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train the Stage-1 model under DeepSpeed")
    add_train_arguments(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from stage1_ds.config import load_config

    config = load_config(args.config, args.overrides)
    out = claim_folder(_train_out(args), "--out")
    log.info("loading torch, transformers and DeepSpeed")
    from stage1_ds.train.checkpoint import checkpoint_dir
    from stage1_ds.train.loop import TrainingInterrupted, train

    resume = _resume_command(args, out)
    # Every rank ends the same way; the line that says how is said once (other ranks log warnings too).
    once = logging.WARNING if os.environ.get("RANK", "0") == "0" else logging.INFO
    try:
        result = train(config, args.data, out, resume=args.resume, stop_at_step=args.stop_at_step)
    except TrainingInterrupted as stopped:
        log.log(
            once,
            "interrupted at step %d; last complete checkpoint: %s; continue with: %s",
            stopped.step,
            stopped.checkpoint or "none yet (a resume starts afresh)",
            resume,
        )
        return INTERRUPTED
    if result.stopped_by is not None:
        saved = checkpoint_dir(out) / str(result.checkpoint_tag)
        if result.stopped_by == "stop_at_step":
            log.info(
                "stopped at step %d as asked (--stop-at-step); checkpoint: %s; continue with: %s",
                result.global_step,
                saved,
                resume,
            )
            return 0
        log.log(
            once,
            "stopped by %s at step %d after saving a checkpoint: %s; continue with: %s",
            result.stopped_by,
            result.global_step,
            saved,
            resume,
        )
        return 128 + int(signal.Signals[result.stopped_by])
    log.info(
        "training finished at step %d; checkpoint %s; curves: tensorboard --logdir %s; next, one fp32 model "
        "folder: stage1 convert %s --out EXPORT",
        result.global_step,
        result.checkpoint_tag,
        out / "tensorboard",
        out,
    )
    return 0


def _train_out(args: argparse.Namespace) -> Path:
    return Path(args.out or Path("runs") / args.config.stem)


def _resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues this run from its newest complete checkpoint."""
    command = ["stage1", "train", "--config", str(args.config), "--data", *map(str, args.data)]
    return shlex.join([*command, "--out", str(out), "--resume", *args.overrides])


def _interrupted(args: argparse.Namespace) -> str:
    """The one line of a command stopped by Ctrl-C outside the training loop (which says its own)."""
    if args.command != "train":
        return (
            f"interrupted (Ctrl-C): stage1 {args.command} did not finish; what it was writing is incomplete"
        )
    out = _train_out(args)
    latest = out / "checkpoints" / "latest"
    saved = latest.read_text().strip() if latest.is_file() else None
    return "interrupted (Ctrl-C) before training began; last complete checkpoint: " + (
        f"{out / 'checkpoints' / saved}; continue with: {_resume_command(args, out)}"
        if saved
        else "none; the same command starts afresh"
    )


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo", help="synthetic data, then train configs/demo_cpu.yaml through every phase"
    )
    p.add_argument("--out", type=Path, default=Path("demo"), help="folder for data/ and run/ (default: demo)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configs/demo_cpu.yaml")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:

    from stage1_ds.config import load_config, resolve_path
    from stage1_ds.train.checkpoint import TRAIN
    from stage1_ds.train.loop import train

    data, run = args.out / "data", args.out / "run"
    claim_folder(args.out, "--out")
    remove_own_folder(run, "--out", TRAIN)  # the demo trains from scratch, in a run folder it made
    if not (data / "manifest.json").exists():
        options = PrepareOptions(split_fractions=(0.6, 0.2, 0.2), window_bars=32)
        print(summary_table(prepare_synthetic(data, days=120, seed=0, options=options)))
    config = load_config(resolve_path("configs/demo_cpu.yaml"), args.overrides)
    result = train(config, data, run)
    train_loss = result.last_losses.get("loss/total", float("nan"))
    val_loss = result.val_losses.get("val/loss/total", float("nan"))
    print(f"demo finished at step {result.global_step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
    print(f"checkpoints: {run / 'checkpoints'}")
    print(f"TensorBoard: .venv/bin/tensorboard --logdir {run / 'tensorboard'}")
    print(f"next, one fp32 model folder: .venv/bin/stage1 convert {run} --out {args.out / 'export'}")
    return 0


def _add_convert(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("convert", help="ZeRO checkpoint of a run to one fp32 model folder")
    p.add_argument("run_dir", type=Path, help="the run folder (holds checkpoints/)")
    p.add_argument("--out", type=Path, required=True, help="the export folder to write")
    p.add_argument("--tag", help="checkpoint tag (default: latest)")
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    p.add_argument(
        "--card-metrics",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="stage1 evaluate / probe reports to show in the model card (README.md)",
    )
    p.set_defaults(run=_run_convert)


def _add_card(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("card", help="rewrite an export's model card (README.md), with reports")
    p.add_argument("export", type=Path, help="an export folder (stage1 convert)")
    p.add_argument(
        "--metrics", nargs="+", type=Path, default=[], metavar="JSON", help="evaluate / probe reports"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="attach reports of another model (or reports that record none); the card says so beside them",
    )
    p.set_defaults(run=_run_card)


def _run_card(args: argparse.Namespace) -> int:
    from stage1_ds.card import write_card

    path = write_card(args.export, args.metrics, force=args.force)
    print(f"model card written to {path}")
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    claim_folder(args.out.parent, "--out")
    from stage1_ds.export import convert

    info = convert(args.run_dir, args.out, tag=args.tag, force=args.force, card_metrics=args.card_metrics)
    print(
        f"exported {info['tag']} (phase {info['phase']}, step {info['global_step']}, "
        f"{info['parameters']['all']:,} parameters, fp32) to {args.out}"
    )
    return 0


def _add_model_data_split(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--data``, ``--split`` and ``--allow-other-stats``: what `evaluate` and `encode` read."""
    p.add_argument("--model", type=Path, required=True, help="an export folder (stage1 convert)")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="a prepared data folder, several, or a catalog file",
    )
    p.add_argument("--split", choices=list(SPLITS), default="test")
    p.add_argument(
        "--allow-other-stats",
        action="store_true",
        help="go on (with a warning) when the data folder's feature statistics differ from the model's",
    )
    _add_allow_overlap(p)


def _add_allow_overlap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="go on when the scored split overlaps the model's training or validation period, or the folder "
        "is on another clock (the output says so and records it)",
    )


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("evaluate", help="masked-bar reconstruction against naive baselines")
    _add_model_data_split(p)
    p.add_argument(
        "--mode",
        choices=["spans", "time", "horizon", "all"],
        default="all",
        help="masking mode(s) to evaluate (default: all three)",
    )
    p.add_argument("--batches", type=int, default=EVAL_BATCHES)
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE)
    p.add_argument(
        "--seed",
        type=int,
        default=EVAL_SEED,
        help=f"the windows scored, their masks and the example window drawn (default: {EVAL_SEED})",
    )
    p.add_argument("--json", type=Path, help="write the report here (default: <model>/eval_<split>.json)")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    json_path = claim_file(args.json or args.model / f"eval_{args.split}.json", "--json")
    from stage1_ds.config import MaskingMode
    from stage1_ds.evaluation import evaluate, format_report, write_report
    from stage1_ds.evaluation.provenance import check_overlap, describe_stats, provenance, scoring_stats
    from stage1_ds.model.masking import MODES
    from stage1_ds.model.stage1 import Stage1Model, load_export_config

    device = "cuda" if torch_cuda_available() else "cpu"
    model = Stage1Model.from_pretrained(args.model, device)
    modes = MODES if args.mode == "all" else (MaskingMode(args.mode),)
    overlap = check_overlap(args.model, args.data, args.split, args.allow_overlap)
    stats = scoring_stats(args.model, args.data, args.allow_other_stats)
    report = evaluate(
        model,
        args.data,
        load_export_config(args.model),
        args.split,
        args.batches,
        args.batch_size,
        modes=modes,
        stats=stats,
        seed=args.seed,
    )
    report.update(describe_stats(stats), **overlap, **provenance(args.model, args.data))
    figure_path = json_path.with_suffix(".png")
    write_report(report, json_path, figure_path)
    print(format_report(report))
    print(
        f"report: {json_path}; figures: {figure_path.stem}_<mode>.png and {figure_path.stem}_<mode>_example.png"
    )
    return 0


def _add_encode(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("encode", help="per-timeframe embeddings of a prepared split, as .npy files")
    _add_model_data_split(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for <tf>_pooled.npy, <tf>_tokens.npy, ..., instruments.json",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-batches", type=int, help="encode only this many batches")
    p.set_defaults(run=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    claim_folder(args.out, "--out")
    import numpy as np

    from stage1_ds.data.corpus import load_corpus
    from stage1_ds.encoding import encode
    from stage1_ds.evaluation.provenance import check_overlap, describe_stats, provenance, scoring_stats
    from stage1_ds.model.stage1 import Stage1Model

    # Encoding the model's own train split is what a Stage-2 training set is made of: only the others are
    # checked for the model's data.
    overlap = (
        check_overlap(args.model, args.data, args.split, args.allow_overlap)
        if args.split != "train"
        else {"overlap": []}
    )
    model = Stage1Model.from_pretrained(args.model, "cuda" if torch_cuda_available() else "cpu")
    stats = scoring_stats(args.model, args.data, args.allow_other_stats)
    arrays = encode(
        model,
        args.data,
        args.split,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        stats=stats,
    )
    for name, array in arrays.items():
        np.save(args.out / f"{name}.npy", array)
    # The codes in instrument.npy index this list (the corpus's order).
    names = [name for data in load_corpus(args.data) for name in data.instruments]
    about = {
        "instruments": names,
        "split": args.split,
        **describe_stats(stats),
        **overlap,
        **provenance(args.model, args.data),
    }
    (args.out / "encoding.json").write_text(json.dumps(about, indent=2) + "\n")
    codes = {str(code): name for code, name in enumerate(names)}
    (args.out / "instruments.json").write_text(json.dumps(codes, indent=2) + "\n")
    print(f"wrote {len(arrays)} arrays for {len(arrays['sample_id'])} windows to {args.out}")
    return 0


def _add_probe(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "probe", help="forecast future realised variance and direction from the embeddings, against HAR"
    )
    p.add_argument("--model", type=Path, required=True, help="an export folder (stage1 convert)")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="a prepared data folder with train, val and test (or several, or a catalog file)",
    )
    p.add_argument("--json", type=Path, required=True, help="write the report here (and a PNG beside it)")
    p.add_argument(
        "--max-anchors",
        type=int,
        help="at most this many anchors per split, a seeded subsample (default: every qualifying anchor)",
    )
    p.add_argument("--seed", type=int, default=0, help="anchor subsample and the untrained control's init")
    p.add_argument(
        "--allow-other-stats",
        action="store_true",
        help="go on (with a warning) when the data folder's feature statistics differ from the model's",
    )
    p.add_argument(
        "--readout-from",
        type=Path,
        nargs="+",
        help="zero-shot readout: also fit the readouts on the train split of this folder (other instruments, "
        "e.g. those the model was trained on) and score them on --data's test split",
    )
    p.add_argument(
        "--market",
        type=Path,
        nargs="+",
        help="prepared folders whose instruments the market rule reads (their recent realised variance at "
        "each anchor; default: the instruments of --data)",
    )
    _add_allow_overlap(p)
    p.set_defaults(run=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    claim_file(args.json, "--json")
    from stage1_ds.evaluation import format_probe, probe, write_probe
    from stage1_ds.evaluation.provenance import check_overlap, describe_stats, provenance, scoring_stats
    from stage1_ds.model.stage1 import Stage1Model

    overlap = check_overlap(args.model, args.data, "test", args.allow_overlap)
    device = "cuda" if torch_cuda_available() else "cpu"
    model = Stage1Model.from_pretrained(args.model, device)
    untrained = Stage1Model.untrained_like(args.model, args.seed).to(device)
    stats = scoring_stats(args.model, args.data, args.allow_other_stats)
    readout_stats = None
    if args.readout_from:
        readout_stats = scoring_stats(args.model, args.readout_from, args.allow_other_stats)
    if model.reads_context:  # its windows see the market (--market, else --data): scale all of it
        seen = args.market or args.data
        stats = scoring_stats(args.model, seen, args.allow_other_stats, stats)
        if readout_stats is not None:
            readout_stats = scoring_stats(args.model, seen, args.allow_other_stats, readout_stats)
    report = probe(
        model,
        untrained,
        args.data,
        args.max_anchors,
        args.seed,
        stats=stats,
        readout_from=args.readout_from,
        readout_stats=readout_stats,
        market=args.market,
    )
    report.update(
        describe_stats(stats),
        **overlap,
        **provenance(args.model, args.data, readout_from=args.readout_from, market=args.market),
    )
    figure = args.json.with_suffix(".png")
    write_probe(report, args.json, figure)
    print(format_probe(report))
    print(f"report: {args.json}; figure: {figure}")
    return 0


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _add_doctor(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "doctor",
        help="check this node before a launch: GPUs, ops, /dev/shm, disk, weights, data, memory per GPU",
        description="One line per check (OK / WARN / FAIL with the fix); exit code 1 when the run cannot start.",
    )
    p.add_argument("--config", type=Path, help="the experiment YAML to launch (ops, memory, disk, weights)")
    p.add_argument("--data", type=Path, nargs="+", help="the prepared data folder(s) of the run")
    p.add_argument("--out", type=Path, help="the run folder (free disk for its checkpoints)")
    p.add_argument("--gpus", type=int, help="ranks per node of the launch (default: the GPUs here)")
    p.add_argument(
        "--nodes", type=int, default=1, help="nodes of the launch (ZeRO partitions over all ranks)"
    )
    p.add_argument("--json", type=Path, help="also write the checks as JSON here")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for train")
    p.set_defaults(run=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    if args.json:
        claim_file(args.json, "--json")
    from stage1_ds.config import load_config
    from stage1_ds.doctor import checks_json, format_checks, run_doctor

    config = load_config(args.config, args.overrides) if args.config else None
    checks, table = run_doctor(config, args.data, args.out, args.gpus, args.nodes)
    print(format_checks(checks, table))
    report = checks_json(checks, table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stage1", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_prepare(commands)
    _add_train(commands)
    _add_convert(commands)
    _add_card(commands)
    _add_evaluate(commands)
    _add_encode(commands)
    _add_probe(commands)
    _add_demo(commands)
    _add_doctor(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except Stage1Error as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:  # the training loop says its own line; this is any moment before or outside it
        log.warning("%s", _interrupted(args))
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
