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
    bars/m1_last_<tf>.npy  (N_m1,) int32 the serving index (`serving_index`), rows local to the instrument:
    bars/<tf>_parent.npy   (N,) int32   ... see there

Each instrument owns the rows ``[begin, end)`` of every timeframe, as recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from stage1_ds.config import SPLITS
from stage1_ds.data.timeframes import Bars, bucket_start
from stage1_ds.errors import DataError
from stage1_ds.timeframes import TIMEFRAMES, Timeframe

log = logging.getLogger(__name__)
FORMAT_VERSION = 3  # 2: volume units, bucket origin, empty splits; 3: the serving index (`serving_index`)
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


def fitting_period(splits: dict[str, SplitRange]) -> tuple[str, SplitRange]:
    """Where an instrument's past-only quantities are fitted (feature statistics; the probe's seasonal
    profiles): its train split, or in a folder without one (``--split 0 0 1``: new data for a trained
    model) the lead-in of its first split, the bars before that split's first anchor, which no anchor of
    the folder is scored on. Returns ``("train" | "lead_in", period)``."""
    if not splits["train"].empty:
        return "train", splits["train"]
    first = next(splits[s] for s in SPLITS if not splits[s].empty)
    return "lead_in", SplitRange(first.history_start, first.history_start, first.anchor_start)


def index_fields(tf: Timeframe) -> tuple[str, ...]:
    """The arrays of the serving index stored beside ``tf``'s bars (see `serving_index`)."""
    coarser = [f"last_{c.value}" for c in TIMEFRAMES[1:]] if tf == TIMEFRAMES[0] else []
    return (*coarser, *(["parent"] if tf != TIMEFRAMES[-1] else []))


def serving_index(by_tf: dict[Timeframe, Bars], origin: int) -> dict[str, np.ndarray]:
    """What serving needs to find every window's rows without an index in memory, for one instrument, as
    int32 rows local to it (memory-mapped and shared by every process that serves the folder):

    - ``m1_last_<tf>``: for each 1-minute bar, the last ``tf`` bar complete at its end (its bucket ends at or
      before it; -1 before the first), the newest bar of a window anchored there;
    - ``<tf>_parent``: for each bar, the bar of the next coarser timeframe whose bucket holds it.
    """
    first = TIMEFRAMES[0]
    m1_end = by_tf[first].start + first.seconds
    index = {}
    for tf in TIMEFRAMES[1:]:
        last = np.searchsorted(by_tf[tf].start + tf.seconds, m1_end, side="right") - 1
        index[f"{first.value}_last_{tf.value}"] = last.astype(np.int32)
    for fine, coarse in itertools.pairwise(TIMEFRAMES):
        key = bucket_start(by_tf[fine].start, coarse, origin)
        parent = np.searchsorted(by_tf[coarse].start, key)
        if len(key) and not np.array_equal(
            by_tf[coarse].start[np.minimum(parent, len(by_tf[coarse]) - 1)], key
        ):
            raise DataError(
                f"{coarse.value} bars do not cover the {fine.value} bars (a bucket without its bar)"
            )
        index[f"{fine.value}_parent"] = parent.astype(np.int32)
    return index


def write_instrument_bars(folder: Path, by_tf: dict[Timeframe, Bars], origin: int) -> None:
    """One instrument's arrays, ``<tf>_<field>.npy`` (with ``<tf>_log_ohlc.npy`` and the serving index of
    bucket origin ``origin``), to be assembled later."""
    folder.mkdir(parents=True)
    for tf, bars in by_tf.items():
        for field_name in _FIELDS:
            np.save(folder / f"{tf.value}_{field_name}.npy", getattr(bars, field_name))
        np.save(folder / f"{tf.value}_log_ohlc.npy", np.log(bars.ohlc))
    for key, rows in serving_index(by_tf, origin).items():
        np.save(folder / f"{key}.npy", rows)


