"""Evaluations that cannot score a model on its own training data: a folder re-prepared with other splits
(as the probe's advice to enlarge val/test would do), or on another clock, is an error naming both ranges
unless --allow-overlap, which the report then records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from stage1_ds.cli import main
from stage1_ds.data.ingest import InputFormat
from stage1_ds.data.prepare import PrepareOptions, prepare_files, prepare_synthetic
from stage1_ds.data.synthetic import generate_synthetic_m1


@pytest.fixture(scope="module")
def resplit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `synthetic_small` market (the trained export's data), prepared again with larger val and test
    shares: its test split now starts inside the model's training period."""
    out = tmp_path_factory.mktemp("resplit")
    prepare_synthetic(
        out, days=90, seed=7, options=PrepareOptions(window_bars=32, split_fractions=(0.4, 0.3, 0.3))
    )
    return out


def test_a_test_split_inside_the_models_training_period_is_refused_naming_both_ranges(
    trained_export: Path, resplit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(trained_export), "--data", str(resplit), "--json", str(out)]
    args += ["--allow-other-stats", "--batches", "1", "--batch-size", "8", "--mode", "time"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "SYNTH: the test split of" in error and "overlaps the model's val period" in error
    assert "--allow-overlap" in error and not out.exists()
    assert main([*args, "--allow-overlap"]) == 0
    report = json.loads(out.read_text())
    assert report["overlap_allowed"] and "overlaps the model's val period" in report["overlap"][0]


def test_the_models_own_folder_and_its_train_split_for_encode_pass(
    trained_export: Path, synthetic_small: Path, resplit: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(trained_export), "--data", str(synthetic_small), "--json", str(out)]
    assert main([*args, "--batches", "1", "--batch-size", "8", "--mode", "time"]) == 0
    assert json.loads(out.read_text())["overlap"] == []
    encode = ["encode", "--model", str(trained_export), "--data", str(resplit), "--split", "train"]
    assert main([*encode, "--allow-other-stats", "--out", str(tmp_path / "emb"), "--max-batches", "1"]) == 0


def test_a_folder_on_another_clock_is_refused(
    trained_export: Path, synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model's own folder as if prepared with --timezone America/New_York (its manifest says so)."""
    other = tmp_path / "ny"
    shutil.copytree(synthetic_small, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "timezone": "America/New_York"}))
    out = tmp_path / "probe.json"
    args = ["probe", "--model", str(trained_export), "--data", str(other), "--json", str(out)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "prepared with --timezone America/New_York" in error
    assert "another clock than the model's" in error and "trained or validated on" not in error


def test_scoring_the_models_own_train_split_is_said_to_be_in_sample(
    trained_export: Path, synthetic_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asked for by name, the model's own train split is scored, with a line saying the figures are
    in-sample, and the JSON records which data it was."""
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(trained_export), "--data", str(synthetic_small), "--json", str(out)]
    assert main([*args, "--split", "train", "--batches", "1", "--batch-size", "8", "--mode", "time"]) == 0
    captured = capsys.readouterr()
    assert "IN-SAMPLE" in captured.out and "IN-SAMPLE" in captured.err
    report = json.loads(out.read_text())
    assert report["in_sample"] and "overlaps the model's train period" in report["in_sample"][0]
    assert report["overlap"] == [] and not report["overlap_allowed"]


@pytest.fixture(scope="module")
def renamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained export's own bars (the synthetic market of seed 7) at twice the price, called EURX, all
    of it one test split: a copy no name check recognises."""
    root = tmp_path_factory.mktemp("renamed")
    bars = generate_synthetic_m1(90, 7)
    frame = pd.DataFrame({"timestamp": bars.start, **{k: 2 * bars.ohlc[:, i] for i, k in enumerate("ohlc")}})
    frame.columns = ["timestamp", "open", "high", "low", "close"]
    frame.to_csv(root / "EURX.csv", index=False)
    options = PrepareOptions(window_bars=32, split_fractions=(0.0, 0.0, 1.0))
    prepare_files([root / "EURX.csv"], root / "data", InputFormat.CSV, options=options)
    return root / "data"


def test_the_models_own_bars_under_another_name_are_recognised_by_content(
    trained_export: Path, renamed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Renamed and re-based, its training bars are still its training bars: evaluate and encode refuse
    them (naming how many days and which), also from a copy of the export without its data record, whose
    weights keep the fingerprint; --allow-overlap scores them and the report says so."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_export, copy)
    (copy / "data.json").unlink()
    for model in (trained_export, copy):
        evaluate = [
            "evaluate",
            "--model",
            str(model),
            "--data",
            str(renamed),
            "--json",
            str(tmp_path / "e.json"),
        ]
        evaluate += ["--allow-other-stats", "--batches", "1", "--batch-size", "8", "--mode", "time"]
        assert main(evaluate) == 2
        error = capsys.readouterr().err
        assert "whatever their name or folder" in error and "days (EURX test " in error, error
        assert " is SYNTH train " in error
    encode = ["encode", "--model", str(copy), "--data", str(renamed), "--out", str(tmp_path / "emb")]
    assert main([*encode, "--allow-other-stats", "--max-batches", "1"]) == 2
    assert main([*evaluate, "--allow-overlap"]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["overlap_allowed"] and report["content"] and "EURX test" in report["content"][0]


def test_the_identity_of_an_export_covers_its_config_and_data_record(
    trained_export: Path, tmp_path: Path
) -> None:
    """A license stated in config.yaml is the same model; any other edit of the config, or of data.json, is
    not."""
    from stage1_ds.model.stage1 import export_identity

    copy = tmp_path / "copy"
    shutil.copytree(trained_export, copy)
    same = export_identity(copy)["sha256"]
    assert same == export_identity(trained_export)["sha256"]
    config = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(config + "license: mit\n")
    assert export_identity(copy)["sha256"] == same
    (copy / "config.yaml").write_text(config.replace("seed: 0", "seed: 1"))
    assert export_identity(copy)["sha256"] != same
    (copy / "config.yaml").write_text(config)
    record = json.loads((copy / "data.json").read_text())
    (copy / "data.json").write_text(json.dumps({**record, "timezone": "Europe/London"}))
    assert export_identity(copy)["sha256"] != same
