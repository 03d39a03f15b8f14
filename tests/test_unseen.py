"""Instruments the model never saw: evaluate, encode and probe scale them with statistics fitted on their
own folder's train split (and say so), and the probe's zero-shot readout is fitted on another folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stage1_ds.cli import main
from stage1_ds.data.store import load_prepared, model_stats
from stage1_ds.evaluation.probe import ZERO_SHOT_METHODS, probe
from stage1_ds.model.stage1 import Stage1Model, load_export_stats


def test_an_instrument_the_model_never_saw_is_scaled_by_its_own_train_split_and_said_so(
    unseen: Path,
    synthetic_small: Path,
    trained_export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = model_stats(load_export_stats(trained_export), load_prepared(unseen), allow_other=False)
    assert stats["instruments"]["OTHER"] == load_prepared(unseen).stats["instruments"]["OTHER"]
    assert stats["instruments"]["OTHER"]["fitted_on"] == "train"

    args = ["--model", str(trained_export), "--data", str(unseen)]
    assert (
        main(["evaluate", *args, "--mode", "time", "--batches", "1", "--json", str(tmp_path / "e.json")]) == 0
    )
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["stats_source"] == "folder" and report["stats_source_by_instrument"] == {"OTHER": "folder"}
    assert "the model never saw OTHER" in capsys.readouterr().out

    both = ["--model", str(trained_export), "--data", str(synthetic_small), str(unseen)]
    assert main(["encode", *both, "--max-batches", "1", "--out", str(tmp_path / "enc")]) == 0
    about = json.loads((tmp_path / "enc" / "encoding.json").read_text())
    assert about["instruments"] == ["SYNTH", "OTHER"] and about["stats_source"] == "mixed"
    assert about["stats_source_by_instrument"] == {"SYNTH": "model", "OTHER": "folder"}


def test_the_zero_shot_readout_fitted_on_the_same_folder_is_the_own_readout(
    unseen: Path, trained_export: Path
) -> None:
    """Fitted on another folder's train and val splits, the zero-shot readouts equal the own readouts when
    that folder is the scored one itself: the same anchors, features and penalties (and differ otherwise,
    in the command test below). A zero-shot rule is fitted once (refitting would read the scored folder's
    own history), so the own readouts are those of the rules fitted once too."""
    model, untrained = Stage1Model.from_pretrained(trained_export), Stage1Model.untrained_like(trained_export)
    stats = model_stats(load_export_stats(trained_export), load_prepared(unseen), allow_other=False)
    report = probe(
        model, untrained, unseen, 150, stats=stats, readout_from=unseen, readout_stats=stats, refits=False
    )
    assert report["readout_from"] == [str(unseen)] and report["readout_anchors"]["train"] > 50
    for target, results in report["targets"].items():
        for own in ("best_rule", "embeddings", "best_rule_plus_embeddings"):
            name = report["best_rule"][target]["rule"] if own == "best_rule" else own
            np.testing.assert_allclose(
                report["predictions"][target][f"{own}_zero_shot"], report["predictions"][target][name]
            )
            assert results[f"{own}_zero_shot"]["n"] == results[name]["n"]


def test_probe_reads_out_zero_shot_from_the_folder_the_model_was_trained_on(
    unseen: Path, synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "probe.json"
    args = ["--model", str(trained_export), "--data", str(unseen), "--json", str(out), "--max-anchors", "150"]
    assert main(["probe", *args, "--readout-from", str(synthetic_small)]) == 0
    report = json.loads(out.read_text())
    assert report["stats_source"] == "folder" and report["readout_from"] == [str(synthetic_small)]
    for results in report["targets"].values():
        for method in ZERO_SHOT_METHODS:
            assert np.isfinite(results[method]["mse" if "mse" in results[method] else "accuracy"])
    rv = report["targets"]["rv_60m"]
    assert rv["embeddings_zero_shot"]["mse"] != rv["embeddings"]["mse"], "fitted on other anchors"


def test_the_transfer_report_holds_an_instrument_out(
    unseen: Path, synthetic_small: Path, tmp_path: Path
) -> None:
    """A smoke run at the tiny size: OTHER held out, (i) trained on SYNTH's folder, (ii) on OTHER's, both
    evaluated and probed on OTHER's test split, the zero-shot readout fitted on SYNTH, every verdict said."""
    from stage1_ds.experiments import transfer
    from stage1_ds.experiments.harness import Options

    root = tmp_path / "each"
    root.mkdir()
    (root / "synth").symlink_to(synthetic_small)
    (root / "other").symlink_to(unseen)
    options = Options(
        root, tmp_path / "runs", steps=(12,), held_out=("OTHER",), max_anchors=80, batches=1,
        overrides=["model.encoder.preset=tiny"],
    )  # fmt: skip
    section = transfer.render(json.loads(json.dumps(transfer.measure(options))))
    assert section.startswith("# One encoder for many markets") and "## OTHER held out" in section
    assert "| (i) ... zero-shot readout |" in section and "| best_rule + (ii) |" in section
    for target in ("beats the untrained control", "at least as good as (ii)", "zero-shot readout) beats"):
        assert target in section, target
    assert section.count(": met") + section.count(": missed") == 6
