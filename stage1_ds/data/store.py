"""The prepared data folder: bars of every timeframe as memory-mappable arrays, plus JSON metadata.

Layout of DATA_DIR::

    manifest.json        instruments, splits, row counts, sources with hashes, cleaning report
    stats.json           per instrument and timeframe: feature scale fitted on the training split
    bars/<tf>_start.npy  (N,) int64 bucket start, seconds; all instruments one after another
    bars/<tf>_ohlc.npy   (N, 4) float64
    bars/<tf>_volume.npy (N,) float64
    bars/<tf>_count.npy  (N,) int32, 1-minute bars per bar
    bars/<tf>_units.npy  (N,) int64 volume in whole units of the instrument's volume unit
    bars/<tf>_log_ohlc.npy (N, 4) float64 log of ohlc: serving windows then needs no log

Each instrument owns the rows ``[begin, end)`` of every timeframe, as recorded in the manifest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stage1_ds.data.timeframes import TIMEFRAMES, Bars, Timeframe
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: volume units per bar (bars/<tf>_units.npy), bucket origin, empty splits
SPLITS = ("train", "val", "test")
_FIELDS = ("start", "ohlc", "volume", "count", "units")
_STORED = (*_FIELDS, "log_ohlc")


@dataclass(frozen=True)
class SplitRange:
    """Times (seconds) of one split of one instrument.

    Windows of the split use only bars whose bucket lies in ``[history_start, end)``; their anchors lie in
    ``[anchor_start, end]``. ``anchor_start - history_start`` is the gap: history for the first windows,
    seen by no other split.
    """

    history_start: int
    anchor_start: int
    end: int

    @property
    def empty(self) -> bool:
        """The split holds no bar (its share was 0)."""
        return self.history_start >= self.end


def write_instrument_bars(folder: Path, by_tf: dict[Timeframe, Bars]) -> None:
    """One instrument's arrays, ``<tf>_<field>.npy`` (and ``<tf>_log_ohlc.npy``), to be assembled later."""
    folder.mkdir(parents=True)
    for tf, bars in by_tf.items():
        for field_name in _FIELDS:
            np.save(folder / f"{tf.value}_{field_name}.npy", getattr(bars, field_name))
        np.save(folder / f"{tf.value}_log_ohlc.npy", np.log(bars.ohlc))


def assemble_bars(data_dir: Path, parts: list[tuple[str, Path, dict[str, int]]]) -> dict[str, dict]:
    """Write the folder's arrays from per-instrument arrays written by `write_instrument_bars`
    (``(name, folder, rows per timeframe)``, in order). Returns ``{instrument: {tf: [begin, end)}}``."""
    lengths = {name: rows for name, _, rows in parts}
    folders = {name: folder for name, folder, _ in parts}
    return _assemble(
        data_dir,
        lengths,
        lambda name, tf, field: np.load(folders[name] / f"{tf.value}_{field}.npy", mmap_mode="r"),
    )


def assemble_instrument_slices(data_dir: Path, parts: list[tuple[PreparedData, str]]) -> dict[str, dict]:
    """Write the folder's arrays from instruments of other prepared folders (``(folder, name)``, in order),
    as `stage1 prepare --merge` does. Returns ``{instrument: {tf: [begin, end)}}``."""
    sources = {name: data for data, name in parts}
    lengths = {
        name: {tf.value: data.rows(name, tf)[1] - data.rows(name, tf)[0] for tf in TIMEFRAMES}
        for data, name in parts
    }

    def read(name: str, tf: Timeframe, field_name: str) -> np.ndarray:
        begin, end = sources[name].rows(name, tf)
        return np.load(sources[name].root / "bars" / f"{tf.value}_{field_name}.npy", mmap_mode="r")[begin:end]

    return _assemble(data_dir, lengths, read)


def _assemble(
    data_dir: Path, lengths: dict[str, dict[str, int]], read: Callable[[str, Timeframe, str], np.ndarray]
) -> dict[str, dict]:
    """Every stored array of every timeframe: the instruments' parts one after another, streamed into a
    memory-mapped file one instrument at a time, so memory stays at one instrument's part."""
    bars_dir = data_dir / "bars"
    bars_dir.mkdir(parents=True, exist_ok=True)
    offsets: dict[str, dict] = {name: {} for name in lengths}
    for tf in TIMEFRAMES:
        begin = 0
        for name, rows in lengths.items():
            offsets[name][tf.value] = [begin, begin + rows[tf.value]]
            begin += rows[tf.value]
        for field_name in _STORED:
            first = read(next(iter(lengths)), tf, field_name)
            out = np.lib.format.open_memmap(
                bars_dir / f"{tf.value}_{field_name}.npy",
                mode="w+",
                dtype=first.dtype,
                shape=(begin, *first.shape[1:]),
            )
            for name, (start, end) in ((n, offsets[n][tf.value]) for n in lengths):
                out[start:end] = read(name, tf, field_name)
            out.flush()
            del out
    return offsets


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file


