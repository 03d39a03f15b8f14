"""`stage1 prepare`: raw 1-minute bars (or the synthetic market) to a prepared data folder."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stage1_ds.config import SPLIT_FRACTIONS, WINDOW_BARS
from stage1_ds.data.features import FEATURE_NAMES, power_of_two_scale
from stage1_ds.data.ingest import (
    AS_GIVEN,
    HISTDATA_CLOCK,
    MAX_INPUT_MB,
    BarTime,
    CsvColumns,
    FileReport,
    InputFormat,
    M1Rows,
    OnBadRows,
    SourceFile,
    check_bar_time,
    check_clocks,
    check_parts,
    clean_m1,
    discover_inputs,
    read_source,
)
from stage1_ds.data.splits import (
    fit_stats,
    longest_window_span,
    rows_per_split,
    split_ranges,
    warn_few_anchors,
)
from stage1_ds.data.store import (
    FORMAT_VERSION,
    SPLITS,
    BarsWriter,
    PreparedData,
    check_alike,
    fitting_period,
    load_prepared,
    part_rows,
    prepared_rows,
    split_to_json,
    write_instrument_bars,
    write_json,
)
from stage1_ds.data.synthetic import SYNTHETIC_INSTRUMENT, generate_synthetic_m1
from stage1_ds.data.timeframes import MAX_UNITS, Bars, aggregate, volume_unit
from stage1_ds.errors import DataError
from stage1_ds.outputs import made_by, mark_folder, remove_own_folder, replace_own_files
from stage1_ds.timeframes import BASE, TIMEFRAMES, Timeframe
from stage1_ds.version import code_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    """How raw bars become a prepared folder.

    Attributes:
        split_fractions: train, val, test shares of each instrument's 1-minute rows, in time order; zeros
            allowed (``1 0 0``: all train; ``0 0 1``: all test, for evaluating a trained model on new data).
        window_bars: the longest window (bars per timeframe) the data will serve; it sets the gap between
            non-empty splits and the lag of the scale statistics.
        on_bad_rows: stop at the first bad row, or drop bad rows and count them.
        csv_columns: column names of generic CSV and Parquet input.
        timezone: IANA name of the clock of naive timestamps; each file is converted to UTC before bucketing.
            None: HistData files are converted from their documented clock (`HISTDATA_CLOCK`, said in one
            line), other files' naive timestamps are kept as given; `AS_GIVEN` keeps HistData's too.
            None: naive timestamps as given (timestamps with an offset and epoch times are UTC anyway).
        bucket_origin_minutes: where buckets start, in minutes after midnight of the data clock (all
            timeframes shift together, so they still nest): h4 buckets start at this time plus multiples of
            four hours, h1 at whole hours plus its minutes past the hour.
        bar_time: what a row's timestamp marks: the ``start`` of its minute (HistData, most FX sources) or
            its ``end`` (many futures platforms and brokers; such rows are moved back a minute, so that every
            derived bar holds the right minutes).
        max_input_mb: the cap on one compressed table's expanded size, in MB (memory stays bounded by it
            whatever a file expands to).
        workers: processes preparing instruments in parallel (None: the cores available); the output is
            the same for any number.
        force: replace an existing prepared folder.
    """

    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS
    window_bars: int = WINDOW_BARS
    on_bad_rows: OnBadRows = OnBadRows.ERROR
    csv_columns: CsvColumns = field(default_factory=CsvColumns)
    timezone: str | None = None
    bucket_origin_minutes: int = 0
    bar_time: BarTime = BarTime.START
    max_input_mb: int = MAX_INPUT_MB
    workers: int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        fractions = self.split_fractions
        if (
            len(fractions) != 3
            or min(fractions) < 0
            or max(fractions) <= 0
            or abs(sum(fractions) - 1.0) > 1e-6
        ):
            raise DataError(
                f"split fractions {list(fractions)}: expected three numbers >= 0 (train val test) that sum to 1"
            )
        if self.max_input_mb < 1:
            raise DataError(f"--max-input-mb {self.max_input_mb}: expected a size of at least 1 MB")
        if self.window_bars < 2:
            raise DataError(f"window bars {self.window_bars}: expected at least 2")
        if not 0 <= self.bucket_origin_minutes < 24 * 60:
            raise DataError(
                f"bucket origin {self.bucket_origin_minutes} minutes: expected a time of day, 00:00 to 23:59"
            )


def prepare_files(
    inputs: list[Path],
    out: Path,
    fmt: InputFormat = InputFormat.HISTDATA,
    instrument: str | None = None,
    options: PrepareOptions | None = None,
) -> dict[str, Any]:
    """Read, clean and derive every timeframe of the given files; write the prepared folder.

    Instruments are prepared one at a time per worker process (`PrepareOptions.workers`), so memory is
    bounded by one instrument's rows per worker, whatever the number of instruments.

    Returns:
        The manifest that was written.
    """
    options = resolve_clock(options or PrepareOptions(), fmt)
    _claim_output(out, options.force)
    by_instrument: dict[str, list[SourceFile]] = {}
    for source in discover_inputs(inputs, fmt, instrument):
        by_instrument.setdefault(source.instrument, []).append(source)
    jobs: list[Job] = [FilesJob(name, tuple(files)) for name, files in by_instrument.items()]
    return _prepare(out, jobs, options, synthetic=None)


def resolve_clock(options: PrepareOptions, fmt: InputFormat) -> PrepareOptions:
    """The options with the clock the files are read on said: HistData's documented clock where none is
    given (and one line saying so, with the flags that choose another), none for ``--timezone as-given``."""
    if options.timezone == AS_GIVEN:
        log.info("timestamps kept as given (naive, the files' own clock; --timezone as-given)")
        return replace(options, timezone=None)
    if options.timezone is None and fmt == InputFormat.HISTDATA:
        log.info(
            "HistData files are stamped in New York time: converted to UTC from %s (pass --timezone ZONE for "
            "another clock, or --timezone as-given to keep the times as written)",
            HISTDATA_CLOCK,
        )
        return replace(options, timezone=HISTDATA_CLOCK)
    return options


def prepare_synthetic(
    out: Path, days: int, seed: int, options: PrepareOptions | None = None, instruments: int = 1
) -> dict[str, Any]:
    """Write a prepared folder of the deterministic synthetic market (the embedded default data): one
    instrument (SYNTH), or ``instruments`` of them (SYNTH000, ...), each with its own seed, volatility
    level and price level."""
    options = options or PrepareOptions()
    if instruments < 1:
        raise DataError(f"--instruments {instruments}: expected at least 1")
    _claim_output(out, options.force)
    jobs: list[Job]
    if instruments == 1:
        jobs = [SyntheticJob(SYNTHETIC_INSTRUMENT, days, seed)]
        params = {"days": days, "seed": seed}
    else:
        jobs = [SyntheticJob(f"{SYNTHETIC_INSTRUMENT}{k:03d}", days, seed, k) for k in range(instruments)]
        params = {"days": days, "seed": seed, "instruments": instruments}
    return _prepare(out, jobs, options, synthetic=params)


@dataclass(frozen=True)
class FilesJob:
    """One instrument's files to read."""

    name: str
    files: tuple[SourceFile, ...]

    def read(self, options: PrepareOptions) -> tuple[Bars, dict[str, Any]]:
        parts: list[M1Rows] = []
        reports: list[FileReport] = []
        for source in self.files:
            rows, report = read_source(
                source, options.on_bad_rows, options.csv_columns, options.timezone, options.max_input_mb
            )
            parts.append(rows)
            reports.append(report)
        check_clocks(self.name, reports)
        check_parts(self.name, parts, reports)
        bars, cleaning = clean_m1(parts)
        evidence = check_bar_time(self.name, bars, options.bar_time)
        if options.bar_time == BarTime.END:
            # The minute an end stamp closes began a minute earlier.
            bars = replace(bars, start=bars.start - 60)
        if len(bars) == 0:
            files = [str(f.path) for f in self.files]
            raise DataError(f"instrument {self.name}: no valid 1-minute rows in {files}")
        record = {
            "sources": [asdict(r) for r in reports],
            "duplicates_dropped": cleaning.duplicates_dropped,
            "out_of_order_rows": cleaning.out_of_order_rows,
            "bad_rows_dropped": dict(sum((Counter(r.bad_rows_dropped) for r in reports), Counter())),
            "has_volume": bool(np.any(bars.volume != 0)),
            "volume_unit": cleaning.volume_unit,
            "bar_time": options.bar_time.value,
            "stamp_evidence": {**asdict(evidence), "z": round(evidence.z, 2), "verdict": evidence.verdict},
        }
        if cleaning.duplicates_dropped:
            log.warning(
                "%s: dropped %d duplicate timestamps (kept the first of each)",
                self.name,
                cleaning.duplicates_dropped,
            )
        if record["bad_rows_dropped"]:
            log.warning("%s: dropped bad rows: %s", self.name, record["bad_rows_dropped"])
        return bars, record


