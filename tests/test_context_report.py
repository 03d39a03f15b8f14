"""The market-context comparison (`scripts/quality_report.py ROOT --context`): both variants trained at equal
steps, measured against both rules, written once and read back; the single variant is the ladder's rung."""

from __future__ import annotations

import json
import math
from pathlib import Path

from stage1_ds.cli import main
from stage1_ds.evaluation.probe import MARKET_RULES, fixed_rule_of
from stage1_ds.experiments import context
from stage1_ds.experiments.context import compare, variant_run
from stage1_ds.experiments.harness import Options, write_report

TINY = ["model.encoder.preset=tiny", "train.micro_batch_size=8", "train.eval_batches=1"]


def test_the_context_comparison_trains_both_variants_and_reads_them_back(
    synthetic_small: Path, unseen: Path, tmp_path: Path
) -> None:
    """A smoke run at the tiny size: SYNTH trained on, OTHER held out; the context model's windows see OTHER
    when it is probed; a second comparison reads everything back; a ladder rung serves as the single
    variant without training."""
    root = tmp_path / "each"
    root.mkdir()
    (root / "synth").symlink_to(synthetic_small)
    (root / "other").symlink_to(unseen)
    work = tmp_path / "runs"
    results = compare(root, work, (12,), ("OTHER",), 80, overrides=TINY, trained="SYNTH")
    assert set(results) == {"single", "context"}
    assert "data.context=true" in results["context"][12]["overrides"]
    assert "data.context=true" not in results["single"][12]["overrides"]
    for name in ("SYNTH", "OTHER"):
        for rule in ("single", "market"):  # against either rule, the context model's windows see the market
            seen = results["context"][12]["instruments"][name][rule]["context"]["present_per_anchor"]
            assert seen["test"] > 0.5, (name, rule)
            assert results["single"][12]["instruments"][name][rule]["context"] is None
            cell = results["context"][12]["instruments"][name][rule]["rv_60m"]
            assert math.isfinite(cell["nested"]["gain"]) and cell["nested"]["val_gain"] >= 0
    market = results["single"][12]["instruments"]["SYNTH"]["market"]["rv_60m"]["best_rule"]
    single = results["single"][12]["instruments"]["SYNTH"]["single"]["rv_60m"]["best_rule"]
    assert fixed_rule_of(single) not in MARKET_RULES
    assert market == single or fixed_rule_of(market) in MARKET_RULES

    weights = {p: p.stat().st_mtime_ns for p in work.glob("*_export/model.safetensors")}
    written = {p.name: p.stat().st_mtime_ns for p in (work / "context").glob("*.json")}
    assert compare(root, work, (12,), ("OTHER",), 80, overrides=TINY, trained="SYNTH") == results
    assert {p.name: p.stat().st_mtime_ns for p in (work / "context").glob("*.json")} == written
    assert {p: p.stat().st_mtime_ns for p in weights} == weights, "nothing trained again"

    # The single variant is the ladder's rung of the signal: the same run, read back as it is.
    record = json.loads((work / "ladder_future_12.run.json").read_text())
    run = variant_run("single", 12, [root / "synth"], work, overrides=TINY)
    assert run.export == work / "ladder_future_12_export" and run.minutes == record["minutes"]
    assert {p: p.stat().st_mtime_ns for p in weights} == weights

    # `stage1 probe --market` serves the context model the market (every market instrument scaled)
    out = tmp_path / "probe.json"
    command = ["probe", "--model", str(work / "context_future_12_export"), "--data", str(synthetic_small)]
    command += ["--market", str(synthetic_small), str(unseen), "--max-anchors", "80", "--json", str(out)]
    assert main(command) == 0
    probed = json.loads(out.read_text())["context"]
    assert (
        probed["folders"] == [str(synthetic_small), str(unseen)]
        and probed["present_per_anchor"]["test"] > 0.5
    )

    options = Options(root, work, steps=(12,), held_out=("OTHER",), trained="SYNTH", max_anchors=80)
    options.overrides = TINY
    measured = context.measure(options)  # read back: nothing trained or measured again
    assert {p: p.stat().st_mtime_ns for p in weights} == weights
    write_report(context.EXPERIMENT, measured, tmp_path / "docs")
    text = (tmp_path / "docs" / "context.md").read_text()
    assert text.startswith("# The encoder that sees the market") and text.count("| SYNTH | `rv_60m` |") == 2
    assert text.count(": met") + text.count(": missed") == 3