def split_to_json(split: SplitRange) -> dict[str, Any]:
    out: dict[str, Any] = asdict(split)
    for key in ("history_start", "anchor_start", "end"):
        out[f"{key}_utc"] = str(np.datetime64(out[key], "s"))
    return out


@dataclass
class PreparedData:
    """A prepared data folder opened read-only; bar arrays are memory-mapped."""

    root: Path
    manifest: dict[str, Any]
    stats: dict[str, Any]
    bars: dict[Timeframe, Bars]

    @property
    def instruments(self) -> list[str]:
        return list(self.manifest["instruments"])

    @property
    def bucket_origin(self) -> int:
        """Seconds after midnight where the buckets of the folder start (0 for folders from before the
        option existed)."""
        return int(self.manifest.get("bucket_origin_seconds", 0))

    def rows(self, instrument: str, tf: Timeframe) -> tuple[int, int]:
        begin, end = self.manifest["instruments"][instrument]["offsets"][tf.value]
        return int(begin), int(end)

    def split(self, instrument: str, split: str) -> SplitRange:
        record = self.manifest["instruments"][instrument]["splits"][split]
        return SplitRange(record["history_start"], record["anchor_start"], record["end"])

    def scale(self, instrument: str, tf: Timeframe) -> float:
        return scale_of(self.stats, instrument, tf)


def scale_of(stats: dict[str, Any], instrument: str, tf: Timeframe) -> float:
    """The feature scale of an instrument's timeframe in a ``stats.json`` payload."""
    return float(stats["instruments"][instrument]["scale"][tf.value])


def model_stats(model_stats: dict[str, Any], data: PreparedData, allow_other: bool) -> dict[str, Any]:
    """The statistics to scale a data folder's features with for a trained model: the model's own (its
    export's ``stats.json``), so that its inputs mean what they meant in training.

    Args:
        model_stats: the export's statistics.
        data: the folder to evaluate or encode.
        allow_other: where the folder's statistics differ (another scale, or an instrument the model never
            saw), warn and go on (the model's scale where it has one, else the folder's) instead of raising.

    Raises:
        DataError: naming each instrument and timeframe whose statistics differ, unless ``allow_other``.
    """
    known = model_stats["instruments"]
    problems, merged = [], {name: dict(record) for name, record in known.items()}
    for name in data.instruments:
        own = data.stats["instruments"][name]["scale"]
        if name not in known:
            problems.append(
                f"instrument {name}: the model has no statistics for it (it knows {sorted(known)})"
            )
            merged[name] = data.stats["instruments"][name]
            continue
        for tf, value in own.items():
            theirs = known[name]["scale"].get(tf)
            if theirs != value:
                problems.append(
                    f"instrument {name}, {tf}: the model scales by {theirs}, {data.root} by {value}"
                )
    if problems and not allow_other:
        raise DataError(
            f"{data.root}: feature statistics differ from the model's:\n  "
            + "\n  ".join(problems)
            + "\n(pass --allow-other-stats to go on with the model's scales, or the folder's where the model "
            "has none)"
        )
    for problem in problems:
        log.warning("%s", problem)
    return {**model_stats, "instruments": merged}


def load_prepared(data_dir: Path | str) -> PreparedData:
    """Open DATA_DIR written by ``stage1 prepare``.

    Raises:
        DataError: the folder, its manifest, stats or arrays are missing or of another format version.
    """
    root = Path(data_dir)
    manifest_path, stats_path = root / "manifest.json", root / "stats.json"
    for path in (manifest_path, stats_path):
        if not path.is_file():
            raise DataError(f"{path}: not found; is {root} a folder written by 'stage1 prepare'?")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{manifest_path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}; "
            "prepare the data again with this version of stage1"
        )
    stats = json.loads(stats_path.read_text())
    bars = {}
    for name in manifest["timeframes"]:
        tf = Timeframe(name)
        arrays = {}
        for field_name in _STORED:
            path = root / "bars" / f"{name}_{field_name}.npy"
            if not path.is_file():
                raise DataError(f"{path}: missing; the prepared folder is incomplete, prepare it again")
            arrays[field_name] = np.load(path, mmap_mode="r")
        bars[tf] = Bars(**arrays)
    return PreparedData(root=root, manifest=manifest, stats=stats, bars=bars)