@dataclass(frozen=True)
class SyntheticJob:
    """One synthetic instrument: its seed, and which one of several it is (None: the single default)."""

    name: str
    days: int
    seed: int
    index: int | None = None

    def read(self, options: PrepareOptions) -> tuple[Bars, dict[str, Any]]:
        bars = generate_synthetic_m1(self.days, self.seed, self.index)
        record = {
            "sources": [],
            "duplicates_dropped": 0,
            "out_of_order_rows": 0,
            "bad_rows_dropped": {},
            "has_volume": True,
            "volume_unit": volume_unit(bars.volume, bars.start),
        }
        return bars, record


Job = FilesJob | SyntheticJob


@dataclass
class Prepared:
    """What a worker hands back for one instrument: its manifest record, statistics and bar counts (the
    bars themselves wait on disk in the parts folder)."""

    name: str
    record: dict[str, Any]
    stats: dict[str, Any]
    lengths: dict[str, int]


#: Where workers leave each instrument's arrays until they are assembled, inside the output folder.
PARTS = "parts.partial"


#: The command whose mark (`stage1_ds.outputs.MARK`) a prepared folder carries, and what it writes there.
PREPARE = "stage1 prepare"
PREPARED_FILES = ["manifest.json", "stats.json", "bars"]


def _claim_output(out: Path, force: bool) -> None:
    """Make ``out`` ready for a prepared folder: a new one, or with ``force`` one this command prepared
    (only its own files replaced); a staging folder of parts left by an interrupted run is removed if this
    command made it.

    Raises:
        DataError: ``out`` holds prepared data and ``force`` is not set.
        OutputError: ``out`` (or its ``parts.partial``) exists and was not made by ``stage1 prepare``.
    """
    if (out / "manifest.json").exists():
        if not force:
            raise DataError(f"{out}: already holds prepared data; pass --force to replace it")
        if made_by(out) != PREPARE:
            replace_own_files(out, "--out", PREPARE)  # refuses, naming the folder
        # The manifest goes first, so an interrupted rewrite never looks complete.
        (out / "manifest.json").unlink()
        replace_own_files(out, "--out", PREPARE)
    remove_own_folder(out / PARTS, "--out", PREPARE)
    out.mkdir(parents=True, exist_ok=True)


