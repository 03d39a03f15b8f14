"""The rule that sees the market against the rules of one instrument (``--experiment market_rule``): what
other markets' recent realised variance adds to the strongest single-instrument rule.

Options read: ``data`` (ROOT), ``scored`` (default `SCORED`), ``max_anchors``. No training.
ROOT holds one prepared folder per instrument (`stage1_ds.experiments.harness.instrument_folders`); every
instrument under it is the market. For each scored instrument the probe's own anchors (every qualifying
one, an hour apart, in its folder's train / val / test splits) and rule code (`choose_rule`) fit every
rule, the market rules (`MARKET_RULES`) among them, on train; ``best_rule`` is chosen on val as in `stage1
probe --market ROOT/*`. Reported per instrument and target: the best rule without the market (the
reference), each market rule's val and test MSE gain over it (percent, positive: better) with the
Diebold-Mariano p (HLN) on test, whether val chooses a market rule, and the share of test anchors on which
each other market is present. No encoder enters: this is the rule every claim of a market-context encoder
is measured against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stage1_ds.config import SPLITS, DataConfig
from stage1_ds.data.store import load_prepared
from stage1_ds.evaluation.probe import (
    MARKET_RULES,
    anchor_sets,
    choose_rule,
    fixed_rule_of,
    format_p,
    horizon_steps,
    market_bars,
)
from stage1_ds.evaluation.statistics import diebold_mariano
from stage1_ds.evaluation.volatility import MARKET_STALE_MINUTES, MARKET_WINDOWS, VARIANCE_TARGETS
from stage1_ds.experiments.harness import (
    TRAINED_SCORED,
    TRANSFER_HELD_OUT,
    Experiment,
    Options,
    instrument_folders,
)

#: Scored by default: the trained-on instrument of the multi-instrument experiments and the held-out ones.
SCORED = (TRAINED_SCORED, *TRANSFER_HELD_OUT)


def market_rule_report(root: Path, scored: list[str], max_anchors: int | None = None) -> dict[str, Any]:
    """The market rules against the best single-instrument rule on each ``scored`` instrument's test split
    (see the module docstring); windows as each folder was prepared for (its manifest's ``window_bars``).

    Raises:
        ValueError: a scored instrument has no folder under ``root``.
    """
    folders = instrument_folders(root)
    missing = [name for name in scored if name not in folders]
    if missing:
        raise ValueError(f"{root}: no prepared folder of {missing} (found {sorted(folders)})")
    market = market_bars(list(folders.values()))
    report: dict[str, Any] = {"market": sorted(market), "instruments": {}}
    for name in scored:
        config = DataConfig(window_bars=int(load_prepared(folders[name]).manifest["window_bars"]))
        _, sets = anchor_sets(config, folders[name], SPLITS, max_anchors, 0, None, market)
        cells: dict[str, Any] = {
            "anchors": {split: len(chosen.ids) for split, chosen in sets.items()},
            "present_on_test": {
                other: float(np.mean(~np.isnan(sets["test"].blocks[f"market/{other}"][:, 0])))
                for other in market
                if other != name
            },
        }
        for target in VARIANCE_TARGETS:
            rows = {split: np.ones(len(chosen.ids), bool) for split, chosen in sets.items()}
            y = {split: chosen.targets[target] for split, chosen in sets.items()}
            rules = choose_rule(sets, target, rows, y)
            fitted = rules.fitted
            single = min(
                (n for n in fitted if fixed_rule_of(n) not in MARKET_RULES), key=lambda n: fitted[n].val_mse
            )
            reference = (fitted[single].test - y["test"]) ** 2
            cell: dict[str, Any] = {"best_rule": rules.best, "single_rule": single}
            for rule in (r for r in fitted if fixed_rule_of(r) in MARKET_RULES):
                error = (fitted[rule].test - y["test"]) ** 2
                _, p = diebold_mariano(error, reference, horizon_steps(target))
                cell[rule] = {
                    "val_gain": 100 * (1 - fitted[rule].val_mse / fitted[single].val_mse),
                    "gain": 100 * (1 - float(error.mean()) / float(reference.mean())),
                    "p": p,
                }
            cells[target] = cell
        report["instruments"][name] = cells
    return report


def measure(options: Options) -> dict[str, Any]:
    """`market_rule_report` of the options' root and scored instruments."""
    scored = list(options.scored or SCORED)
    return {"root": str(options.data), **market_rule_report(options.data, scored, options.max_anchors)}


def render(report: dict[str, Any]) -> str:
    """The report's markdown from `measure`'s results."""
    names = list(report["instruments"])
    command = report.get("command", "scripts/quality_report.py --experiment market_rule")
    lines = [
        f"# {EXPERIMENT.title}",
        "",
        f"Generated by `{command}`. The market: every instrument folder under `{report['root']}` "
        f"({', '.join(report['market'])}). For each instrument below, the probe's anchors of its own folder "
        "(every qualifying one, an hour apart) and the probe's rules, chosen on val; the market rules add, per "
        f"other market, its log realised variance per bar over its last {MARKET_WINDOWS[0]:,} and "
        f"{MARKET_WINDOWS[1]:,} bars before the anchor and whether it is absent (no bar in the last "
        f"{MARKET_STALE_MINUTES} minutes). Gain: MSE reduction against the best rule without the market "
        "(chosen on val), in percent (positive: better); p: Diebold-Mariano (HLN) on test.",
        "",
        "| instrument | target | best rule without the market | market rule | val gain % | test gain % (p) "
        "| chosen on val |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cells = report["instruments"][name]
        for target in VARIANCE_TARGETS:
            cell = cells[target]
            for rule in (r for r in cell if fixed_rule_of(r) in MARKET_RULES):
                entry = cell[rule]
                lines.append(
                    f"| {name} | `{target}` | {cell['single_rule']} | {rule} | {entry['val_gain']:+.1f} | "
                    f"{entry['gain']:+.1f} ({format_p(entry['p'])}) | "
                    f"{'yes' if cell['best_rule'] == rule else 'no'} |"
                )
    lines += ["", "Share of each instrument's test anchors on which each other market is present:", ""]
    for name in names:
        present = report["instruments"][name]["present_on_test"]
        shares = ", ".join(f"{other} {share:.2f}" for other, share in present.items())
        anchors = report["instruments"][name]["anchors"]
        lines.append(f"- {name} ({anchors['test']:,} test anchors): {shares}")
    lines.append("")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="market_rule",
    title="The rule that sees the market",
    measure=measure,
    render=render,
)
