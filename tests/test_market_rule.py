"""The market rule of `stage1 probe`: other instruments' recent realised variance at the anchor, from their
bars before ``t`` only, absent (never stale) where a market is closed, chosen on val only where it helps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import load_module
from stage1_ds.evaluation.probe.anchors import InstrumentRules, ProbeSet, rule_blocks
from stage1_ds.evaluation.probe.rules import MARKET_RULES, choose_rule, market_columns
from stage1_ds.evaluation.volatility import (
    HOURS_PER_WEEK,
    LONGEST_WINDOW_BARS,
    MARKET_STALE_MINUTES,
    MARKET_WINDOWS,
    MinuteBars,
    future_targets,
    market_log_variance,
)

DAY = 1440


def _walk(minutes: int, scale: np.ndarray, seed: int, closed: np.ndarray | None = None) -> MinuteBars:
    """1-minute bars of a random walk whose minute m moves with standard deviation ``scale[m]``; minutes
    where ``closed`` is true have no bar."""
    rng = np.random.default_rng(seed)
    keep = np.ones(minutes, bool) if closed is None else ~closed
    moves = rng.normal(0.0, 1.0, minutes) * scale
    log_close = np.cumsum(moves)
    log_open = np.r_[0.0, log_close[:-1]]
    swing = np.abs(rng.normal(0.0, 1.0, minutes)) * scale
    high, low = np.maximum(log_open, log_close) + swing, np.minimum(log_open, log_close) - swing
    start = np.arange(minutes) * 60
    return MinuteBars(start[keep], log_open[keep], log_close[keep], log_high=high[keep], log_low=low[keep])


def test_the_market_reads_only_bars_that_start_before_the_anchor() -> None:
    other = _walk(6 * DAY, np.full(6 * DAY, 1e-4), seed=1)
    anchors = np.array([3 * DAY, 4 * DAY + 17, 5 * DAY + 300]) * 60
    values = market_log_variance(other, anchors)
    assert np.isfinite(values).all() and values.shape == (3, len(MARKET_WINDOWS))
    for k, t in enumerate(anchors):
        before, after = np.flatnonzero(other.start < t)[-30:], np.flatnonzero(other.start >= t)[:30]
        for rows, seen in ((after, False), (before, True)):
            log_close = other.log_close.copy()
            log_close[rows] += 5e-3
            changed = MinuteBars(
                other.start, other.log_open, log_close, log_high=other.log_high, log_low=other.log_low
            )
            moved = (market_log_variance(changed, anchors)[k] != values[k]).any()
            assert moved == seen, f"anchor {k}: bars {'before' if seen else 'at or after'} t"


def test_a_market_without_a_bar_in_the_last_hour_or_without_a_day_of_history_is_absent() -> None:
    minutes = 8 * DAY
    closed = np.zeros(minutes, bool)
    closed[5 * DAY : 6 * DAY] = True  # a closed day
    other = _walk(minutes, np.full(minutes, 1e-4), seed=2, closed=closed)
    last_open = 5 * DAY  # the first closed minute: the bar of minute 5 DAY - 1 is the last before it
    anchors = 60 * np.array(
        [
            DAY // 2,  # fewer than a day of its bars before t: its data has barely begun
            last_open + MARKET_STALE_MINUTES - 1,  # closed, but its last bar started within the hour
            last_open + MARKET_STALE_MINUTES + 1,  # closed for over an hour
            6 * DAY + 1,  # open again: one bar since
        ]
    )
    present = np.isfinite(market_log_variance(other, anchors)).all(axis=1)
    assert present.tolist() == [False, True, False, True]


def _sets(lead: int) -> tuple[dict[str, ProbeSet], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two markets on one clock: the variance of A follows B's ``lead`` minutes later (regimes of three
    hours, up to fourfold in variance; with a 90-minute lead, B's last hour tells when A's next regime
    begins and how large it is), B closed one day in five. Probe sets of A's hourly anchors with B as the
    market, split 60/20/20 in time."""
    rng = np.random.default_rng(0)
    days = 70
    minutes = days * DAY
    regime = np.repeat(rng.choice([0.5e-4, 1e-4, 2e-4], size=minutes // 180 + 1), 180)[:minutes]
    closed = (np.arange(minutes) // DAY) % 5 == 4
    b = _walk(minutes, regime, seed=3, closed=closed)
    a = _walk(minutes, np.r_[np.full(lead, 1e-4), regime[:-lead]], seed=4)
    known = InstrumentRules(np.zeros((HOURS_PER_WEEK, 2)), np.zeros(HOURS_PER_WEEK))
    time = np.arange(LONGEST_WINDOW_BARS + DAY, minutes - 300, 60) * 60
    bounds = np.quantile(time, [0.6, 0.8])
    sets = {}
    for split, inside in (
        ("train", time < bounds[0]),
        ("val", (time >= bounds[0]) & (time < bounds[1])),
        ("test", time >= bounds[1]),
    ):
        t = time[inside]
        blocks = rule_blocks(a, t, known)
        blocks["market/A"] = np.full((len(t), len(MARKET_WINDOWS)), np.nan)  # the anchors' own: absent
        blocks["market/B"] = market_log_variance(b, t)
        sets[split] = ProbeSet(np.arange(len(t)), t, future_targets(a, t), blocks, instruments=["A"])
    rows = {s: np.ones(len(v.time), bool) for s, v in sets.items()}
    y = {s: v.targets["rv_60m"] for s, v in sets.items()}
    return sets, rows, y


def test_the_market_rule_is_chosen_on_val_where_another_market_leads_and_wins_on_test() -> None:
    sets, rows, y = _sets(lead=90)
    assert 0.1 < np.isnan(sets["train"].blocks["market/B"][:, 0]).mean() < 0.4, "B is closed some hours"
    columns = market_columns(sets, rows)
    assert (
        columns is not None and columns["train"].shape[1] == len(MARKET_WINDOWS) + 1
    )  # only B, with "absent"
    assert np.isfinite(columns["test"]).all(), "absent hours carry the train mean and the flag, never NaN"
    rules = choose_rule(sets, "rv_60m", rows, y)
    assert rules.best in MARKET_RULES

    def test_mse(name: str) -> float:
        return float(np.mean((rules.fitted[name].test - y["test"]) ** 2))

    assert test_mse(rules.best) < 0.9 * test_mse("har_seasonal_extended_range")


def test_no_market_rule_without_another_market_present_on_train() -> None:
    sets, rows, y = _sets(lead=90)
    for chosen in sets.values():
        chosen.blocks["market/B"][:] = np.nan
    assert market_columns(sets, rows) is None
    assert not set(MARKET_RULES) & set(choose_rule(sets, "rv_60m", rows, y).designs)


def test_the_market_columns_use_the_train_mean_where_a_market_is_absent() -> None:
    sets, rows, _ = _sets(lead=90)
    columns = market_columns(sets, rows)
    assert columns is not None
    train = sets["train"].blocks["market/B"]
    absent = np.isnan(train[:, 0])
    np.testing.assert_allclose(
        columns["train"][absent, :2], np.broadcast_to(train[~absent].mean(axis=0), (absent.sum(), 2))
    )
    np.testing.assert_array_equal(columns["train"][:, 2], absent.astype(float))


def test_the_market_rule_report_is_written_for_a_root_of_instrument_folders(
    synthetic_small: Path, unseen: Path, tmp_path: Path
) -> None:
    """`scripts/quality_report.py --experiment market_rule ROOT --scored ...`: every folder under ROOT is the
    market, each named instrument is scored against the best rule without it, and the report's own files
    are written; `--render` rewrites the same report from its stored results."""
    root = tmp_path / "each"
    root.mkdir()
    (root / "SYNTH").symlink_to(synthetic_small)
    (root / "OTHER").symlink_to(unseen)
    script = load_module(Path("scripts/quality_report.py"))
    docs = tmp_path / "docs"
    argv = ["--experiment", "market_rule", str(root), "--scored", "SYNTH", "OTHER", "--docs", str(docs)]
    assert script.main(argv) == 0
    assert sorted(p.name for p in docs.iterdir()) == ["market_rule.json", "market_rule.md"]
    section = (docs / "market_rule.md").read_text()
    assert section.startswith("# The rule that sees the market")
    assert f"--experiment market_rule {root}" in section, "the command that wrote it"
    (docs / "market_rule.md").unlink()
    assert script.main(["--experiment", "market_rule", "--render", "--docs", str(docs)]) == 0
    assert (docs / "market_rule.md").read_text() == section
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith(("| SYNTH", "| OTHER"))]
    assert len(rows) == 2 * 2 * 3 * len(MARKET_RULES)  # instruments x targets x market rules x refits
    for row in rows:
        val_gain = float(row[4])
        assert row[-1].startswith("yes") <= (val_gain > 0), (
            "a market rule is chosen only where it wins on val"
        )
    present = next(line for line in section.splitlines() if line.startswith("- SYNTH ("))
    assert float(present.rsplit("OTHER ", 1)[1]) > 0.5, "OTHER trades on the same days as SYNTH"