def _prepare(
    out: Path, jobs: list[Job], options: PrepareOptions, synthetic: dict[str, int] | None
) -> dict[str, Any]:
    """Prepare every instrument (in worker processes when there are several workers) into its own part,
    appending each part to the folder's arrays, in the jobs' order, as soon as it and every part before it
    are done (then deleting it): the output does not depend on the number of workers, and at most the
    parts that finished early wait on disk."""
    parts = out / PARTS
    parts.mkdir(parents=True)
    mark_folder(parts, PREPARE, [])  # an interrupted run's parts are this command's to remove
    workers = max(1, min(options.workers or len(os.sched_getaffinity(0)), len(jobs)))
    progress = tqdm(total=len(jobs), desc="preparing", unit="instrument", disable=None)
    done: dict[str, Prepared] = {}
    ordered: list[Prepared] = []
    with BarsWriter(out) as writer:

        def finished(result: Prepared) -> None:
            done[result.name] = result
            progress.set_postfix_str(result.name)
            progress.update(1)
            while len(ordered) < len(jobs) and jobs[len(ordered)].name in done:
                ready = done.pop(jobs[len(ordered)].name)
                writer.append(ready.name, part_rows(parts / ready.name, ready.lengths))
                shutil.rmtree(parts / ready.name)
                ordered.append(ready)

        if workers == 1:
            for job in jobs:
                finished(prepare_instrument(job, options, parts))
        else:
            # spawn, not fork: the caller may hold threads (torch, a DataLoader) that a fork would copy mid-lock
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(prepare_instrument, job, options, parts) for job in jobs]
                try:
                    for future in as_completed(futures):
                        finished(future.result())  # a worker's DataError surfaces here
                except BrokenProcessPool as error:
                    pool.shutdown(cancel_futures=True)
                    raise DataError(
                        f"prepare: a worker process stopped abruptly ({error}). Workers start by importing the "
                        "main script: a script that calls prepare needs its call under "
                        '`if __name__ == "__main__":`; a worker killed for lack of memory ends the same way '
                        "(use fewer --workers)"
                    ) from None
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # report it now, not after every other instrument
                    raise
        offsets = writer.close()
    progress.close()
    shutil.rmtree(parts)
    records = {r.name: {**r.record, "offsets": offsets[r.name]} for r in ordered}
    stats = {
        "window_bars": options.window_bars,
        "lag_bars": options.window_bars // 2,
        "instruments": {r.name: r.stats for r in ordered},
    }
    write_json(out / "stats.json", stats)
    manifest = _manifest(records, options, synthetic)
    write_json(out / "manifest.json", manifest)  # last: its presence marks a complete folder
    mark_folder(out, PREPARE, PREPARED_FILES)
    return manifest


