"""Evaluations that cannot score a model on its own training data: a folder re-prepared with other splits
(as the probe's advice to enlarge val/test would do), or on another clock, is an error naming both ranges
unless --allow-overlap, which the report then records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stage1_ds.cli import main
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic


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