@dataclass(frozen=True)
class StoredRows:
    """Rows ``begin .. end - 1`` of a stored ``.npy`` array: one instrument's part of one field."""

    path: Path
    begin: int
    end: int


def part_rows(folder: Path, lengths: dict[str, int]) -> Callable[[Timeframe, str], StoredRows]:
    """The arrays `write_instrument_bars` wrote to ``folder`` (``lengths``: rows per timeframe)."""
    return lambda tf, field_name: StoredRows(folder / f"{tf.value}_{field_name}.npy", 0, lengths[tf.value])


def prepared_rows(data: PreparedData, name: str) -> Callable[[Timeframe, str], StoredRows]:
    """One instrument's rows in a prepared folder."""
    return lambda tf, field_name: StoredRows(
        data.root / "bars" / f"{tf.value}_{field_name}.npy", *data.rows(name, tf)
    )


@dataclass
class _OpenArray:
    out: BinaryIO
    dtype: np.dtype
    trailing: tuple[int, ...]
    header_bytes: int
    rows: int = 0

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.trailing, dtype=np.int64))


class BarsWriter:
    """The folder's arrays (``bars/<tf>_<field>.npy``), written one instrument at a time in the folder's
    order: each instrument's rows are appended to every array, copied file to file by the kernel, so memory
    does not grow with the folder; the headers, which hold the row counts, are written by `close`.

    Not through a memory map of the output: its pages would count in the process's resident memory until
    unmapped, however large the folder, and cost a page fault each.
    """

    def __init__(self, data_dir: Path):
        self.bars_dir = data_dir / "bars"
        self.bars_dir.mkdir(parents=True, exist_ok=True)
        self.offsets: dict[str, dict[str, list[int]]] = {}
        self._arrays: dict[str, _OpenArray] = {}

    def append(self, name: str, rows_of: Callable[[Timeframe, str], StoredRows]) -> None:
        """Append instrument ``name``'s rows of every stored array (``rows_of(tf, field)``)."""
        self.offsets[name] = {}
        for tf in TIMEFRAMES:
            for field_name in (*_STORED, *index_fields(tf)):
                source = rows_of(tf, field_name)
                data_offset, dtype, shape = _npy_layout(source.path)
                key = f"{tf.value}_{field_name}"
                if key not in self._arrays:
                    out = open(self.bars_dir / f"{key}.npy", "wb")  # noqa: SIM115 (closed by `close`)
                    header = _npy_header(dtype, (0, *shape[1:]))  # a placeholder of the final length
                    out.write(header)
                    self._arrays[key] = _OpenArray(out, dtype, shape[1:], len(header))
                array = self._arrays[key]
                if dtype != array.dtype or shape[1:] != array.trailing or source.end > shape[0]:
                    raise DataError(
                        f"{source.path}: array of shape {shape} and type {dtype}, expected rows "
                        f"{source.begin}..{source.end} of shape (..., {', '.join(map(str, array.trailing))}) "
                        f"and type {array.dtype}"
                    )
                count = source.end - source.begin
                _copy_range(
                    source.path,
                    data_offset + source.begin * array.row_bytes,
                    count * array.row_bytes,
                    array.out,
                    array.header_bytes + array.rows * array.row_bytes,
                )
                self.offsets[name][tf.value] = [array.rows, array.rows + count]
                array.rows += count

    def __enter__(self) -> BarsWriter:
        return self

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        if error is not None:  # the folder stays incomplete (no manifest); just release the files
            for array in self._arrays.values():
                array.out.close()
            self._arrays.clear()

    def close(self) -> dict[str, dict[str, list[int]]]:
        """Write every array's header; returns ``{instrument: {tf: [begin, end)}}``."""
        for array in self._arrays.values():
            header = _npy_header(array.dtype, (array.rows, *array.trailing))
            # numpy pads headers so that the first axis can grow in place (GROWTH_AXIS_MAX_DIGITS): the
            # placeholder and the final header take the same bytes
            assert len(header) == array.header_bytes, "npy header length changed with the row count"
            array.out.seek(0)
            array.out.write(header)
            array.out.close()
        self._arrays.clear()
        return self.offsets


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The header ``np.save`` writes for a C-ordered array of this type and shape."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _npy_layout(path: Path) -> tuple[int, np.dtype, tuple[int, ...]]:
    """Where the data of an ``.npy`` file starts, its dtype and its shape (C order only)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran:
            raise DataError(f"{path}: a Fortran-ordered array; expected one written by stage1 prepare")
        return f.tell(), dtype, shape


def _copy_range(src: Path, offset: int, count: int, out: BinaryIO, position: int) -> None:
    """Copy ``count`` bytes of ``src`` from ``offset`` to ``out`` at ``position``: in the kernel where it can
    (``copy_file_range``), else in blocks."""
    with open(src, "rb") as f:
        copied = 0
        if hasattr(os, "copy_file_range"):
            with contextlib.suppress(OSError):  # e.g. across file systems on an older kernel: copy in blocks
                while copied < count:
                    step = os.copy_file_range(
                        f.fileno(), out.fileno(), count - copied, offset + copied, position + copied
                    )
                    if step == 0:
                        break
                    copied += step
        f.seek(offset + copied)
        out.seek(position + copied)
        while copied < count:
            block = f.read(min(count - copied, 1 << 24))
            if not block:
                raise DataError(f"{src}: ends {count - copied} bytes early; prepare the folder again")
            out.write(block)
            copied += len(block)
        out.flush()


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
    index: dict[str, np.ndarray]  # the serving index (`serving_index`), memory-mapped

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

    def fitting_period(self, instrument: str) -> SplitRange:
        """`fitting_period` of the instrument's splits."""
        return fitting_period({split: self.split(instrument, split) for split in SPLITS})[1]

    def scale(self, instrument: str, tf: Timeframe) -> float:
        return scale_of(self.stats, instrument, tf)


