"""Stage 2 end to end as an experiment: the ladder's rung of the chosen signal fine-tuned from the rule on the
trained-on and the held-out instrument, its report written with the targets read off."""

from __future__ import annotations

from pathlib import Path

from stage1_ds.experiments import stage2
from stage1_ds.experiments.harness import Options, write_report

TINY = ["model.encoder.preset=tiny", "train.micro_batch_size=8", "train.eval_batches=1"]


def test_the_stage2_report_fine_tunes_on_each_instrument_with_the_forecast_readouts(
    synthetic_small: Path, unseen: Path, tmp_path: Path
) -> None:
    root = tmp_path / "each"
    root.mkdir()
    (root / "synth").symlink_to(synthetic_small)
    (root / "other").symlink_to(unseen)
    options = Options(
        root, tmp_path / "runs", steps=(12,), held_out=("OTHER",), trained="SYNTH", max_anchors=80
    )
    options.overrides = TINY
    results = stage2.measure(options)
    for name in ("SYNTH", "OTHER"):
        report = results["instruments"][name]
        assert {"best_rule_plus_forecast", "head", "lora", "full"} <= set(report["test"]), (
            "a future-size head"
        )
        assert report["val_mse"]["full"] <= report["val_mse"]["best_rule"] * (1 + 1e-6)
    write_report(stage2.EXPERIMENT, results, tmp_path / "docs")
    page = (tmp_path / "docs" / "stage2.md").read_text()
    assert "| the head's forecast, frozen |" in page and "| stage chosen on val |" in page
    assert page.count(": met") + page.count(": missed") == 2
