"""The budget ladder: rungs trained, measured, written once and read back; the section and its figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stage1_ds.experiments import ladder
from stage1_ds.experiments.harness import Options, write_report
from stage1_ds.experiments.ladder import (
    SIGNALS,
    choose_signal,
    climb,
    gain_per_doubling,
    ladder_page,
    paired_difference,
    val_score,
    without_losses,
)

TINY = ["model.encoder.preset=tiny", "train.micro_batch_size=8", "train.eval_batches=1"]
#: The signals the smoke climb trains: one without the future-size head, one with it.
CLIMBED = {name: SIGNALS[name] for name in ("range", "future")}


def test_the_ladder_trains_each_signal_once_and_reports_gains_against_steps(
    synthetic_small: Path, unseen: Path, tmp_path: Path
) -> None:
    """A smoke run at the tiny size: SYNTH trained on, OTHER held out, two signals at one rung (the range
    term, and the future-size head with its forecast readouts); a second climb reads the rungs back instead
    of training them again."""
    root = tmp_path / "each"
    root.mkdir()
    (root / "synth").symlink_to(synthetic_small)
    (root / "other").symlink_to(unseen)
    work = tmp_path / "runs"
    rungs = climb(root, work, (12,), ("OTHER",), 80, 1, TINY, signals=CLIMBED, trained="SYNTH")
    assert set(rungs) == set(CLIMBED) and all(set(r) == {12} for r in rungs.values())
    assert "model.loss.future_weight=1.0" in rungs["future"][12]["overrides"]
    # the ladder's config has the range term: the signals without it turn it off
    assert "model.loss.range_weight=0.0" in rungs["future"][12]["overrides"]
    assert [o for o in SIGNALS["reconstruction"] if "range_weight" in o] == ["model.loss.range_weight=0.0"]
    rung = rungs["range"][12]
    assert "model.loss.range_weight=1.0" in rung["overrides"]
    assert set(rung["instruments"]) == {"SYNTH", "OTHER"}
    for cells in rung["instruments"].values():
        for target in ("rv_60m", "rv_240m"):
            for readout in ("nested", "nested_untrained", "pca"):
                assert math.isfinite(cells[target][readout]["gain"])
                assert cells[target][readout]["val_gain"] >= 0, "a nested readout never loses on val"
                assert cells[target][readout]["val_se"] >= 0
            assert "forecast" not in cells[target], "no future-size head, no forecast readout"
            assert cells[target]["best"]["readout"] == "nested"
    future = rungs["future"][12]["instruments"]["OTHER"]["rv_60m"]
    assert {"forecast", "forecast_and_embeddings", "forecast_untrained"} <= set(future)
    candidates = {k: future[k]["val_gain"] for k in ("nested", "forecast", "forecast_and_embeddings")}
    assert future["best"]["val_gain"] == max(candidates.values()), "the best readout is chosen on val"
    assert set(rung["time_mode"]["ratios"]) == {"m1", "m5", "m15", "m30", "h1", "h4"}
    written_rungs = {p.name: p.stat().st_mtime_ns for p in (work / "ladder").glob("*.json")}
    assert set(written_rungs) == {f"{signal}_12.json" for signal in CLIMBED}

    again = climb(root, work, (12,), ("OTHER",), 80, 1, TINY, signals=CLIMBED, trained="SYNTH")
    assert again == rungs
    assert {p.name: p.stat().st_mtime_ns for p in (work / "ladder").glob("*.json")} == written_rungs

    # The experiment, read-only, reports the rungs measured (nothing trained) in its three files.
    options = Options(
        root,
        work,
        steps=(12,),
        held_out=("OTHER",),
        trained="SYNTH",
        max_anchors=80,
        batches=1,
        read_only=True,
    )
    results = ladder.measure(options)
    reported = {s: {n: without_losses(r) for n, r in by.items()} for s, by in rungs.items()}
    assert ladder.rungs_of(json.loads(json.dumps(results))) == reported  # plain data, read back whole
    docs = tmp_path / "docs"
    written = write_report(ladder.EXPERIMENT, results, docs)
    assert [p.name for p in written] == ["ladder.json", "ladder.md", "ladder.png"]
    page = (docs / "ladder.md").read_text()
    assert page.startswith("# The budget ladder") and "![Gain against steps](ladder.png)" in page
    assert "not measurable with one rung" in page and "not yet run" not in page
    assert page.count(": met") + page.count(": missed") == 2 * 2 + 2 + 1  # 5%, 2x (per instrument), time

    # A signal climbed on its own: only its missing rung is trained; the other's rungs are read back.
    higher = climb(
        root,
        work,
        (12, 24),
        ("OTHER",),
        80,
        1,
        TINY,
        signals=CLIMBED,
        trained="SYNTH",
        train_signals=("range",),
    )
    assert set(higher["range"]) == {12, 24} and set(higher["future"]) == {12}
    assert higher["future"][12] == rungs["future"][12]
    assert {p.name for p in (work / "ladder").glob("*.json")} == {*written_rungs, "range_24.json"}
    page = ladder_page(higher, choose_signal(higher, 12), str(root), None, "q.py", (12, 24))
    assert "| range | 24 |" in page and "| future | 24 |" not in page
    assert "not yet run" in ladder_page(rungs, choose_signal(rungs, 12), str(root), None, "q.py", (12, 24))
    page = ladder_page(higher, choose_signal(higher, 24), str(root), None, "q.py", (12, 24))
    assert "Signal chosen on val at 24 steps" in page and "): **range**" in page
    # The rungs kept their val losses in WORK: the choice between two signals is paired over the anchors.
    both = choose_signal(rungs, 12)
    (other,) = both["differences"]
    assert both["differences"][other][2] is True and "paired over the same val anchors" in ladder_page(
        rungs, both, str(root), None, "q.py", (12,)
    )
    assert all("val_losses" not in json.dumps(r) for r in results["rungs"].values()), "not in the report"


def _rung(gains: list[float], val: list[float] | None = None, se: float = 0.1) -> dict:
    """A rung's cells: the best readout's test gains per instrument (and val gains, with one standard
    error) on both targets."""
    val = val or gains

    def cell(g: float, v: float) -> dict:
        best = {"readout": "nested", "gain": g, "val_gain": v, "val_se": se}
        return {"best": best, "nested": best}

    return {
        "instruments": {
            f"I{k}": {t: cell(g, v) for t in ("rv_60m", "rv_240m")}
            for k, (g, v) in enumerate(zip(gains, val, strict=True))
        }
    }


def test_the_slope_is_the_mean_gain_per_doubling_of_steps() -> None:
    by_steps = {2000: _rung([1.0, 3.0]), 8000: _rung([2.0, 4.0]), 32000: _rung([3.0, 5.0])}
    assert gain_per_doubling(by_steps, "rv_60m") == pytest.approx(0.5)  # one point per two doublings
    assert math.isnan(gain_per_doubling({2000: _rung([1.0])}, "rv_60m"))


def test_the_choice_prefers_the_cheaper_of_signals_within_two_standard_errors() -> None:
    """The mean val gain over instruments and targets decides; where the best is within two standard errors
    of the difference of another signal, the cheaper of them is taken (and said)."""
    close = {"range": {8000: _rung([0, 0], [1.0, 1.2])}, "future_range": {8000: _rung([0, 0], [1.3, 1.3])}}
    choice = choose_signal(close, 8000)
    assert (choice["chosen"], choice["at"], choice["close"]) == ("range", 8000, ["future_range", "range"])
    clear = {
        "range": {8000: _rung([0, 0], [1.0, 1.2], 0.05)},
        "future_range": {8000: _rung([0, 0], [2.0, 2.2], 0.05)},
    }
    assert choose_signal(clear, 8000)["chosen"] == "future_range"
    # The conservative error of the mean: an instrument's two targets move together.
    mean, error = val_score(_rung([0, 0], [1.0, 3.0], se=0.2))
    assert mean == pytest.approx(2.0) and error == pytest.approx(math.sqrt(2 * 0.2**2) / 2)


def _losses(rng: np.random.Generator, rule: np.ndarray, better_by: float) -> dict:
    """A cell whose best readout's val losses are the rule's less ``better_by`` of them, with noise shared by
    every signal (the same anchors)."""
    best = rule * (1 - better_by)
    gain = 100 * better_by
    return {
        "best": {"readout": "nested", "gain": 0, "val_gain": gain, "val_se": 1.0},
        "val_losses": {"rule": rule.tolist(), "best": best.tolist()},
    }


def test_two_signals_on_the_same_anchors_are_compared_pair_by_pair() -> None:
    """Scores whose errors are large apart (the rule's noise) but move together anchor by anchor: the
    paired difference is resolved where the unpaired one is not, and the better signal is chosen."""
    rng = np.random.default_rng(0)
    rules = {name: rng.exponential(1.0, 400) for name in ("I0", "I1")}

    def rung(better_by: float) -> dict:
        return {
            "instruments": {
                n: {t: _losses(rng, r, better_by) for t in ("rv_60m", "rv_240m")} for n, r in rules.items()
            }
        }

    rungs = {"range": {8000: rung(0.01)}, "future_range": {8000: rung(0.02)}}
    choice = choose_signal(rungs, 8000)
    difference, error, paired = choice["differences"]["range"]
    assert paired and difference == pytest.approx(1.0, abs=0.05) and error < 0.5
    assert choice["chosen"] == "future_range", "the unpaired errors (1.0 each) would have called it a tie"
    assert paired_difference(rungs["future_range"][8000], rungs["range"][8000])[0] == pytest.approx(
        difference
    )


def test_a_signal_not_yet_climbed_to_the_choice_rung_is_not_chosen() -> None:
    rungs = {
        "range": {2000: _rung([0], [1.0]), 8000: _rung([0], [1.0])},
        "future": {2000: _rung([0], [5.0])},
        "future_range": {2000: _rung([0], [0.5]), 8000: _rung([0], [2.0])},
    }
    assert (choose_signal(rungs, 8000)["chosen"], choose_signal(rungs, 8000)["at"]) == ("future_range", 8000)
    lower = choose_signal({"range": {2000: _rung([0], [1.0])}, "future": {2000: _rung([0], [5.0])}}, 8000)
    assert (lower["chosen"], lower["at"]) == ("future", 2000)