def scale_of(stats: dict[str, Any], instrument: str, tf: Timeframe) -> float:
    """The feature scale of an instrument's timeframe in a ``stats.json`` payload."""
    return float(stats["instruments"][instrument]["scale"][tf.value])


def model_stats(model_stats: dict[str, Any], data: PreparedData, allow_other: bool) -> dict[str, Any]:
    """The statistics to scale a data folder's features with for a trained model, instrument by instrument:

    - an instrument the model was trained on: the model's own (its export's ``stats.json``), so that its
      inputs mean what they meant in training; a folder that scales it otherwise is an error;
    - an instrument the model never saw: the folder's own, fitted on that instrument's train split (its
      past only) or, in a folder without a train split, on the lead-in before its first anchor
      (`fitting_period`), with a log line; a folder prepared before lead-ins existed fitted them on the very
      split to evaluate: only with ``allow_other``.

    The result's ``sources`` maps every instrument served so far to ``model`` or ``folder`` (`stats_source`).

    Args:
        model_stats: the export's statistics (or the result of an earlier call, for a corpus).
        data: the folder to evaluate, encode or probe.
        allow_other: go on with a warning where the folder's scales differ from the model's (the model's are
            used) or come from a folder without a train split (the folder's are used).

    Raises:
        DataError: naming each instrument and timeframe at fault, unless ``allow_other``.
    """
    known = model_stats["instruments"]
    sources = dict(model_stats.get("sources", {}))
    problems, merged = [], {name: dict(record) for name, record in known.items()}
    for name in data.instruments:
        own = data.stats["instruments"][name]
        if name not in known or sources.get(name) == "folder":
            merged[name], sources[name] = own, "folder"
            fitted_on = own.get("fitted_on", "train")
            if fitted_on in ("train", "lead_in"):
                log.info(
                    "%s: the model never saw this instrument; its features are scaled with statistics fitted "
                    "on the %s of %s (its past only)",
                    name,
                    "train split" if fitted_on == "train" else "bars before its first anchor",
                    data.root,
                )
            else:
                problems.append(
                    f"instrument {name}: the model never saw it and {data.root} has no train split for it; "
                    f"its statistics were fitted on the {fitted_on} split"
                )
            continue
        sources[name] = "model"
        for tf, value in own["scale"].items():
            theirs = known[name]["scale"].get(tf)
            if theirs != value:
                problems.append(
                    f"instrument {name}, {tf}: the model scales by {theirs}, {data.root} by {value}"
                )
    if problems and not allow_other:
        raise DataError(
            f"{data.root}: feature statistics cannot be taken as they are:\n  "
            + "\n  ".join(problems)
            + "\n(pass --allow-other-stats to go on with the model's scales where it has them, else the "
            "folder's)"
        )
    for problem in problems:
        log.warning("%s", problem)
    return {**model_stats, "instruments": merged, "sources": sources}


