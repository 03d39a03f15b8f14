"""examples/stage2_volatility.py runs end to end at a tiny size: the rule, the linear probe, the head and
LoRA fine-tuning on the same anchors, scored with the same tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

from conftest import load_module


def _example(name: str) -> ModuleType:
    return load_module(Path("examples") / f"{name}.py")


def test_the_stage2_example_fine_tunes_and_scores_against_the_rule_and_the_probe(
    synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    example = _example("stage2_volatility")
    out = tmp_path / "stage2.json"
    args = ["--model", str(trained_export), "--data", str(synthetic_small), "--json", str(out)]
    quick = ["--max-anchors", "150", "--head-epochs", "4", "--lora-epochs", "2", "--patience", "2"]
    assert example.main([*args, *quick]) == 0
    report = json.loads(out.read_text())
    assert list(report["test"]) == ["best_rule", "linear_probe", "head_only", "fine_tuned"]
    n = report["anchors"]["test"]
    for name, scores in report["test"].items():
        assert scores["n"] == n and math.isfinite(scores["mse"]), name
    assert math.isnan(report["test"]["best_rule"]["vs"]["best_rule"]["p"])  # itself
    # Each stage keeps its best val epoch, never worse than where it started: the rule for the head (float32
    # arithmetic), the head for LoRA; and what it keeps is the best of its epochs.
    val = report["val_mse"]
    assert val["head_only"] <= val["best_rule"] * (1 + 1e-6)
    assert val["fine_tuned"] <= val["head_only"] * (1 + 1e-6)
    for stage, name in (("head_only", "head_only"), ("lora", "fine_tuned")):
        epochs = report[stage]["epochs"]
        assert epochs and val[name] <= min(e["val_mse"] for e in epochs) * (1 + 1e-6), stage
