"""What a report records of what it scored, and the checks before scoring: the model's own data kept out
of the scored split, the statistics that scale each instrument, and the identities of model and data."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from stage1_ds.data.corpus import DataSource, data_identity, load_corpus, scored_overlaps
from stage1_ds.data.fingerprint import folder_days, matching_days
from stage1_ds.data.store import model_stats, stats_source
from stage1_ds.errors import DataError
from stage1_ds.model.stage1 import EXPORT_DATA, export_identity, load_export_fingerprint, load_export_stats

log = logging.getLogger(__name__)


#: What each kind of overlap `check_overlap` finds means, and its fix (in the order checked: a clock first,
#: since every other comparison is made on it).
REFUSALS = {
    "clock": (
        "the data are on another clock than the model's",
        "prepare them again with the model's --timezone (its data.json says which)",
    ),
    "overlap": (
        "the figures would be scored on data the model was trained or validated on",
        "score a folder prepared with the model's splits (or later data)",
    ),
    "content": (
        "the figures would be scored on bars the model was trained or validated on (the same returns, day by "
        "day, whatever their name or folder)",
        "score data the model never saw",
    ),
}


def check_overlap(model_dir: Path, data: DataSource, split: str, allow_overlap: bool) -> dict[str, Any]:
    """The scored split against the model's own data (`scored_overlaps`): another split overlapping the
    model's train or val period, or a folder on another clock, is an error unless ``allow_overlap``; the
    model's own train or val split scored by name is said in one line (in-sample). Returns what a report
    records (``overlap``, ``clock``, ``in_sample``, ``overlap_allowed``).

    Raises:
        DataError: naming every overlap (or clock) and the fix.
    """
    record_file = model_dir / EXPORT_DATA
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    found = scored_overlaps(record, data, split)
    found["content"] = content_overlaps(model_dir, data, split)
    for key, (what, fix) in REFUSALS.items():
        if found[key] and not allow_overlap:
            raise DataError(
                f"{what}:\n  " + "\n  ".join(found[key]) + f"\n{fix}, or pass --allow-overlap to "
                "run anyway (the report then records it)"
            )
    allowed = found["overlap"] + found["clock"] + found["content"]
    if allowed:
        log.warning("scored despite: %s (--allow-overlap)", "; ".join(allowed))
    if found["in_sample"]:
        log.warning(
            "IN-SAMPLE: the %s split is the model's own %s data (%s): the figures say how well it fits what "
            "it saw, not how it does on new bars",
            split,
            split,
            "; ".join(found["in_sample"]),
        )
    return {**found, "overlap_allowed": bool(allowed)}


def content_overlaps(model_dir: Path, data: DataSource, split: str) -> list[str]:
    """The days of the scored split whose bars are the model's own training or validation bars by content
    (`stage1_ds.data.fingerprint`), whatever they are called; the model's own split scored by its name is
    in-sample (said by `scored_overlaps`), not counted here. One line per scored folder with matches: how
    many days, and the first few pairs.
    """
    known = load_export_fingerprint(model_dir)
    if known is None:
        log.warning(
            "%s: the export keeps no fingerprint of the data it was trained on (written before fingerprints "
            "were kept): only names guard against scoring its own training data",
            model_dir,
        )
        return []
    lines = []
    for folder in load_corpus(data):
        matches = matching_days(known, folder_days(folder, [split]))
        named = [
            (scored, theirs)
            for scored, theirs in matches
            if scored.split(" ")[0] != theirs.split(" ")[0] or theirs.split(" ")[1] != split
        ]
        if named:
            shown = "; ".join(f"{scored} is {theirs}" for scored, theirs in named[:3])
            lines.append(f"{folder.root}: {len(named)} days ({shown}{' ...' if len(named) > 3 else ''})")
    return lines


def provenance(model_dir: Path, data: DataSource, **others: DataSource | None) -> dict[str, Any]:
    """What a report records of what it measured (``provenance``): the model (`export_identity`) and the
    data (`data_identity`), and each of ``others`` given (``readout_from``, ``market``). `stage1 card`
    matches the model's hash."""
    record = {"model": export_identity(model_dir), "data": data_identity(data)}
    record.update({key: data_identity(value) for key, value in others.items() if value})
    return {"provenance": record}


def scoring_stats(
    model_dir: Path, data: DataSource, allow_other: bool, stats: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The feature statistics for ``data``: the export's for instruments the model was trained on, the
    folder's own for the others (`model_stats`), added to ``stats`` if given."""
    stats = stats or load_export_stats(model_dir)
    for folder in load_corpus(data):
        stats = model_stats(stats, folder, allow_other)
    return stats


def describe_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """`stats_source` of every instrument served, for a report's JSON, said in one line too."""
    source = stats_source(stats, list(stats["sources"]))
    folder = [name for name, kind in source["stats_source_by_instrument"].items() if kind == "folder"]
    if folder:
        print(
            f"features scaled with the data folder's own statistics for {', '.join(folder)}, which the model "
            "never saw; with the model's for the others"
            if source["stats_source"] == "mixed"
            else f"features scaled with the data folder's own statistics: the model never saw {', '.join(folder)}"
        )
    return source