def stats_source(stats: dict[str, Any], instruments: list[str]) -> dict[str, Any]:
    """Where the statistics that scaled ``instruments`` came from: ``stats_source`` is ``model`` (the
    model's own, every instrument), ``folder`` (the data folder's, fitted on its train split: instruments
    the model never saw) or ``mixed``; ``stats_source_by_instrument`` says it per instrument."""
    sources = stats.get("sources", {})
    by_instrument = {name: sources.get(name, "model") for name in instruments}
    kinds = set(by_instrument.values())
    return {
        "stats_source": kinds.pop() if len(kinds) == 1 else "mixed",
        "stats_source_by_instrument": by_instrument,
    }


#: Options that must agree between folders served together or merged.
ALIKE_KEYS = ("format_version", "window_bars", "split_fractions", "timezone", "bucket_origin_seconds")


def check_alike(datas: list[PreparedData]) -> None:
    """Folders served or merged together were prepared with the same options and hold disjoint instruments.

    Raises:
        DataError: naming the folders and the options that differ, or an instrument in two folders.
    """
    first = datas[0].manifest
    for data in datas[1:]:
        differ = [key for key in ALIKE_KEYS if data.manifest.get(key) != first.get(key)]
        if differ:
            detail = "; ".join(
                f"{key}: {first.get(key)!r} in {datas[0].root}, {data.manifest.get(key)!r}" for key in differ
            )
            raise DataError(
                f"{data.root}: prepared with other options than {datas[0].root} ({detail}); prepare them alike"
            )
    owners: dict[str, Path] = {}
    for data in datas:
        for name in data.instruments:
            if name in owners:
                raise DataError(
                    f"instrument {name} is in {owners[name]} and {data.root}: prepare all files of an instrument "
                    "together (its splits are cut over its whole time range)"
                )
            owners[name] = data.root


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
            f"{manifest_path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION} "
            "(3 stores the serving index that keeps memory flat in the number of anchors); prepare the data "
            "again with this version of stage1"
        )
    stats = json.loads(stats_path.read_text())
    bars, index = {}, {}
    for name in manifest["timeframes"]:
        tf = Timeframe(name)
        arrays = {f: _open_array(root / "bars" / f"{name}_{f}.npy") for f in _STORED}
        bars[tf] = Bars(**arrays)
        for field_name in index_fields(tf):
            index[f"{name}_{field_name}"] = _open_array(root / "bars" / f"{name}_{field_name}.npy")
    return PreparedData(root=root, manifest=manifest, stats=stats, bars=bars, index=index)


def _open_array(path: Path) -> np.ndarray:
    """A stored array, memory-mapped.

    Raises:
        DataError: it is missing or cut short.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing; the prepared folder is incomplete, prepare it again")
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as error:  # a file cut short (a full disk, a copy that stopped)
        raise DataError(f"{path}: not a complete array ({error}); prepare the folder again") from None
