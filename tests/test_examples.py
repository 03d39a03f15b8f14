"""examples/stage2_volatility.py runs end to end at a tiny size: the model starts at the rule, is fine-tuned
in stages (head, LoRA, full), each kept at its best val epoch, and is scored beside the frozen readouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import load_module


def test_the_stage2_example_fine_tunes_from_the_rule_and_scores_against_the_frozen_readouts(
    synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    example = load_module(Path("examples") / "stage2_volatility.py")
    out = tmp_path / "stage2.json"
    args = ["--model", str(trained_export), "--data", str(synthetic_small), "--json", str(out)]
    quick = ["--max-anchors", "150", "--head-epochs", "4", "--lora-epochs", "1", "--full-epochs", "1"]
    assert example.main([*args, *quick, "--patience", "2"]) == 0
    report = json.loads(out.read_text())
    assert list(report["test"]) == ["best_rule", "best_rule_plus_embeddings", "head", "lora", "full"]
    n = report["anchors"]["test"]
    for name, scores in report["test"].items():
        assert scores["n"] == n and math.isfinite(scores["mse"]), name
    assert math.isnan(report["test"]["best_rule"]["vs"]["best_rule"]["p"])  # itself
    assert report["best_frozen"] == "best_rule_plus_embeddings", "no future-size head: no forecast readout"
    # Each stage starts where the one before ended (the head at the rule: its last layer is zero) and keeps
    # its best val epoch, the start included: val never worsens from the rule through every stage.
    val = report["val_mse"]
    assert val["head"] <= val["best_rule"] * (1 + 1e-6)
    assert val["lora"] <= val["head"] * (1 + 1e-6) and val["full"] <= val["lora"] * (1 + 1e-6)
    for stage in ("head", "lora", "full"):
        epochs = report["stages"][stage]["epochs"]
        assert epochs and val[stage] <= min(e["val_mse"] for e in epochs) * (1 + 1e-6), stage
    assert report["chosen_stage"] in ("head", "lora", "full")
