"""The budget ladder: rungs trained, measured, written once and read back; the section and its figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stage1_ds.experiments.ladder import (
    LADDER_HEADING,
    SIGNALS,
    choose_signal,
    climb,
    gain_per_doubling,
    ladder_figure,
    ladder_section,
)

TINY = ["model.encoder.preset=tiny", "train.micro_batch_size=8", "train.eval_batches=1"]


def test_the_ladder_trains_each_signal_once_and_reports_gains_against_steps(
    synthetic_small: Path, unseen: Path, tmp_path: Path
) -> None:
    """A smoke run at the tiny size: SYNTH trained on, OTHER held out, both signals at one rung; a second
    climb reads the rungs back instead of training them again."""
    root = tmp_path / "each"
    root.mkdir()
    (root / "synth").symlink_to(synthetic_small)
    (root / "other").symlink_to(unseen)
    work = tmp_path / "runs"
    rungs = climb(root, work, (12,), ("OTHER",), 80, 1, TINY, trained="SYNTH")
    assert set(rungs) == set(SIGNALS) and all(set(r) == {12} for r in rungs.values())
    assert "model.loss.future_weight=1.0" in rungs["future"][12]["overrides"]
    for alone in ("reconstruction", "future"):  # the ladder's config has the range term: they turn it off
        assert "model.loss.range_weight=0.0" in rungs[alone][12]["overrides"], alone
    rung = rungs["range"][12]
    assert "model.loss.range_weight=1.0" in rung["overrides"]
    assert set(rung["instruments"]) == {"SYNTH", "OTHER"}
    for cells in rung["instruments"].values():
        for target in ("rv_60m", "rv_240m"):
            for readout in ("nested", "nested_untrained", "pca"):
                assert math.isfinite(cells[target][readout]["gain"])
                assert cells[target][readout]["val_gain"] >= 0, "a nested readout never loses on val"
    assert set(rung["time_mode"]["ratios"]) == {"m1", "m5", "m15", "m30", "h1", "h4"}
    written = {p.name: p.stat().st_mtime_ns for p in (work / "ladder").glob("*.json")}
    assert set(written) == {f"{signal}_12.json" for signal in SIGNALS}

    again = climb(root, work, (12,), ("OTHER",), 80, 1, TINY, trained="SYNTH")
    assert again == rungs
    assert {p.name: p.stat().st_mtime_ns for p in (work / "ladder").glob("*.json")} == written

    figure = tmp_path / "ladder.png"
    ladder_figure(rungs, figure)
    assert figure.stat().st_size > 0
    section = ladder_section(rungs, root, figure, "python scripts/quality_report.py each --ladder", (12, 24))
    assert section.startswith(LADDER_HEADING) and "![Gain against steps](ladder.png)" in section
    assert "the missing rungs are not yet run" in section and "not measurable with one rung" in section
    assert section.count(": met") + section.count(": missed") == 2 + 2 + 1
    json.dumps(rungs)  # the rungs are plain data

    # A signal climbed on its own: only its missing rung is trained; the other's rungs are read back.
    higher = climb(root, work, (12, 24), ("OTHER",), 80, 1, TINY, trained="SYNTH", train_signals=("range",))
    assert set(higher["range"]) == {12, 24} and set(higher["reconstruction"]) == {12}
    assert higher["reconstruction"][12] == rungs["reconstruction"][12]
    assert {p.name for p in (work / "ladder").glob("*.json")} == {*written, "range_24.json"}
    section = ladder_section(higher, root, None, "python scripts/quality_report.py each --ladder", (12, 24))
    assert "| range | 24 |" in section and "| reconstruction | 24 |" not in section
    section = ladder_section(
        higher, root, None, "python scripts/quality_report.py each --ladder", (12, 24), 24
    )
    assert "**range** (" in section and "reconstruction not measured there" in section


def _rung(gains: list[float]) -> dict:
    cell = {"nested": {"gain": 0.0}}
    return {
        "instruments": {
            f"I{k}": {"rv_60m": {"nested": {"gain": g}}, "rv_240m": cell} for k, g in enumerate(gains)
        }
    }


def test_the_slope_is_the_mean_gain_per_doubling_of_steps() -> None:
    by_steps = {2000: _rung([1.0, 3.0]), 8000: _rung([2.0, 4.0]), 32000: _rung([3.0, 5.0])}
    assert gain_per_doubling(by_steps, "rv_60m") == pytest.approx(0.5)  # one point per two doublings
    assert math.isnan(gain_per_doubling({2000: _rung([1.0])}, "rv_60m"))


def test_a_signal_not_yet_climbed_to_the_choice_rung_is_not_chosen() -> None:
    def rung(val_gain: float) -> dict:
        cell = {"nested": {"val_gain": val_gain}}
        return {"instruments": {"I0": {"rv_60m": cell}}}

    rungs = {
        "a": {2000: rung(1.0), 8000: rung(1.0)},
        "b": {2000: rung(5.0)},
        "c": {2000: rung(0.5), 8000: rung(2.0)},
    }
    assert choose_signal(rungs, 8000) == ("c", 8000)
    assert choose_signal({"a": {2000: rung(1.0)}, "b": {2000: rung(5.0)}}, 8000) == ("b", 2000)
