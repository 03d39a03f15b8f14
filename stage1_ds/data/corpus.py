"""Many prepared folders served as one dataset, without merging them: a corpus grows by preparing a new
folder beside the old ones.

``--data`` takes several folders, or a catalog file listing them (one folder per line, relative to the
file; blank lines and ``#`` comments ignored). Folders must be prepared alike and hold disjoint instruments
(`check_alike`, the checks of ``stage1 prepare --merge``). Their instruments are served in the order of the
folders, each folder's anchors after the previous folder's, so a corpus serves exactly the batches of the
folder that merging it would give (tested).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stage1_ds.config import DataConfig
from stage1_ds.data.batch import Batch, TimeframeWindow
from stage1_ds.data.context import MarketContext
from stage1_ds.data.store import ALIKE_KEYS, PreparedData, check_alike, load_prepared
from stage1_ds.data.windows import BarMasker, WindowDataset
from stage1_ds.errors import DataError

DataSource = Path | str | Sequence[Path | str]


def data_folders(data: DataSource) -> list[Path]:
    """The prepared folders of ``--data``: folders as given, a catalog file expanded.

    Raises:
        DataError: a catalog lists nothing, or a path is neither a folder nor a file.
    """
    paths = [Path(data)] if isinstance(data, str | Path) else [Path(p) for p in data]
    folders: list[Path] = []
    for path in paths:
        if path.is_file():
            lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
            listed = [path.parent / line for line in lines if line]
            if not listed:
                raise DataError(f"{path}: a catalog of prepared folders, but it lists none (one per line)")
            folders.extend(listed)
        else:
            folders.append(path)
    return folders


def data_identity(data: DataSource) -> list[dict[str, str]]:
    """What a report records of the data it scored: each prepared folder of ``--data`` (resolved) and the
    SHA-256 of its ``manifest.json`` (which holds its sources' hashes, options and splits)."""
    identity = []
    for folder in data_folders(data):
        with (folder / "manifest.json").open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        identity.append({"folder": str(folder.resolve()), "manifest_sha256": digest})
    return identity


def load_corpus(data: DataSource) -> list[PreparedData]:
    """Open every folder of ``--data`` and check that they can be served together (`check_alike`)."""
    datas = [load_prepared(folder) for folder in data_folders(data)]
    check_alike(datas)
    return datas


def corpus_stats(datas: list[PreparedData]) -> dict[str, Any]:
    """The statistics of every instrument of the folders (each fitted on its own train split), as one
    ``stats.json`` payload."""
    instruments = {name: data.stats["instruments"][name] for data in datas for name in data.instruments}
    return {**datas[0].stats, "instruments": instruments}


#: What a run (and its export) records of the data it was trained on, beside the statistics: the options
#: the folders were prepared with, and per instrument its time range, splits, sources and volume unit.
DATA_RECORD_KEYS = ("time_range_utc", "splits", "has_volume", "volume_unit")


def corpus_record(datas: list[PreparedData]) -> dict[str, Any]:
    """The ``data.json`` of a run and its export: the folders, the options they were prepared with
    (`ALIKE_KEYS`, shared by every folder), and per instrument `DATA_RECORD_KEYS` and its source files
    (path and SHA-256). What `stage1_ds.Encoder` derives raw bars with, and what the model card lists."""
    first = datas[0].manifest
    instruments = {}
    for data in datas:
        for name in data.instruments:
            record = data.manifest["instruments"][name]
            instruments[name] = {key: record.get(key) for key in DATA_RECORD_KEYS}
            instruments[name]["sources"] = [
                {"path": source["path"], "sha256": source["sha256"], "clock": source.get("clock", "")}
                for source in record.get("sources", [])
            ]
    return {
        "folders": [str(data.root) for data in datas],
        **{key: first.get(key) for key in ALIKE_KEYS},
        "synthetic": all(data.manifest.get("synthetic") for data in datas),
        "instruments": instruments,
    }


class CorpusWindows(torch.utils.data.Dataset):
    """The aligned windows of one split of several prepared folders, as one dataset with the interface of
    `WindowDataset` (``len``, ``batch``, ``instruments``, ``anchor_time``, ...): anchor ids run over the
    folders in order, a sample's randomness is a hash of its corpus-wide id, and its instrument index is
    into the corpus's ``instruments``."""

    def __init__(
        self,
        datas: list[PreparedData],
        split: str,
        config: DataConfig,
        seed: int = 0,
        stats: dict[str, Any] | None = None,
    ):
        alone = replace(config, context=False)  # the market is the corpus's, not each folder's
        self.parts = [WindowDataset(data, split, alone, seed=seed, stats=stats) for data in datas]
        self.split, self.seed = split, seed
        self.timeframes = self.parts[0].timeframes
        self.window_bars = self.parts[0].window_bars
        self.instruments = [name for part in self.parts for name in part.instruments]
        self._anchors_before = np.cumsum([0, *(len(part) for part in self.parts)])
        self._instruments_before = np.cumsum([0, *(len(part.instruments) for part in self.parts)])
        self._owner = {name: part.data for part in self.parts for name in part.instruments}
        self.context = MarketContext(self.parts, config) if config.context else None

    def __len__(self) -> int:
        return int(self._anchors_before[-1])

    def data_of(self, instrument: str) -> PreparedData:
        """The folder that holds an instrument."""
        return self._owner[instrument]

    @property
    def instrument_anchors(self) -> np.ndarray:
        return np.concatenate([part.instrument_anchors for part in self.parts])

    @property
    def anchor_time(self) -> np.ndarray:
        return np.concatenate([part.anchor_time for part in self.parts])

    @property
    def anchor_instrument(self) -> np.ndarray:
        return np.concatenate(
            [
                part.anchor_instrument + k
                for part, k in zip(self.parts, self._instruments_before, strict=False)
            ]
        )

    def __getitems__(self, ids: list[int]) -> Batch:
        return self.batch(np.asarray(ids, dtype=np.int64))

    def batch(self, ids: np.ndarray, masker: BarMasker | None = None) -> Batch:
        """The batch of the given sample ids: each folder's samples assembled by its own dataset (with their
        corpus-wide ids), put back in the order asked for."""
        anchors = ids % len(self)
        part = np.searchsorted(self._anchors_before, anchors, side="right") - 1
        pieces, order = [], []
        for k in np.unique(part):
            chosen = np.flatnonzero(part == k)
            piece = self.parts[k].batch(
                ids[chosen], masker, anchors=anchors[chosen] - self._anchors_before[k]
            )
            piece.instrument = piece.instrument + int(self._instruments_before[k])
            pieces.append(piece)
            order.append(chosen)
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        batch = _concatenated(pieces, back)
        if self.context is not None:
            names = np.asarray(self.instruments)[batch.instrument.numpy()]
            batch.context = self.context.at(names, batch.anchor_time.numpy())
        return batch


def _concatenated(pieces: list[Batch], order: torch.Tensor) -> Batch:
    """Batches joined along the samples, then taken in ``order``."""
    if len(pieces) == 1:
        return pieces[0]

    def cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if values[0] is None else torch.cat([v for v in values if v is not None])[order]

    windows = {}
    for tf in pieces[0].windows:
        parts = [p.windows[tf] for p in pieces]
        windows[tf] = TimeframeWindow(
            features=torch.cat([w.features for w in parts])[order],
            valid=torch.cat([w.valid for w in parts])[order],
            start_time=torch.cat([w.start_time for w in parts])[order],
            parent_index=cat([w.parent_index for w in parts]),
            scale=torch.cat([w.scale for w in parts])[order],
            volume_scale=cat([w.volume_scale for w in parts]),
            mask=cat([w.mask for w in parts]),
        )
    return Batch(
        windows=windows,
        reference_price=torch.cat([p.reference_price for p in pieces])[order],
        anchor_time=torch.cat([p.anchor_time for p in pieces])[order],
        instrument=torch.cat([p.instrument for p in pieces])[order],
        sample_id=torch.cat([p.sample_id for p in pieces])[order],
        mask_mode=cat([p.mask_mode for p in pieces]),
        reference_volume=cat([p.reference_volume for p in pieces]),
        future_size=cat([p.future_size for p in pieces]),
    )


#: What serves windows of a split: one folder's, or a corpus's.
Windows = WindowDataset | CorpusWindows


def volume_unit_of(windows: Windows, instrument: str) -> float:
    """The instrument's volume per unit of its prepared folder, what turns a figure's volume into the
    instrument's own units (1.0 for folders from before it was recorded)."""
    record = windows.data_of(instrument).manifest["instruments"][instrument]
    return float(record.get("volume_unit") or 1.0)


def open_windows(
    data: DataSource | PreparedData,
    split: str,
    config: DataConfig,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
) -> Windows:
    """The windows of one split of ``--data``: one folder's `WindowDataset`, or a `CorpusWindows`."""
    if isinstance(data, PreparedData):
        return WindowDataset(data, split, config, seed=seed, stats=stats)
    datas = load_corpus(data)
    if len(datas) == 1:
        return WindowDataset(datas[0], split, config, seed=seed, stats=stats)
    return CorpusWindows(datas, split, config, seed=seed, stats=stats)


def serve_market(
    windows: Windows,
    market: DataSource,
    config: DataConfig,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
) -> Windows:
    """Serve ``windows``' samples with the context of the instruments of ``market`` (other folders: the
    market a scored folder trades in), each from its own split of the windows' split name, scaled with
    ``stats`` (every market instrument's; None: each folder's own); in place, and returned.

    Raises:
        DataError: ``stats`` does not scale some market instrument.
    """
    datas = load_corpus(market)
    if stats is not None:
        missing = [name for data in datas for name in data.instruments if name not in stats["instruments"]]
        if missing:
            raise DataError(
                f"the context of {', '.join(str(d.root) for d in datas)}: no feature statistics for {missing}; "
                "scale every market folder (stage1_ds.data.store.model_stats over each)"
            )
    alone = replace(config, context=False)
    parts = [WindowDataset(data, windows.split, alone, seed=seed, stats=stats) for data in datas]
    windows.context = MarketContext(parts, config)
    return windows


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def scored_overlaps(
    model_record: dict[str, Any] | None, data: DataSource, split: str
) -> dict[str, list[str]]:
    """What would let a model be scored on its own data, from its export's ``data.json`` (`corpus_record`),
    one line each, by kind:

    - ``overlap``: for every instrument of ``data`` the model was trained on, a ``split`` whose bars (history
      included) overlap the model's train or val period of another name, naming both ranges;
    - ``in_sample``: the model's own train or val split scored by its name (asked for; said, not refused);
    - ``clock``: folders prepared on another clock than the model's data (``--timezone``).

    Every list is empty when the export has no data record (written before data.json existed)."""
    found: dict[str, list[str]] = {"overlap": [], "in_sample": [], "clock": []}
    if model_record is None:
        return found
    known = model_record.get("instruments", {})
    for folder in load_corpus(data):
        clock = folder.manifest.get("timezone")
        if clock != model_record.get("timezone"):
            found["clock"].append(
                f"{folder.root}: prepared with --timezone {clock or '(none: the files own clock)'}, the model's "
                f"data with {model_record.get('timezone') or '(none: the files own clock)'}: its hours mean "
                "another clock than the model learned"
            )
        for name in folder.instruments:
            if name not in known:
                continue
            scored = folder.split(name, split)
            for period in ("train", "val"):
                used = known[name]["splits"][period]
                if not (scored.history_start < used["end"] and used["history_start"] < scored.end):
                    continue
                line = (
                    f"{name}: the {split} split of {folder.root} ({_utc(scored.history_start)} .. "
                    f"{_utc(scored.end)}) overlaps the model's {period} period "
                    f"({_utc(used['history_start'])} .. {_utc(used['end'])})"
                )
                found["in_sample" if period == split else "overlap"].append(line)
    return found
