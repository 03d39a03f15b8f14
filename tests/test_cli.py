"""The `stage1` command line wires each subcommand to its library function: convert, evaluate, encode, demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stage1_ds.cli import main
from stage1_ds.encoding import encode
from stage1_ds.model.stage1 import Stage1Model
from stage1_ds.train.checkpoint import read_meta


def test_convert_evaluate_and_encode_through_the_command_line(
    synthetic_small: Path, trained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = tmp_path / "export"
    assert main(["convert", str(trained_export.parent), "--out", str(export)]) == 0
    assert "exported step00000012 (phase full, step 12" in capsys.readouterr().out
    ours, library = load_file(export / "model.safetensors"), load_file(trained_export / "model.safetensors")
    assert ours.keys() == library.keys() and all(torch.equal(ours[k], library[k]) for k in ours)

    report_path = tmp_path / "eval.json"
    evaluate_args = ["--model", str(export), "--data", str(synthetic_small), "--split", "val"]
    options = ["--mode", "time", "--batches", "2", "--batch-size", "8", "--json", str(report_path)]
    assert main(["evaluate", *evaluate_args, *options]) == 0
    report = json.loads(report_path.read_text())
    assert report["split"] == "val" and list(report["modes"]) == ["time"]
    assert report["modes"]["time"]["samples"] == 16 and "model" in report["modes"]["time"]["overall"]
    assert (tmp_path / "eval_time.png").is_file() and (tmp_path / "eval_time_example.png").is_file()
    assert "mode time: 16 windows" in capsys.readouterr().out

    out = tmp_path / "embeddings"
    encode_args = ["--model", str(export), "--data", str(synthetic_small), "--split", "val"]
    assert main(["encode", *encode_args, "--out", str(out), "--batch-size", "8", "--max-batches", "2"]) == 0
    expected = encode(
        Stage1Model.from_pretrained(export), synthetic_small, "val", batch_size=8, max_batches=2
    )
    assert sorted(p.stem for p in out.glob("*.npy")) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), array)


def test_a_bad_argument_exits_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run").mkdir()
    assert main(["convert", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_demo_prepares_the_synthetic_market_and_trains_every_phase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quick = [
        "model.encoder.preset=tiny",
        "train.max_steps=6",
        "train.micro_batch_size=4",
        "train.phases=[{name: frozen, until_step: 2}, {name: lora, until_step: 4}, {name: full}]",
        "train.eval_every_steps=3",
        "train.save_every_steps=3",
        "train.image_every_steps=6",
    ]
    assert main(["demo", "--out", str(tmp_path), *quick]) == 0
    out = capsys.readouterr().out
    assert "demo finished at step 6" in out and "SYNTH" in out
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["synthetic_params"] == {
        "days": 120,
        "seed": 0,
    }
    _, meta = read_meta(tmp_path / "run")
    assert meta["global_step"] == 6 and meta["phase"] == "full"
    assert meta["config"]["model"]["encoder"]["preset"] == "tiny", "the overrides reach the demo's config"
    assert any((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
