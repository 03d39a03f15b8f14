"""What bars are, whatever they are called: a fingerprint of the data a model was trained and validated on,
so the bars it saw are recognised under any name, price level or folder.

A day of an instrument (the UTC date of its bars' starts) is summarised by a hash of its minute-to-minute
log returns of the close, rounded to 1e-6 (a hundredth of a basis point): renaming an instrument, scaling
its prices (a re-based copy) or preparing it again changes nothing of it, while any other market's day
differs. Days with fewer than `MIN_MOVES` moving minutes (a holiday, the stub of a week) are left out:
their returns are mostly zero and would match across markets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from stage1_ds.data.store import PreparedData
from stage1_ds.timeframes import BASE

#: How a day is hashed (kept with the fingerprint: a later change of method must not match by accident).
METHOD = "sha256 of round(1e6 * diff(log close)) per UTC day, int64, first 16 hex digits"
#: A day needs this many minutes whose close moved to be fingerprinted.
MIN_MOVES = 60


def day_hashes(start: np.ndarray, log_close: np.ndarray) -> dict[str, str]:
    """Per UTC day of bars starting at ``start`` (seconds) with closes ``log_close``: its hash -> its date."""
    days = start // 86_400
    moves = np.round(np.diff(log_close, prepend=np.nan) * 1e6)
    out: dict[str, str] = {}
    edges = np.flatnonzero(np.diff(days)) + 1
    for begin, end in zip(np.r_[0, edges], np.r_[edges, len(days)], strict=True):
        day = moves[begin + 1 : end]  # the first bar's move reaches into the day before
        if np.count_nonzero(day) < MIN_MOVES:
            continue
        digest = hashlib.sha256(day.astype(np.int64).tobytes()).hexdigest()[:16]
        out[digest] = str(np.datetime64(int(days[begin]), "D"))
    return out


def folder_days(data: PreparedData, splits: Iterable[str]) -> dict[str, str]:
    """The day hashes of every instrument of a prepared folder over the given splits (their history
    included: what a window of the split reads), each labelled ``"NAME split YYYY-MM-DD"``."""
    bars = data.bars[BASE]
    out: dict[str, str] = {}
    for name in data.instruments:
        begin, end = data.rows(name, BASE)
        start = np.asarray(bars.start[begin:end])
        log_close = np.asarray(bars.log_ohlc[begin:end, 3])  # type: ignore[index]
        for split in splits:
            region = data.split(name, split)
            if region.empty:
                continue
            inside = (start >= region.history_start) & (start < region.end)
            for digest, day in day_hashes(start[inside], log_close[inside]).items():
                out.setdefault(digest, f"{name} {split} {day}")
    return out


def fingerprint(datas: Iterable[PreparedData], splits: Iterable[str] = ("train", "val")) -> dict[str, Any]:
    """The fingerprint of the data a model is trained and validated on: `METHOD` and the day hashes of
    every folder's ``splits``."""
    days: dict[str, str] = {}
    chosen = tuple(splits)
    for data in datas:
        for digest, label in folder_days(data, chosen).items():
            days.setdefault(digest, label)
    return {"method": METHOD, "days": days}


def matching_days(model: dict[str, Any], scored: dict[str, str]) -> list[tuple[str, str]]:
    """The days of ``scored`` (`folder_days`) that the model's fingerprint holds: (scored label, the
    model's label) pairs, in time order of the scored ones; none where the methods differ."""
    if model.get("method") != METHOD:
        return []
    seen = model.get("days", {})
    pairs = [(label, seen[digest]) for digest, label in scored.items() if digest in seen]
    return sorted(pairs, key=lambda pair: pair[0].rsplit(" ", 1)[1])