def _manifest(
    records: dict[str, Any], options: PrepareOptions, synthetic: dict[str, int] | None
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "code_version": code_version(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "synthetic": synthetic is not None,
        "synthetic_params": synthetic,
        "timeframes": [tf.value for tf in TIMEFRAMES],
        "features": list(FEATURE_NAMES),
        "split_fractions": list(options.split_fractions),
        "window_bars": options.window_bars,
        "timezone": options.timezone,
        "bar_time": options.bar_time.value,
        "bucket_origin_seconds": 60 * options.bucket_origin_minutes,
        "on_bad_rows": options.on_bad_rows.value,
        "instruments": records,
    }


def prepare_instrument(job: Job, options: PrepareOptions, parts: Path) -> Prepared:
    """Read, clean, derive, split and fit one instrument; write its arrays to ``parts/<name>/``."""
    m1, record = job.read(options)
    name = job.name
    by_tf = {tf: aggregate(m1, tf, 60 * options.bucket_origin_minutes) for tf in TIMEFRAMES}
    most = max(int(bars.units.max(initial=0)) for bars in by_tf.values())
    if most >= MAX_UNITS:  # volume_unit bounds every bucket; this guards that promise
        raise DataError(
            f"{name}: a bar holds {most:,} volume units, not exact in float32 (limit {MAX_UNITS:,})"
        )
    try:
        gap = longest_window_span(by_tf, options.window_bars, name)
        splits = split_ranges(by_tf[BASE], options.split_fractions, gap, name)
    except DataError as error:
        raise DataError(f"{error}. {_flags_that_work(by_tf, options)}") from None
    warn_few_anchors(by_tf[BASE], splits, name)
    record.update(
        time_range_utc=[
            str(np.datetime64(int(by_tf[BASE].start[0]), "s")),
            str(np.datetime64(int(by_tf[BASE].start[-1]) + 60, "s")),
        ],
        gap_seconds=gap,
        splits={s: split_to_json(r) for s, r in splits.items()},
        rows={tf.value: rows_per_split(by_tf[tf], tf, splits) for tf in TIMEFRAMES},
    )
    fitted_on, period = fitting_period(splits)
    if fitted_on != "train":
        log.info(
            "%s: no train split; feature statistics are fitted on the %.1f days before the first anchor (a "
            "trained model's own statistics are used for evaluation and encoding where it has them)",
            name,
            (period.end - period.history_start) / 86400,
        )
    stats = fit_stats(by_tf, period, options.window_bars // 2)
    stats["fitted_on"] = fitted_on
    write_instrument_bars(parts / name, by_tf, 60 * options.bucket_origin_minutes)
    return Prepared(name, record, stats, {tf.value: len(bars) for tf, bars in by_tf.items()})


def merge_prepared(folders: list[Path], out: Path, force: bool = False) -> dict[str, Any]:
    """Merge prepared folders of disjoint instruments (prepared on several machines) into one, as a single
    ``prepare`` of all their files would have written it: the same arrays, records and statistics
    (statistics are per instrument, fitted on its own train split, and checked against the sufficient
    statistics each folder keeps).

    Raises:
        DataError: a folder is incomplete, the folders were prepared with different options (naming them),
            an instrument is in two folders, or a folder lacks the sufficient statistics.
    """
    datas = [load_prepared(folder) for folder in folders]
    check_alike(datas)
    for data in datas:
        for name in data.instruments:
            _check_sufficient(data, name)
    first = datas[0].manifest
    _claim_output(out, force)
    with BarsWriter(out) as writer:
        for data in datas:
            for name in data.instruments:
                writer.append(name, prepared_rows(data, name))
        offsets = writer.close()
    records = {
        name: {**data.manifest["instruments"][name], "offsets": offsets[name]}
        for data in datas
        for name in data.instruments
    }
    stats = {
        "window_bars": datas[0].stats["window_bars"],
        "lag_bars": datas[0].stats["lag_bars"],
        "instruments": {name: data.stats["instruments"][name] for data in datas for name in data.instruments},
    }
    synthetic = [d.manifest["synthetic_params"] for d in datas if d.manifest["synthetic"]]
    manifest = {
        **{key: first[key] for key in first if key not in ("instruments", "created_utc", "code_version")},
        "code_version": code_version(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "synthetic": len(synthetic) == len(datas),
        "synthetic_params": synthetic[0] if len(synthetic) == len(datas) == 1 else (synthetic or None),
        "merged_from": [str(d.root) for d in datas],
        "instruments": records,
    }
    write_json(out / "stats.json", stats)
    write_json(out / "manifest.json", manifest)
    mark_folder(out, PREPARE, PREPARED_FILES)
    return manifest


def _check_sufficient(data: PreparedData, name: str) -> None:
    """The folder keeps, per timeframe, the sums the instrument's scale was fitted from, and they give it."""
    record = data.stats["instruments"][name]
    if "sufficient" not in record:
        raise DataError(
            f"{data.root}: instrument {name} has no sufficient statistics in stats.json (prepared by an older "
            "version); prepare it again before merging"
        )
    for tf, sums in record["sufficient"].items():
        rms = float(np.sqrt(sums["sum_squares"] / sums["count"])) if sums["count"] else 0.0
        if power_of_two_scale(rms) != record["scale"][tf]:
            raise DataError(f"{data.root}: instrument {name}, {tf}: statistics do not agree with their sums")


#: The windows `_flags_that_work` tries, longest first (the demo's model needs at least 2 patches of 8).
WINDOW_CANDIDATES = (96, 64, 48, 32, 24, 16)


def _flags_that_work(by_tf: dict[Timeframe, Bars], options: PrepareOptions) -> str:
    """What to pass instead, computed on this data: the longest `WINDOW_CANDIDATES` window that fits the
    requested split; the smallest equal val/test shares (keeping zeros) that fit the requested window; when
    neither does, the shorter window and shares that fit together and keep the most for training."""
    fractions, window = options.split_fractions, options.window_bars
    gaps: dict[int, int | None] = {}  # each window's gap, measured once (None: fewer bars than one window)

    def fits(split: tuple[float, float, float], w: int) -> bool:
        """Whether every non-empty split is longer than the gap that windows of ``w`` bars need."""
        if w not in gaps:
            try:
                gaps[w] = longest_window_span(by_tf, w, "")
            except DataError:
                gaps[w] = None
        gap = gaps[w]
        if gap is None:
            return False
        try:
            split_ranges(by_tf[BASE], split, gap, "")
        except DataError:
            return False
        return True

    def split_flag(split: tuple[float, float, float]) -> str:
        return "--split " + " ".join(f"{f:g}" for f in split)

    def smallest_shares(w: int) -> tuple[float, float, float] | None:
        for share in np.arange(0.05, 0.46, 0.05):
            held = [share if f > 0 else 0.0 for f in fractions[1:]]
            tried = (round(1.0 - sum(held), 2), round(held[0], 2), round(held[1], 2))
            if tried != fractions and fits(tried, w):
                return tried
        return None

    found = []
    shorter = [w for w in WINDOW_CANDIDATES if w < window]
    fitting = [w for w in shorter if fits(fractions, w)]
    if fitting:
        found.append(f"--window-bars {fitting[0]} (keeping {split_flag(fractions)})")
    shares = smallest_shares(window)
    if shares is not None:
        found.append(f"{split_flag(shares)} (keeping --window-bars {window})")
    if not found:  # the pair that keeps the most for training, then the longest window
        pairs = [(w, shares) for w in shorter if (shares := smallest_shares(w)) is not None]
        if pairs:
            w, shares = max(pairs, key=lambda pair: (pair[1][0], pair[0]))
            found.append(f"--window-bars {w} {split_flag(shares)}")
    # Data too short to train on may still score a model trained elsewhere: one test split, windows of the
    # model's length (prepare does not know it: the longest that fits is named).
    scoring = [w for w in (window, *WINDOW_CANDIDATES) if w <= window and fits((0.0, 0.0, 1.0), w)]
    to_score = (
        " To score a model already trained rather than train one (`stage1 evaluate`, or `stage1 probe` with "
        f"--readout-from a longer folder): --split 0 0 1 --window-bars W, W the model's data.window_bars (up to "
        f"{scoring[0]} fits this data)"
        if scoring and fractions != (0.0, 0.0, 1.0)
        else ""
    )
    if not found:
        return (
            f"No --window-bars down to {WINDOW_CANDIDATES[-1]} with val/test shares up to 0.45 fits this data "
            f"({len(by_tf[BASE]):,} 1-minute bars): give a longer file." + to_score
        )
    return "Flags that fit this data: " + ", or ".join(found) + "." + to_score


def clock_of(record: dict[str, Any]) -> str:
    """The clock of an instrument's times, in words: ``UTC``, ``UTC, converted from ZONE``, ``naive, as
    given`` or the synthetic market's."""
    clocks = sorted({source.get("clock", "") for source in record.get("sources", [])})
    if not clocks:
        return "the synthetic market's clock"
    if all(c.startswith("UTC (converted from") for c in clocks):
        return "UTC, converted from " + ", ".join(
            c.removeprefix("UTC (converted from ").rstrip(")") for c in clocks
        )
    if all(c.startswith("UTC") for c in clocks):
        return "UTC"
    return "naive, as given"


def summary_table(manifest: dict[str, Any]) -> str:
    """A plain-text table of bars per timeframe and split, and what cleaning dropped."""
    width = max(12, *(len(name) + 2 for name in manifest["instruments"]))
    lines = [f"{'instrument':<{width}}{'timeframe':<10}{'total':>10}{'train':>10}{'val':>10}{'test':>10}"]
    for name, record in manifest["instruments"].items():
        for tf, rows in record["rows"].items():
            lines.append(f"{name:<{width}}{tf:<10}" + "".join(f"{rows[k]:>10}" for k in ("total", *SPLITS)))
        dropped = record["bad_rows_dropped"] or "none"
        columns = sorted({src["volume_column"] for src in record["sources"] if src.get("volume_column")})
        volume = (
            (
                "volume from " + ", ".join(repr(c) for c in columns)
                if record["sources"]
                else "volume (synthetic)"
            )
            if record["has_volume"]
            else "no volume"
            + (f" (all zero in {', '.join(repr(c) for c in columns)})" if columns else " column")
        )
        lines.append(
            f"{name}: {record['duplicates_dropped']} duplicate timestamps dropped; bad rows dropped: "
            f"{dropped}; {volume}; bars stamped at their {record.get('bar_time', 'start')}; range "
            f"{record['time_range_utc'][0]} .. {record['time_range_utc'][1]} ({clock_of(record)})"
        )
    return "\n".join(lines)
