"""Which end of its minute a file's bars are stamped with, weighed from what markets do at known times.

Three kinds of evidence, each counted and turned into one signed z-score (positive: stamped with the
minute's start, as HistData and most FX sources; negative: with its end, as many futures platforms):

- **Session opens** (the FX week's Sunday open, an exchange's daily open): nothing trades before an open,
  so a start-stamped session's first bar is at :00 or :30, an end-stamped one's at :01 or :31.
- **Session closes**: a start-stamped session's last bar is at :59 or :29. A last bar at :00 or :30 is no
  evidence either way: an end stamp, or a start-stamped closing print (a US equity session's 16:00 row).
- **Hour turns** (fixed-time releases, fixings and opens cluster at the turn of the hour): the bar that
  holds the first minute of an hour moves more than the one after it. Start-stamped, that bar is stamped
  :00; end-stamped, :01. Each hour with both bars is one vote: which of the two has the wider range.

On a year of HistData EURUSD the hour turns alone give z = +24.6 (66% of 5,960 hours), and +5.5 on one
month; the same month shifted to end stamps gives -5.3.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from stage1_ds.data.ingest.sources import BarTime
from stage1_ds.data.timeframes import Bars

log = logging.getLogger(__name__)

#: A gap longer than this ends a trading session.
SESSION_GAP_SECONDS = 30 * 60
#: Sessions shorter than this many bars are not counted (a few stray bars in a gap are not an open).
SESSION_BARS = 30
#: |z| at or above this is strong evidence: prepare warns when the flag contradicts it.
STRONG = 4.0
#: Each half of a file at or above this |z|, with opposite signs, and prepare says the halves disagree.
HALVES = 3.0


@dataclass(frozen=True)
class StampEvidence:
    """The counts behind the verdict (`z`): sessions counted, opens and closes that fit start stamps
    (``start_like``) and end stamps (``end_like``), hours compared at their turn and, of them, the hours
    whose bar stamped :00 moved more than the one stamped :01 (``turns_start``)."""

    sessions: int
    start_like: int
    end_like: int
    hour_turns: int = 0
    turns_start: int = 0

    @property
    def z(self) -> float:
        """Signed strength of the evidence, positive for start stamps: the two sign tests (session
        boundaries, hour turns) combined as Stouffer's z."""
        scores = []
        if self.start_like + self.end_like:
            scores.append((self.start_like - self.end_like) / math.sqrt(self.start_like + self.end_like))
        if self.hour_turns:
            scores.append((2 * self.turns_start - self.hour_turns) / math.sqrt(self.hour_turns))
        return sum(scores) / math.sqrt(len(scores)) if scores else 0.0

    @property
    def verdict(self) -> str:
        """``start`` or ``end`` when the evidence is strong (|z| >= `STRONG`), else ``unclear``."""
        return "unclear" if abs(self.z) < STRONG else "start" if self.z > 0 else "end"

    def said(self) -> str:
        """The evidence in words, for a log line."""
        share = self.turns_start / self.hour_turns if self.hour_turns else 0.0
        return (
            f"z = {self.z:+.1f}: in {share:.0%} of {self.hour_turns:,} hours the bar stamped :00 moved more than "
            f"the one stamped :01; {self.start_like} session opens and closes fit start stamps, {self.end_like} "
            "fit end stamps"
        )


def stamp_evidence(start: np.ndarray, high: np.ndarray, low: np.ndarray) -> StampEvidence:
    """The evidence of sorted, unique 1-minute bars (`StampEvidence`): sessions are runs without a gap
    over `SESSION_GAP_SECONDS` of at least `SESSION_BARS` bars."""
    if len(start) < 2:
        return StampEvidence(0, 0, 0)
    cuts = np.flatnonzero(np.diff(start) > SESSION_GAP_SECONDS) + 1
    begins, ends = np.r_[0, cuts], np.r_[cuts - 1, len(start) - 1]
    long = ends - begins + 1 >= SESSION_BARS
    first = (start[begins[long]] // 60) % 60
    last = (start[ends[long]] // 60) % 60
    start_like = np.isin(first, (0, 30)).sum() + np.isin(last, (29, 59)).sum()
    end_like = np.isin(first, (1, 31)).sum()
    # Hour turns: each bar stamped :00 with a bar one minute later, and which of the two moved more.
    at_turn = np.flatnonzero((start // 60) % 60 == 0)
    after = np.searchsorted(start, start[at_turn] + 60)
    paired = after < len(start)
    at_turn, after = at_turn[paired], after[paired]
    both = start[after] == start[at_turn] + 60
    width = high - low
    a, b = width[at_turn[both]], width[after[both]]
    decided = a != b
    return StampEvidence(
        int(long.sum()),
        int(start_like),
        int(end_like),
        int(decided.sum()),
        int((a > b)[decided].sum()),
    )


def check_bar_time(name: str, bars: Bars, bar_time: BarTime) -> StampEvidence:
    """The evidence of how the bars are stamped (`stamp_evidence`). Warns when ``bar_time`` contradicts
    strong evidence, and when the two halves of the bars strongly disagree (a file joined from sources that
    stamp differently); each warning says which way and how strongly."""
    evidence = stamp_evidence(bars.start, bars.ohlc[:, 1], bars.ohlc[:, 2])
    if bar_time == BarTime.START and evidence.verdict == "end":
        log.warning(
            "%s: its bars look stamped with their END (%s); if the source stamps bars at their close, prepare "
            "again with --bar-time end (every derived bar would be a minute off)",
            name,
            evidence.said(),
        )
    elif bar_time == BarTime.END and evidence.verdict == "start":
        log.warning(
            "%s: --bar-time end, but its bars look stamped with their START (%s); if the source stamps bars "
            "at the start of their minute, prepare again without --bar-time end (every derived bar would be "
            "a minute off)",
            name,
            evidence.said(),
        )
    middle = len(bars) // 2
    halves = [
        stamp_evidence(bars.start[part], bars.ohlc[part, 1], bars.ohlc[part, 2])
        for part in (slice(0, middle), slice(middle, None))
    ]
    if min(abs(h.z) for h in halves) >= HALVES and halves[0].z * halves[1].z < 0:
        way = ["START" if h.z > 0 else "END" for h in halves]
        log.warning(
            "%s: the halves of its bars disagree on how they are stamped: up to %s they look stamped with "
            "their %s (%s), after it with their %s (%s); files joined from two sources? Prepare each part "
            "with its own --bar-time",
            name,
            datetime.fromtimestamp(int(bars.start[middle]), UTC).strftime("%Y-%m-%d %H:%M"),
            way[0],
            halves[0].said(),
            way[1],
            halves[1].said(),
        )
    return evidence
